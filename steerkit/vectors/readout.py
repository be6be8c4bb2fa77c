"""The readout file format (docs/formats.md): `readout.safetensors` + `readout.json`.

readout.safetensors: `layer_<idx>.vectors` (n_concepts, hidden), unit rows, float32 by default
(bf16/fp16 on request), `layer_<idx>.norms` (n_concepts,) raw diff-of-means norms, and optionally
`layer_<idx>.center` (hidden,): the mean activation of all corpus texts, subtracted before
reading so that a concept's score does not include its alignment with the mean activation.
readout.json: format_version, concepts (row order of every tensor), layers, hidden_size, dtype,
model {spec, family, fingerprint}, method, pooling, corpus {path, sha256, n_texts}, created_by.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ReadoutError
from ..io import atomic_save_safetensors, atomic_write_bytes

FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ConceptVectors:
    concepts: list[str]
    layers: list[int]
    vectors: dict[int, torch.Tensor]  # layer -> (n_concepts, hidden) unit rows
    norms: dict[int, torch.Tensor]  # layer -> (n_concepts,)
    meta: dict[str, Any] = field(default_factory=dict)
    centers: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (hidden,)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.vectors.values())).shape[1])

    def index(self, concept: str) -> int:
        if concept not in self.concepts:
            close = difflib.get_close_matches(concept, self.concepts, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(self.concepts[:12])}..."
            raise ReadoutError(f"unknown concept {concept!r}{hint}")
        return self.concepts.index(concept)

    def check_layer(self, layer: int) -> int:
        if layer not in self.vectors:
            raise ReadoutError(f"layer {layer} is not in the readout; it has layers {self.layers}")
        return layer

    def vector(self, concept: str, layer: int, raw: bool = False) -> torch.Tensor:
        """(hidden,) unit vector, or the raw diff-of-means vector (unit x norm) with raw=True."""
        i, layer = self.index(concept), self.check_layer(layer)
        v = self.vectors[layer][i].float()
        return v * self.norms[layer][i].float() if raw else v

    def save(self, directory: str | Path, dtype: str = "float32") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
        d = Path(directory)
        tensors: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            tensors[f"layer_{layer}.vectors"] = self.vectors[layer].to(DTYPES[dtype])
            tensors[f"layer_{layer}.norms"] = self.norms[layer].float()
            if layer in self.centers:
                tensors[f"layer_{layer}.center"] = self.centers[layer].float()
        meta = {
            **self.meta,
            "format_version": FORMAT_VERSION,
            "concepts": self.concepts,
            "layers": self.layers,
            "hidden_size": self.hidden_size,
            "dtype": dtype,
        }
        atomic_save_safetensors(tensors, d / "readout.safetensors", metadata={"format_version": str(FORMAT_VERSION)})
        atomic_write_bytes(d / "readout.json", json.dumps(meta, indent=2).encode())

    @classmethod
    def load(cls, directory: str | Path) -> ConceptVectors:
        """Load and validate a readout folder; any problem is a one-line ReadoutError."""
        from safetensors.torch import load_file

        d = Path(directory)
        if not d.is_dir():
            raise ReadoutError(f"vectors folder {d} does not exist; run `steerkit extract --stories corpora/` first")
        jpath, spath = d / "readout.json", d / "readout.safetensors"
        if not jpath.is_file() or not spath.is_file():
            raise ReadoutError(
                f"{d} has no readout.json/readout.safetensors; pass a folder written by `steerkit extract`"
            )
        try:
            meta = json.loads(jpath.read_text())
        except json.JSONDecodeError as e:
            raise ReadoutError(f"{jpath} is not valid JSON ({e})") from e
        if meta.get("format_version") != FORMAT_VERSION:
            raise ReadoutError(
                f"{jpath} has format_version {meta.get('format_version')!r}; this steerkit reads {FORMAT_VERSION}: "
                "re-run `steerkit extract`"
            )
        try:
            tensors = load_file(spath)
        except Exception as e:
            raise ReadoutError(f"{spath} is unreadable ({type(e).__name__}); re-run `steerkit extract`") from e
        concepts, layers = list(meta.get("concepts", [])), [int(x) for x in meta.get("layers", [])]
        if not concepts or not layers:
            raise ReadoutError(f"{jpath} lists no concepts or no layers")
        vectors, norms, centers = {}, {}, {}
        for layer in layers:
            v, n = tensors.get(f"layer_{layer}.vectors"), tensors.get(f"layer_{layer}.norms")
            if v is None or n is None:
                raise ReadoutError(f"{spath} lacks layer_{layer} tensors listed in readout.json")
            if v.shape != (len(concepts), meta.get("hidden_size")) or n.shape != (len(concepts),):
                raise ReadoutError(
                    f"{spath}: layer_{layer}.vectors has shape {tuple(v.shape)} but readout.json says "
                    f"({len(concepts)}, {meta.get('hidden_size')}): the files do not belong together"
                )
            vectors[layer], norms[layer] = v.float(), n.float()
            c = tensors.get(f"layer_{layer}.center")
            if c is not None:
                if c.shape != (meta.get("hidden_size"),):
                    raise ReadoutError(f"{spath}: layer_{layer}.center has shape {tuple(c.shape)}, not (hidden_size,)")
                centers[layer] = c.float()
        extra = {k for k in tensors if not any(k.startswith(f"layer_{la}.") for la in layers)}
        if extra:
            raise ReadoutError(f"{spath} has tensors not listed in readout.json: {', '.join(sorted(extra)[:3])}")
        return cls(concepts, layers, vectors, norms, meta, centers)

    def scores(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Concept scores of hidden states (..., hidden) -> (..., n_concepts): projection of
        (h - center) on each unit vector."""
        self.check_layer(layer)
        h = hidden.float()
        if layer in self.centers:
            h = h - self.centers[layer]
        return h @ self.vectors[layer].float().t()
