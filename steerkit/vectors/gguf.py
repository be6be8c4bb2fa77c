"""llama.cpp control vectors (GGUF): export concept vectors, import repeng / llama.cpp files.

The format (llama.cpp `common_control_vector_load`, repeng `ControlVector.export_gguf`):
    general.architecture = "controlvector", controlvector.model_hint (the model's arch string),
    controlvector.layer_count (uint32, the number of directions);
    tensors `direction.N`, F32, 1-D of length n_embd, N >= 1.
llama.cpp adds `scale * direction.N` to the output of 0-based block N at every position (the point
of HF `hidden_states[N + 1]` and of steerkit's block-N hook); `direction.0` is rejected (block 0's
output cannot be steered), and several files given together add up.

Scaling: an exported direction is sum_c alpha_c * v_c with v_c the raw diff-of-means vector
(unit x stored norm), so llama.cpp applying the file at scale 1 adds exactly what
`steerkit steer --scale absolute --concept c=alpha_c` adds on the same blocks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ReadoutError
from ..io import atomic_path, sha256_file
from .readout import ConceptVectors

ARCH = "controlvector"
# HF model_type -> llama.cpp arch name, where they differ (everything else is the model_type)
_LLAMA_CPP_ARCH = {"gpt_neox": "gptneox", "qwen3_next": "qwen3next", "falcon_mamba": "mamba"}


def model_hint(model_type: str) -> str:
    """llama.cpp's architecture string for an HF model_type (informative: llama.cpp does not check it)."""
    return _LLAMA_CPP_ARCH.get(model_type, model_type)


@dataclass(frozen=True)
class ControlVector:
    """A llama.cpp control vector: directions[N] (n_embd,) fp32 is added to block N's output."""

    directions: dict[int, torch.Tensor]
    model_hint: str
    metadata: dict[str, Any]

    @property
    def n_embd(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)


def control_directions(
    vectors: ConceptVectors, weights: Mapping[str, float], layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """{N: (hidden,) sum_c alpha_c * v_c} with v_c raw (as `steer --scale absolute`), for each N."""
    if not weights:
        raise ReadoutError("give at least one --concept NAME=ALPHA")
    for name in weights:
        vectors.index(name)
    out: dict[int, torch.Tensor] = {}
    for layer in layers:
        vectors.check_layer(layer)
        total = torch.zeros(vectors.hidden_size, dtype=torch.float32)
        for name, alpha in weights.items():
            total += float(alpha) * vectors.vector(name, layer, raw=True)
        out[int(layer)] = total
    return out


def write_control_vector(
    path: str | Path,
    directions: Mapping[int, torch.Tensor],
    hint: str,
    extra: Mapping[str, str] | None = None,
) -> None:
    """Write `directions` as a llama.cpp control-vector GGUF (atomically). extra: string KVs
    (e.g. steerkit.weights) that llama.cpp ignores."""
    import gguf

    if not directions:
        raise ReadoutError("no blocks to export")
    bad = [n for n in directions if n < 1]
    if bad:
        raise ReadoutError(
            f"llama.cpp cannot steer block {bad[0]} (it rejects direction.0: block 0's output is not steerable); "
            "choose blocks >= 1 with --layers"
        )
    widths = {int(d.numel()) for d in directions.values()}
    if len(widths) != 1:
        raise ReadoutError(f"directions of different widths {sorted(widths)}; they must share n_embd")
    p = Path(path)
    with atomic_path(p) as tmp:
        w = gguf.GGUFWriter(str(tmp), ARCH)
        w.add_string(f"{ARCH}.model_hint", hint)
        w.add_uint32(f"{ARCH}.layer_count", len(directions))
        for key, value in (extra or {}).items():
            w.add_string(key, value)
        for n in sorted(directions):
            arr = directions[n].detach().to("cpu", torch.float32).reshape(-1).numpy()
            w.add_tensor(f"direction.{n}", np.ascontiguousarray(arr, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def _field(reader: Any, key: str) -> Any:
    f = reader.get_field(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:  # pragma: no cover - a malformed field reads as missing
        return None


def read_control_vector(path: str | Path) -> ControlVector:
    """Read and validate a control-vector GGUF the way llama.cpp would; any problem is a one-line
    ReadoutError."""
    import gguf

    from ..validate import check_finite, expect_file

    p = expect_file(path, "control-vector file", ReadoutError, "pass a llama.cpp / repeng control-vector .gguf")
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as e:  # bad magic, truncated header, ...: the reader's own words help nobody
        raise ReadoutError(
            f"{p} is not a GGUF file (no readable GGUF header); pass a llama.cpp / repeng control vector"
        ) from e
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise ReadoutError(
            f"{p} is not a control vector (general.architecture = {arch!r}, not {ARCH!r}); "
            "pass a file written by `steerkit export`, repeng or llama-cvector-generator"
        )
    directions: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        name = str(t.name)
        head, _, idx = name.partition(".")
        if head != "direction" or not idx.isdigit():
            raise ReadoutError(f"{p}: tensor {name!r} is not named direction.N (llama.cpp would reject the file)")
        n = int(idx)
        if n == 0:
            raise ReadoutError(f"{p}: direction.0 is not allowed (llama.cpp rejects it: block 0 is not steerable)")
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ReadoutError(f"{p}: {name} has type {t.tensor_type.name}, not F32 (llama.cpp would reject it)")
        if len(t.shape) != 1:
            raise ReadoutError(f"{p}: {name} has shape {list(t.shape)}, not 1-D (n_embd,)")
        directions[n] = torch.from_numpy(np.array(t.data, dtype=np.float32).reshape(-1))
        check_finite(directions[n], name, p, ReadoutError, "pass a control vector of finite numbers")
    if not directions:
        raise ReadoutError(f"{p} holds no direction tensors")
    widths = {int(d.numel()) for d in directions.values()}
    if len(widths) != 1:
        raise ReadoutError(f"{p}: directions have different lengths {sorted(widths)} (llama.cpp would reject it)")
    meta: dict[str, Any] = {}
    for key in reader.fields:
        if key.startswith(("general.", f"{ARCH}.", "steerkit.")):
            meta[key] = _field(reader, key)
    hint = _field(reader, f"{ARCH}.model_hint")
    return ControlVector(directions, str(hint) if hint is not None else "", meta)


def to_readout(
    cvec: ControlVector,
    concept: str,
    model_meta: Mapping[str, Any],
    *,
    source: str | Path,
    pooling: str,
    created_by: str,
) -> ConceptVectors:
    """A one-concept readout whose raw vector at each block N is direction.N: steering it at
    alpha 1 with --scale absolute adds what llama.cpp adds at scale 1. Checks n_embd and depth
    against model_meta {spec, family, fingerprint, n_blocks, hidden_size}."""
    hidden, n_blocks = int(model_meta["hidden_size"]), int(model_meta["n_blocks"])
    spec = model_meta.get("spec", "?")
    if cvec.n_embd != hidden:
        raise ReadoutError(
            f"the control vector has n_embd {cvec.n_embd} but model {spec} has hidden size {hidden}; "
            "pass the model it was made for with -m"
        )
    deep = [n for n in cvec.layers if n >= n_blocks]
    if deep:
        raise ReadoutError(
            f"the control vector steers block {deep[0]} but model {spec} has {n_blocks} blocks (0..{n_blocks - 1}); "
            "pass the model it was made for with -m"
        )
    vectors, norms = {}, {}
    for n in cvec.layers:
        d = cvec.directions[n].float()
        norm = d.norm()
        vectors[n] = (d / norm if norm > 0 else torch.zeros_like(d))[None]  # (1, hidden)
        norms[n] = norm.reshape(1)
    meta = {
        "model": {
            k: model_meta[k] for k in ("spec", "family", "model_type", "fingerprint", "n_blocks") if k in model_meta
        },
        "method": "gguf-import",
        "pooling": pooling,
        "created_by": created_by,
        "source": {
            "gguf": str(Path(source).resolve()),
            "sha256": sha256_file(Path(source)),
            "model_hint": cvec.model_hint,
            "metadata": json.loads(json.dumps(cvec.metadata, default=str)),
        },
    }
    return ConceptVectors([concept], cvec.layers, vectors, norms, meta)
