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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from .. import __version__
from ..capture import capture, default_spread, depth_label, parse_layers, parse_pooling
from ..corpus import Corpus
from ..corpus import load as load_corpus
from ..io import atomic_save_safetensors, atomic_write_bytes
from ..models import LoadedModel, load, preflight
from ..models.zoo import DEFAULT_MODEL, cache_root
from ..runs import finish_run, new_run_dir, prepare_out
from . import methods
from .readout import ConceptVectors

log = logging.getLogger(__name__)
Method = Literal["caa", "paired", "centered"]
DEFAULT_POOLING = "mean_after:1"  # measured on smollm2-135m (token 0 is an attention sink): docs/vectors.md


@dataclass(frozen=True)
class ExtractConfig:
    stories: str = "corpora"
    model: str | None = None
    layers: str | None = None  # None: 8 blocks spread over 25%-85% of depth
    method: Method = "caa"
    pooling: str = DEFAULT_POOLING
    out: str | None = None
    dtype: str = "float32"
    max_batch_tokens: int = 1024
    preflight: bool = True
    allow_untrained: bool = False
    cache: bool = True

    def __post_init__(self) -> None:
        if self.method not in methods.METHODS:
            raise ValueError(f"method must be one of {', '.join(methods.METHODS)}, got {self.method!r}")
        parse_pooling(self.pooling)


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


def compute_vectors(
    method: str,
    acts: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    scenario: torch.Tensor,
    neutral: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if method == "caa":
        return methods.caa(acts, pos, neg)
    if method == "paired":
        return methods.paired(acts, pos, neg, scenario)
    assert neutral is not None
    return methods.centered(acts, pos, neutral)


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
) -> Path:
    """Run the extraction; return the run folder."""
    t0 = time.perf_counter()
    corpus = load_corpus(cfg.stories)  # all validation before any model is loaded
    spec = cfg.model or DEFAULT_MODEL
    out = prepare_out(Path(cfg.out), "extract", create=False) if cfg.out else new_run_dir(Path(spec).name, cfg.method)
    lm = lm or load(spec)
    if cfg.preflight:
        rep = preflight.check(lm, allow_untrained=cfg.allow_untrained)
        t = rep.table
        echo(
            f"preflight passed: {t['model']} ({t['family']}, {t['blocks']} blocks, hidden {t['hidden size']}, "
            f"{t['parameters']:,} parameters, reference loss ratio {t['reference loss ratio']})"
        )
    n_blocks = lm.adapter.n_blocks(lm.model)
    layers = parse_layers(cfg.layers, n_blocks) if cfg.layers else default_spread(n_blocks, count=8)
    for layer in layers:
        echo(depth_label(layer, n_blocks))
    texts = [t.text for t in corpus.texts]
    neutral = [t.text for t in corpus.neutral] if cfg.method == "centered" else []
    t1 = time.perf_counter()
    res = capture(
        lm,
        texts + neutral,
        layers,
        sites=("resid", "heads"),
        pooling=cfg.pooling,
        max_batch_tokens=cfg.max_batch_tokens,
        cache_dir=cache_root() / "activations" if cfg.cache else None,
        progress=progress,
    )
    capture_s = time.perf_counter() - t1
    pos, neg, scenario = membership(corpus)
    n = len(texts)
    vecs, norms = {}, {}
    for layer in layers:
        acts = res.resid[layer]
        vecs[layer], norms[layer] = compute_vectors(
            cfg.method, acts[:n], pos, neg, scenario, acts[n:] if neutral else None
        )
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous_run(out)
    tensors = {f"resid.layer_{la}": res.resid[la][:n].contiguous() for la in layers}
    tensors.update({f"heads.layer_{la}": v[:n].contiguous() for la, v in res.heads.items()})
    if neutral:
        tensors.update({f"neutral.layer_{la}": res.resid[la][n:].contiguous() for la in layers})
    atomic_save_safetensors(tensors, out / "activations.safetensors")
    downs = {
        f"layer_{la}": w.to("cpu", torch.float16).contiguous()
        for la in layers
        if (w := lm.adapter.mlp_down_weight(lm.model, la)) is not None
    }
    if downs:
        atomic_save_safetensors(downs, out / "mlp_down.safetensors")
    texts_meta = [
        {"sha256": t.sha, "concepts": sorted(t.concepts), "sources": [asdict(s) for s in t.sources]}
        for t in corpus.texts
    ]
    atomic_write_bytes(out / "texts.json", json.dumps(texts_meta, indent=1).encode())
    skipped = [{"site": s, "layer": la, "reason": r} for (s, la), r in res.skipped.items()]
    centers = {la: res.resid[la][:n].mean(0) for la in layers}
    cv = ConceptVectors(
        corpus.names,
        layers,
        vecs,
        norms,
        centers=centers,
        meta={
            "model": {k: lm.info[k] for k in ("spec", "family", "fingerprint")} | {"n_blocks": n_blocks},
            "method": cfg.method,
            "pooling": res.pooling,
            "corpus": {"path": str(Path(cfg.stories).resolve()), "sha256": corpus.sha256(), "n_texts": n},
            "created_by": f"steerkit {__version__}",
            "skipped": skipped,
        },
    )
    cv.save(out, dtype=cfg.dtype)
    stats = dict(res.stats)
    stats["capture_seconds"] = round(capture_s, 2)
    stats["texts_per_second"] = round(stats["n_computed"] / capture_s, 2) if stats["n_computed"] else None
    finish_run(
        out,
        "extract",
        config=asdict(cfg),
        stats=stats,
        seconds=round(time.perf_counter() - t0, 2),
        model=lm.info["spec"],
    )
    return out
