"""`steerkit extract`: corpus check -> model + preflight -> capture -> vectors -> run folder.

Run folder (docs/formats.md): readout.safetensors + readout.json (the vectors), activations.safetensors
(pooled resid and per-head activations of every corpus text at every run layer, so the quality
report needs no forward pass), texts.json (labels and sources of each activation row),
mlp_down.safetensors (each layer's MLP down-projection, for single-neuron alignment), run.json last.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..capture import (
    BlockSpec,
    CaptureResult,
    Pooling,
    capture,
    default_spread,
    depth_label,
    parse_layers,
    parse_pooling,
)
from ..corpus import Corpus
from ..corpus import load as load_corpus
from ..io import atomic_save_safetensors, atomic_write_bytes
from ..models import LoadedModel, load, preflight
from ..models.loading import Placement
from ..models.zoo import DEFAULT_MODEL, cache_root
from ..runs import finish_run, new_run_dir, prepare_out
from ..version import __version__
from .methods import MethodInputs, get_method
from .probe import DEFAULT_PROBE, fit_readout_probe, probe_kind, story_groups
from .readout import ConceptVectors

log = logging.getLogger(__name__)
DEFAULT_POOLING = Pooling("mean_after", 1)  # measured on smollm2-135m (token 0 is an attention sink): docs/vectors.md
VECTOR_DTYPES = ("float32", "bf16", "fp16")


@dataclass(frozen=True)
class ExtractConfig:
    """`steerkit extract`'s options, parsed (the CLI mirrors these fields)."""

    stories: str = "corpora"
    model: str | None = None
    layers: BlockSpec | None = None  # None: 8 blocks spread over 25%-85% of depth
    method: str = "caa"
    pooling: Pooling = DEFAULT_POOLING
    out: str | None = None
    dtype: str = "float32"  # of the saved vectors
    max_batch_tokens: int = 1024
    preflight: bool = True
    allow_untrained: bool = False
    cache: bool = True
    probe: str | None = DEFAULT_PROBE  # the readout probe fitted per layer: "lda", "logistic" or None (docs/vectors.md)

    def __post_init__(self) -> None:
        get_method(self.method)
        probe_kind(self.probe)
        if self.dtype not in VECTOR_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(VECTOR_DTYPES)}, got {self.dtype!r}")
        if isinstance(self.max_batch_tokens, bool) or self.max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {self.max_batch_tokens}")

    def to_json(self) -> dict[str, Any]:
        """As run.json records it (specs as the user wrote them)."""
        d = asdict(self)
        d["layers"] = self.layers.text if self.layers is not None else None
        d["pooling"] = self.pooling.name
        return d


def membership(corpus: Corpus) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pos (C, N), neg (C, N) bool and scenario ids (N,) (-1 outside scenarios) over corpus.texts."""
    names = corpus.names
    pos = torch.zeros(len(names), len(corpus.texts), dtype=torch.bool)
    for j, t in enumerate(corpus.texts):
        for c in t.concepts:
            pos[names.index(c), j] = True
    scen_names = sorted(corpus.scenarios)
    scenario = torch.full((len(corpus.texts),), -1, dtype=torch.long)
    for s, members in corpus.scenarios.items():
        for idx in members.values():
            scenario[idx] = scen_names.index(s)
    return pos, ~pos, scenario


def label_membership(labels: Sequence[str | Iterable[str] | None]) -> tuple[list[str], torch.Tensor]:
    """Concept names (first-seen order) and pos (C, N) from one label (or a set, or None) per text."""
    sets = [set() if lab is None else {lab} if isinstance(lab, str) else set(lab) for lab in labels]
    names = list(dict.fromkeys(c for s in sets for c in sorted(s)))
    if not names:
        raise ValueError("no labels: give each text its concept name")
    pos = torch.tensor([[c in s for s in sets] for c in names], dtype=torch.bool).reshape(len(names), len(sets))
    return names, pos


@dataclass
class Extraction:
    """What extraction computed: the vectors and the capture (activations of every text)."""

    vectors: ConceptVectors
    capture: CaptureResult
    n_texts: int  # labelled texts; capture rows after them are the neutral texts
    probe_seconds: float = 0.0  # time spent fitting the readout probes


def vectors_from_texts(
    lm: LoadedModel,
    texts: Sequence[str],
    names: list[str],
    pos: torch.Tensor,
    *,
    scenario: torch.Tensor | None = None,
    neutral: Sequence[str] = (),
    layers: Sequence[int],
    method: str = "caa",
    pooling: Pooling = DEFAULT_POOLING,
    max_batch_tokens: int = 1024,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    sites: tuple[str, ...] = ("resid",),
    probe: str | bool | None = DEFAULT_PROBE,
) -> Extraction:
    """Capture `texts` (+ `neutral`) and build one vector per concept at each layer, and with
    `probe` ("lda", "logistic" or None) the readout probe (probe.py; for "logistic" texts of one
    scenario, or identical texts, share a CV group).
    pos (C, N) bool: the positives of each concept; every other text is a negative."""
    neutral = _check_inputs(texts, names, pos, neutral, method)
    probe = probe_kind(probe)  # before the capture: a bad kind costs nothing
    res = capture(lm, list(texts) + neutral, layers, sites=sites, pooling=pooling,
                  max_batch_tokens=max_batch_tokens, cache_dir=cache_dir, progress=progress)  # fmt: skip
    return vectors_from_capture(lm, res, texts, names, pos, scenario=scenario, method=method, probe=probe)


def _check_inputs(
    texts: Sequence[str], names: list[str], pos: torch.Tensor, neutral: Sequence[str], method: str
) -> list[str]:
    """Refuse what no method can use; the neutral texts the method needs (none when it needs none)."""
    m = get_method(method)
    if m.needs_neutral and not neutral:
        raise ValueError(f"the {method} method needs neutral texts")
    if pos.shape != (len(names), len(texts)):
        raise ValueError(f"pos must be ({len(names)}, {len(texts)}), got {tuple(pos.shape)}")
    empty = [names[i] for i in range(len(names)) if not pos[i].any() or pos[i].all()]
    if empty:
        raise ValueError(f"concept(s) {', '.join(empty[:5])} need at least one positive and one negative text")
    return list(neutral) if m.needs_neutral else []


def vectors_from_capture(
    lm: LoadedModel,
    res: CaptureResult,
    texts: Sequence[str],
    names: list[str],
    pos: torch.Tensor,
    *,
    scenario: torch.Tensor | None = None,
    method: str = "caa",
    probe: str | bool | None = DEFAULT_PROBE,
) -> Extraction:
    """One vector per concept at each captured layer (and the readout probe of kind `probe`, unless None): rows [0, n) of
    the capture are the n labelled `texts` (pos (C, n)), the rows after them the neutral texts."""
    n = len(texts)
    m = get_method(method)
    probe = probe_kind(probe)
    neutral = res.resid[res.layers[0]].shape[0] > n if res.layers else False
    vecs, norms, centers = {}, {}, {}
    for layer in res.layers:
        acts = res.resid[layer]
        x = MethodInputs(acts[:n], pos, ~pos, scenario, acts[n:] if neutral else None)
        vecs[layer], norms[layer] = m.fn(x)
        centers[layer] = acts[:n].mean(0)
    t0 = time.perf_counter()
    groups = story_groups(texts, scenario)
    probes = (
        {layer: fit_readout_probe(res.resid[layer][:n], pos, groups, probe) for layer in res.layers} if probe else {}
    )
    probe_s = time.perf_counter() - t0
    model_meta = {k: lm.info.get(k) for k in ("spec", "family", "model_type", "fingerprint")}
    cv = ConceptVectors(
        list(names), list(res.layers), vecs, norms, centers=centers,
        meta={"model": model_meta | {"n_blocks": lm.adapter.n_blocks(lm.model)}, "method": method,
              "pooling": res.pooling, "created_by": f"steerkit {__version__}"}, probes=probes,
    )  # fmt: skip
    return Extraction(cv, res, n, probe_s)


def extract_vectors(
    lm: LoadedModel,
    texts: Sequence[str],
    labels: Sequence[str | Iterable[str] | None],
    *,
    layers: Sequence[int] | str | None = None,
    method: str = "caa",
    pooling: Pooling | str = DEFAULT_POOLING,
    neutral: Sequence[str] = (),
    max_batch_tokens: int = 1024,
    probe: str | bool | None = DEFAULT_PROBE,
) -> ConceptVectors:
    """Concept vectors in memory (the notebook API): one label per text (a concept name, a set of
    names, or None for a text that is only a negative). layers: block indices or a spec string
    (default: 8 blocks over 25%-85% of depth); method: a name in METHODS; probe: the kind of
    readout probe that `read` uses ("lda", "logistic"), None for none."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    n_blocks = lm.adapter.n_blocks(lm.model)
    blocks = default_spread(n_blocks) if layers is None else parse_layers(layers, n_blocks)
    names, pos = label_membership(labels)
    return vectors_from_texts(lm, texts, names, pos, neutral=neutral, layers=blocks, method=method,
                              pooling=parse_pooling(pooling), max_batch_tokens=max_batch_tokens,
                              probe=probe).vectors  # fmt: skip


def _clear_previous_run(out: Path) -> None:
    """Rerunning into an extract run: drop what the old run wrote that this one may not rewrite (its
    quality report and figures, the MLP weights), run.json first so the folder never claims to be
    a finished run while it is half old, half new."""
    if not (out / "run.json").is_file():
        return
    (out / "run.json").unlink()
    names = ["quality.json", "quality.md", "mlp_down.safetensors"]
    try:
        names += [str(f) for f in json.loads((out / "quality.json").read_text()).get("figures", [])]
    except (OSError, ValueError, AttributeError):
        pass
    for name in names:
        if "/" not in name:
            (out / name).unlink(missing_ok=True)


def extract(
    cfg: ExtractConfig,
    lm: LoadedModel | None = None,
    progress: Callable[[int, int], None] | None = None,
    echo: Callable[[str], None] = log.info,
    placement: Placement | None = None,
) -> Path:
    """extract_vectors on a story corpus, then write the run folder; return it. placement: where
    and in which dtype the model is loaded when `lm` is not given (activations are fp32 anyway).
    Under torchrun (`steerkit.dist.init()`) the ranks share the capture; only rank 0 writes the
    folder (the other ranks return its path without writing)."""
    t0 = time.perf_counter()
    corpus = load_corpus(cfg.stories)  # all validation before any model is loaded
    spec = cfg.model or DEFAULT_MODEL
    out = prepare_out(Path(cfg.out), "extract", create=False) if cfg.out else new_run_dir(Path(spec).name, cfg.method)
    lm = lm or load(spec, **(placement or Placement()).load_kwargs())
    if cfg.preflight:
        rep = preflight.check(lm, allow_untrained=cfg.allow_untrained)
        t = rep.table
        echo(
            f"preflight passed: {t['model']} ({t['family']}, {t['blocks']} blocks, hidden {t['hidden size']}, "
            f"{t['parameters']:,} parameters, reference loss ratio {t['reference loss ratio']})"
        )
    n_blocks = lm.adapter.n_blocks(lm.model)
    layers = cfg.layers.resolve(n_blocks) if cfg.layers is not None else default_spread(n_blocks)
    for layer in layers:
        echo(depth_label(layer, n_blocks))
    pos, _, scenario = membership(corpus)
    t1 = time.perf_counter()
    texts = [t.text for t in corpus.texts]
    neutral = _check_inputs(texts, corpus.names, pos, [t.text for t in corpus.neutral], cfg.method)
    res = capture(lm, texts + neutral, layers, sites=("resid", "heads"), pooling=cfg.pooling,
                  max_batch_tokens=cfg.max_batch_tokens, cache_dir=cache_root() / "activations" if cfg.cache else None,
                  progress=progress, distributed=True)  # fmt: skip
    if not res.complete:  # a rank other than 0 under torchrun: its share is with rank 0 (and in the cache)
        return out
    ex = vectors_from_capture(lm, res, texts, corpus.names, pos, scenario=scenario, method=cfg.method, probe=cfg.probe)
    capture_s = time.perf_counter() - t1 - ex.probe_seconds
    res, n = ex.capture, ex.n_texts
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous_run(out)
    tensors = {f"resid.layer_{la}": res.resid[la][:n].contiguous() for la in layers}
    tensors.update({f"heads.layer_{la}": v[:n].contiguous() for la, v in res.heads.items()})
    if res.resid[layers[0]].shape[0] > n:
        tensors.update({f"neutral.layer_{la}": res.resid[la][n:].contiguous() for la in layers})
    atomic_save_safetensors(tensors, out / "activations.safetensors")
    downs = {
        f"layer_{la}": w.to("cpu", torch.float16).contiguous()
        for la in layers
        if (w := lm.adapter.mlp_write_directions(lm.model, la)) is not None
    }
    if downs:
        atomic_save_safetensors(downs, out / "mlp_down.safetensors")
    texts_meta = [
        {"sha256": t.sha, "concepts": sorted(t.concepts), "sources": [asdict(s) for s in t.sources]}
        for t in corpus.texts
    ]
    atomic_write_bytes(out / "texts.json", json.dumps(texts_meta, indent=1).encode())
    cv = ex.vectors
    cv.meta.update(
        corpus={"path": str(Path(cfg.stories).resolve()), "sha256": corpus.sha256(), "n_texts": n},
        skipped=[{"site": s, "layer": la, "reason": r} for (s, la), r in res.skipped.items()],
    )
    cv.save(out, dtype=cfg.dtype)
    stats = dict(res.stats)
    stats["capture_seconds"] = round(capture_s, 2)
    stats["probe_seconds"] = round(ex.probe_seconds, 2)
    stats["texts_per_second"] = round(stats["n_computed"] / capture_s, 2) if stats["n_computed"] else None
    finish_run(
        out,
        "extract",
        config=cfg.to_json(),
        stats=stats,
        seconds=round(time.perf_counter() - t0, 2),
        model=lm.info["spec"],
    )
    return out
