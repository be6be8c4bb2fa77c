"""`steerkit steer-eval`: does adding a concept vector make the text express the concept, at what cost?

For every concept x layer x alpha the model generates continuations of neutral prompts (prompts x
seeds, the same units in every arm) with the vector added at that block; the unsteered model then
re-reads each continuation alone (concept scores at the run's readout layer), scores its NLL given
the prompt, and its degeneration (distinct-2, repeated 3-grams). Random directions of the same
norm go through the same pipeline as the control (docs/steer-eval.md).

Rooms: this file (settings, inputs, the command), steer_eval_grid.py (arms, row cache, the chunked
loop), steer_eval_gen.py (per-row steering, batched generation, NLL, re-reading),
steer_eval_stats.py (per-cell statistics, claims, operating points), steer_eval_report.py and
steer_eval_figures.py (the files).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ExperimentError, ReadoutError, RunDirError
from .design import load_prompts
from .steer_eval_grid import Progress, RowCache, run_grid

if TYPE_CHECKING:
    from ..models.loading import Placement

log = logging.getLogger(__name__)
KIND = "steer-eval"


@dataclass(frozen=True)
class SteerEvalConfig:
    """Settings of `steerkit steer-eval`; the CLI options mirror these fields.

    concepts: names (empty: all). layers: 'auto' (the run layers nearest 1/3, 1/2 and 2/3 of the
    depth) or a block spec (`parse_layers`) of run layers. alphas: strengths (0 is the unsteered
    baseline, always run). scale: absolute (alpha x raw diff-of-means) or relative (alpha x local
    hidden norm x unit vector). seeds: sampled continuations per prompt (1 when greedy).
    random_draws: random directions per layer (each at every alpha). max_nll_increase: the
    operating point's fluency budget (nats/token). min_success: the least success rate an operating
    point must reach. top: success = the steered concept among the top `top`. significance: Holm level.
    """

    concepts: tuple[str, ...] = ()
    layers: str = "auto"
    alphas: tuple[float, ...] = (0.0, 2.0, 4.0, 8.0)
    scale: str = "absolute"
    seeds: int = 2
    seed: int = 0
    max_new_tokens: int = 40
    temperature: float = 1.0
    greedy: bool = False
    random_draws: int = 16
    max_nll_increase: float = 1.0
    min_success: float = 0.5
    top: int = 3
    significance: float = 0.05
    permutations: int = 10000
    readout_layer: int | None = None
    batch_rows: int = 128

    def __post_init__(self) -> None:
        bad = [a for a in self.alphas if not math.isfinite(a)]
        if bad:
            raise ValueError(f"alphas must be finite numbers, got {bad}")
        if not any(a != 0 for a in self.alphas):
            raise ValueError("give at least one alpha other than 0 (0 is the unsteered baseline)")
        if self.scale not in ("absolute", "relative"):
            raise ValueError(f"scale must be one of absolute, relative, got {self.scale!r}")
        for name in ("seeds", "max_new_tokens", "top", "batch_rows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.random_draws < 2:
            raise ValueError(f"random-draws must be at least 2 (the control's spread), got {self.random_draws}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not (math.isfinite(self.max_nll_increase) and 0.0 <= self.min_success <= 1.0):
            raise ValueError("max-nll-increase must be finite and min-success in [0, 1]")
        if not 0.0 < self.significance < 1.0:
            raise ValueError(f"significance must lie in (0, 1), got {self.significance}")

    @property
    def nonzero_alphas(self) -> list[float]:
        return sorted({float(a) for a in self.alphas if a != 0}, key=lambda a: (abs(a), a))

    @property
    def n_seeds(self) -> int:
        return 1 if self.greedy else self.seeds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- inputs --------------------------------------------------------------------------------------
def default_prompts_path() -> Path:
    """corpora/prompts/neutral_openings.jsonl of the source tree, else of the working directory."""
    here = Path(__file__).resolve().parents[2] / "corpora" / "prompts" / "neutral_openings.jsonl"
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
    from ..runs import latest_run, runs_root

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
    from ..capture import parse_layers

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


# ---- the command ---------------------------------------------------------------------------------
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


def evaluate(
    cfg: SteerEvalConfig,
    vectors: str | Path | None = None,
    prompts: str | Path | None = None,
    out: str | Path | None = None,
    *,
    model: str | None = None,
    lm: Any = None,
    device: str = "cpu",
    dtype: str | None = None,
    placement: Placement | None = None,
    cache: bool = True,
    progress: Progress | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run the grid and write steer_eval.{json,md} and the figures into the vectors run (or `out`).

    Every input is checked before the model loads; nothing is written on bad input. `lm`: an already
    loaded model (its hidden size must fit the vectors); else `model` or the run's own model.
    """
    import os
    import shutil

    from ..io import sha256_file
    from ..models.zoo import cache_root
    from ..runs import finish_run, prepare_out
    from ..vectors.readout import ConceptVectors
    from .steer_eval_report import analyze, write_report

    run = resolve_vectors(vectors)
    cv = ConceptVectors.load(run)
    concepts = resolve_concepts(cfg.concepts, cv)
    layers = resolve_layers(cfg.layers, cv)
    readout_layer = (
        cv.check_layer(cfg.readout_layer) if cfg.readout_layer is not None else best_readout_layer(run, cv.layers)
    )
    texts = read_prompts(prompts)
    target = Path(out) if out is not None else run
    own_folder = target.resolve() != run.resolve()
    if own_folder:
        prepare_out(target, KIND, create=False)
    if lm is None:
        from ..models import load

        where = placement.load_kwargs() if placement is not None else {"device": device, "dtype": dtype}
        lm = load(model or cv.meta.get("model", {}).get("spec"), **where)
        same_dtype = str(where.get("dtype") or "float32") in ("float32", "torch.float32")
        check_model(cv, lm, explicit=model is not None, same_dtype=same_dtype)
    else:
        check_model(cv, lm, explicit=model is not None)
    fp = str(lm.info.get("fingerprint", "model"))
    rows = RowCache(cache_root() / "steer_eval" / fp[:16] if cache else None)
    grid = run_grid(lm, cv, cfg, texts, concepts, layers, readout_layer, rows, progress)
    rep = analyze(grid, cfg, cv, concepts, layers)
    rep["source"] = {
        "vectors": str(run),
        "model": lm.info.get("spec"),
        "fingerprint": fp,
        "readout_layer": readout_layer,
        "pooling": cv.meta.get("pooling"),
        "readout_sha256": sha256_file(run / "readout.safetensors"),
        "corpus_sha256": cv.meta.get("corpus", {}).get("sha256"),
        "prompts": str(prompts) if prompts is not None else str(default_prompts_path()),
        "n_prompts": len(texts),
    }
    groups = concept_groups(cv, concepts)
    if not own_folder or target.exists():
        write_report(target, rep, groups)
        if own_folder:
            finish_run(target, KIND, vectors=str(run))
        return target, rep
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_report(tmp, rep, groups)
        finish_run(tmp, KIND, vectors=str(run))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, rep
