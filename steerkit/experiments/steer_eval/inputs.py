"""The inputs of `steerkit steer-eval`, each checked before the model loads: the prompts, the vectors
run, its layers and concepts, the readout layer, the model the vectors came from, concept groups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import ExperimentError, ReadoutError, RunDirError
from ..prompts import load_prompts


# ---- inputs --------------------------------------------------------------------------------------
def default_prompts_path() -> Path:
    """corpora/prompts/neutral_openings.jsonl of the source tree, else of the working directory."""
    here = Path(__file__).resolve().parents[3] / "corpora" / "prompts" / "neutral_openings.jsonl"
    return here if here.is_file() else Path("corpora") / "prompts" / "neutral_openings.jsonl"


def read_prompts(path: str | Path | None) -> list[str]:
    """Prompt texts (.jsonl {"prompt": ...} or one per line); any continuation field is ignored."""
    p = Path(path) if path is not None else default_prompts_path()
    if p.is_dir():
        raise ExperimentError(f"--prompts {p} is a folder; pass a .jsonl or .txt file")
    if p.is_file():
        try:
            p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ExperimentError(f"{p}: not UTF-8 (invalid byte at offset {e.start}); re-save it as UTF-8") from e
    return [q.text for q in load_prompts(p)]


def resolve_vectors(vectors: str | Path | None) -> Path:
    """The vectors run folder: `vectors`, else the latest finished extract run."""
    from ...runs import latest_run, runs_root

    if vectors is None:
        found = latest_run("extract")
        if found is None:
            raise RunDirError(f"no extract run under {runs_root()}/; run `steerkit extract --stories corpora/` first")
        return found
    return Path(vectors)


def best_readout_layer(run: Path, layers: list[int]) -> int:
    """quality.json's best_layer when it is a run layer, else the middle run layer."""
    try:
        best = json.loads((run / "quality.json").read_text()).get("best_layer")
        if best in layers:
            return int(best)
    except (OSError, ValueError, AttributeError):
        pass
    return layers[len(layers) // 2]


def resolve_layers(spec: str, cv: Any) -> list[int]:
    """'auto': the run layers nearest 1/3, 1/2 and 2/3 of the model's depth; else a block spec whose
    blocks must all be run layers."""
    from ...capture import parse_layers

    n_blocks = int(cv.meta.get("model", {}).get("n_blocks") or (max(cv.layers) + 1))
    if spec.strip().lower() == "auto":
        picks = [min(cv.layers, key=lambda la: (abs(la - f * n_blocks), la)) for f in (1 / 3, 1 / 2, 2 / 3)]
        return list(dict.fromkeys(picks))
    layers = parse_layers(spec, n_blocks)
    for la in layers:
        cv.check_layer(la)
    return list(dict.fromkeys(layers))


def resolve_concepts(names: tuple[str, ...], cv: Any) -> list[str]:
    if not names or [n.lower() for n in names] == ["all"]:
        return list(cv.concepts)
    for n in names:
        cv.index(n)  # unknown: a one-line error with close names
    return list(dict.fromkeys(names))


def check_model(cv: Any, lm: Any, explicit: bool, same_dtype: bool = True) -> None:
    """The vectors must come from this model: when --model was given, the same fingerprint (the same
    spec, when another dtype makes the fingerprint differ by design); always the same hidden size
    and enough blocks."""
    run_model = cv.meta.get("model", {})
    hidden, n_blocks = int(lm.model.get_input_embeddings().weight.shape[1]), lm.adapter.n_blocks(lm.model)
    fp = run_model.get("fingerprint")
    other = explicit and (
        (same_dtype and fp and fp != lm.info.get("fingerprint"))
        or (not same_dtype and run_model.get("spec") != lm.info.get("spec"))
    )
    if other or cv.hidden_size != hidden or max(cv.layers) >= n_blocks:
        raise ReadoutError(
            f"the vectors were made with {run_model.get('spec', '?')} (fingerprint {fp}), not with "
            f"{lm.info.get('spec')} (fingerprint {lm.info.get('fingerprint')}); leave --model out or pass the run's model"
        )


def concept_groups(cv: Any, concepts: list[str]) -> dict[str, list[str]]:
    """Concept groups for the figures: the corpus manifest's clusters when the run's corpus is at
    hand, else consecutive groups of eight."""
    try:
        root = Path(cv.meta["corpus"]["path"])
        cluster = {c["name"]: c["cluster"] for c in json.loads((root / "manifest.json").read_text())["concepts"]}
    except (KeyError, OSError, ValueError, TypeError):
        cluster = {}
    groups: dict[str, list[str]] = {}
    for i, n in enumerate(concepts):
        groups.setdefault(cluster.get(n, f"concepts {i // 8 * 8 + 1}-"), []).append(n)
    return groups
