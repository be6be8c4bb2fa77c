"""The readout file format (docs/formats.md): `readout.safetensors` + `readout.json`.

readout.safetensors: `layer_<idx>.vectors` (n_concepts, hidden), unit rows, float32 by default
(bf16/fp16 on request), `layer_<idx>.norms` (n_concepts,) raw diff-of-means norms, and optionally
`layer_<idx>.center` (hidden,): the mean activation of all corpus texts, subtracted before
reading so that a concept's score does not include its alignment with the mean activation.
Version 2 adds an optional readout probe per layer (probe.py): `layer_<idx>.probe.weight` (n_concepts,
hidden), `.probe.bias` (n_concepts,), `.probe.mean` and `.probe.scale` (hidden,), float32.
readout.json: format_version, concepts (row order of every tensor), layers, hidden_size, dtype,
model {spec, family, fingerprint}, method, pooling, corpus {path, sha256, n_texts}, created_by, and
with probes `probe` {kind, output, layers {idx: {c, cv}}}. Version 1 files (no probe) read as before.
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
from .probe import PROBE_KINDS, Probe

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
PROBE_PARTS = ("weight", "bias", "mean", "scale")
DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ConceptVectors:
    concepts: list[str]
    layers: list[int]
    vectors: dict[int, torch.Tensor]  # layer -> (n_concepts, hidden) unit rows
    norms: dict[int, torch.Tensor]  # layer -> (n_concepts,)
    meta: dict[str, Any] = field(default_factory=dict)
    centers: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (hidden,)
    probes: dict[int, Probe] = field(default_factory=dict)  # layer -> readout probe (read_scores)

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
            if layer in self.probes:
                for part in PROBE_PARTS:
                    tensors[f"layer_{layer}.probe.{part}"] = getattr(self.probes[layer], part).float().contiguous()
        meta = {k: v for k, v in self.meta.items() if k != "probe"}
        if self.probes:
            kinds = {p.kind for p in self.probes.values()}
            if len(kinds) != 1:
                raise ValueError(f"one probe kind per file, got {sorted(kinds)}")
            meta["probe"] = {
                "kind": kinds.pop(),
                "output": "log_probabilities",
                "layers": {str(la): _probe_entry(p) for la, p in sorted(self.probes.items())},
            }
        meta = {
            **meta,
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

        from ..validate import READOUT_SCHEMA, check_finite, check_schema, expect_dir, read_json

        d = expect_dir(directory, "vectors folder", ReadoutError, "pass a run folder written by `steerkit extract`")
        jpath, spath = d / "readout.json", d / "readout.safetensors"
        if not jpath.is_file() or not spath.is_file():
            raise ReadoutError(
                f"{d} has no readout.json/readout.safetensors; pass a folder written by `steerkit extract`"
            )
        meta = read_json(jpath, "readout", ReadoutError)
        if not isinstance(meta, dict) or meta.get("format_version") not in READABLE_VERSIONS:
            check_schema(meta, {"type": "object", "required": ["format_version"]}, str(jpath), ReadoutError)
            raise ReadoutError(
                f"{jpath} has format_version {meta.get('format_version')!r}; this steerkit reads "
                f"{' and '.join(map(str, READABLE_VERSIONS))}: re-run `steerkit extract`"
            )
        check_schema(meta, READOUT_SCHEMA, str(jpath), ReadoutError)
        try:
            tensors = load_file(spath)
        except Exception as e:
            raise ReadoutError(f"{spath} is unreadable ({type(e).__name__}); re-run `steerkit extract`") from e
        concepts, layers = list(meta["concepts"]), list(meta["layers"])
        fix = "the file is corrupt: re-run `steerkit extract`"
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
            check_finite(v, f"layer_{layer}.vectors", spath, ReadoutError, fix)
            check_finite(n, f"layer_{layer}.norms", spath, ReadoutError, fix)
            vectors[layer], norms[layer] = v.float(), n.float()
            c = tensors.get(f"layer_{layer}.center")
            if c is not None:
                if c.shape != (meta.get("hidden_size"),):
                    raise ReadoutError(f"{spath}: layer_{layer}.center has shape {tuple(c.shape)}, not (hidden_size,)")
                centers[layer] = check_finite(c, f"layer_{layer}.center", spath, ReadoutError, fix).float()
        probes = _load_probes(tensors, meta, len(concepts), spath) if meta["format_version"] >= 2 else {}
        extra = {k for k in tensors if not any(k.startswith(f"layer_{la}.") for la in layers)}
        if extra:
            raise ReadoutError(f"{spath} has tensors not listed in readout.json: {', '.join(sorted(extra)[:3])}")
        return cls(concepts, layers, vectors, norms, meta, centers, probes)

    # ---- arithmetic: every operation returns a new object, the operands are never changed ------------
    def select(self, concepts: str | list[str]) -> ConceptVectors:
        """A new set with only `concepts` (in that order)."""
        names = [concepts] if isinstance(concepts, str) else list(concepts)
        idx = [self.index(c) for c in names]
        return ConceptVectors(
            names, list(self.layers), {la: v[idx].clone() for la, v in self.vectors.items()},
            {la: n[idx].clone() for la, n in self.norms.items()}, dict(self.meta),
            {la: c.clone() for la, c in self.centers.items()}, {la: p.select(idx) for la, p in self.probes.items()},
        )  # fmt: skip

    def __getitem__(self, concept: str | list[str]) -> ConceptVectors:
        return self.select(concept)

    def raw(self, layer: int) -> torch.Tensor:
        """(n_concepts, hidden) raw vectors (unit rows x norms) at `layer`."""
        return self.vectors[self.check_layer(layer)].float() * self.norms[layer].float().unsqueeze(1)

    @classmethod
    def from_raw(cls, concepts: list[str], raw: dict[int, torch.Tensor], like: ConceptVectors) -> ConceptVectors:
        """A set from raw vectors {layer: (n_concepts, hidden)}, with `like`'s meta and centers (no
        probe: its concepts are new, so read_scores falls back to `scores`)."""
        norms = {la: r.float().norm(dim=1) for la, r in raw.items()}
        units = {la: r.float() / norms[la].clamp(min=1e-12).unsqueeze(1) for la, r in raw.items()}
        meta = {**{k: v for k, v in like.meta.items() if k != "probe"}, "method": "arithmetic"}
        return cls(list(concepts), sorted(raw), units, norms, meta, {la: c.clone() for la, c in like.centers.items()})

    def mix(self, weights: dict[str, float], name: str | None = None) -> ConceptVectors:
        """One concept: sum_c w_c * raw_c at every layer, e.g. mix({"calm": 0.5, "content": 0.5})."""
        label = name or "+".join(f"{w:g}*{c}" for c, w in weights.items())
        raw = {la: sum((float(w) * self.raw(la)[self.index(c)] for c, w in weights.items()),
                       torch.zeros(self.hidden_size)).unsqueeze(0) for la in self.layers}  # fmt: skip
        return ConceptVectors.from_raw([label], raw, self)

    def _binary(self, other: ConceptVectors, sign: float, op: str) -> ConceptVectors:
        if not isinstance(other, ConceptVectors):
            return NotImplemented
        if len(self.concepts) != len(other.concepts):
            raise ValueError(f"cannot {op} sets of {len(self.concepts)} and {len(other.concepts)} concepts")
        if self.layers != other.layers or self.hidden_size != other.hidden_size:
            raise ValueError(f"cannot {op} vectors of different layers/hidden sizes ({self.layers} vs {other.layers})")
        sym = "+" if sign > 0 else "-"
        names = [f"{a}{sym}{b}" for a, b in zip(self.concepts, other.concepts, strict=True)]
        return ConceptVectors.from_raw(names, {la: self.raw(la) + sign * other.raw(la) for la in self.layers}, self)

    def __add__(self, other: ConceptVectors) -> ConceptVectors:
        return self._binary(other, 1.0, "add")

    def __sub__(self, other: ConceptVectors) -> ConceptVectors:
        return self._binary(other, -1.0, "subtract")

    def __mul__(self, k: float) -> ConceptVectors:
        if not isinstance(k, int | float) or isinstance(k, bool):
            return NotImplemented
        out = ConceptVectors.from_raw(list(self.concepts), {la: self.raw(la) * float(k) for la in self.layers}, self)
        out.meta["method"] = self.meta.get("method")  # scaling keeps the method (-v flips the unit rows)
        return out

    __rmul__ = __mul__

    def __neg__(self) -> ConceptVectors:
        return self * -1.0

    def scores(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Concept scores of hidden states (..., hidden) -> (..., n_concepts): projection of
        (h - center) on each unit vector."""
        self.check_layer(layer)
        h = hidden.float()
        if layer in self.centers:
            h = h - self.centers[layer]
        return h @ self.vectors[layer].float().t()

    def read_scores(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """What a readout reads, (..., hidden) -> (..., n_concepts): the readout probe's
        log-probabilities log p(concept | h) when the file has a probe at `layer` (the same function
        for one token's hidden state and for a pooled text), else `scores` (centred projections on
        the unit vectors). Steering never uses the probe."""
        self.check_layer(layer)
        probe = self.probes.get(layer)
        return probe.log_probs(hidden) if probe is not None else self.scores(hidden, layer)


def _load_probes(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], n_concepts: int, spath: Path
) -> dict[int, Probe]:
    """The probes of a version-2 file: all four tensors of a layer or none, shapes and finiteness
    checked (a bias may be -inf: a concept the probe never saw); C_reg and CV scores from the JSON."""
    from ..validate import check_finite

    fix = "the file is corrupt: re-run `steerkit extract`"
    hidden = meta.get("hidden_size")
    info = (meta.get("probe") or {}).get("layers") or {}
    kind = str((meta.get("probe") or {}).get("kind") or "multinomial_logistic")
    if kind not in PROBE_KINDS.values():
        raise ReadoutError(
            f"{spath}: unknown probe kind {kind!r} (known: {', '.join(PROBE_KINDS.values())}); upgrade steerkit or re-run `steerkit extract`"
        )
    probes: dict[int, Probe] = {}
    shapes = {"weight": (n_concepts, hidden), "bias": (n_concepts,), "mean": (hidden,), "scale": (hidden,)}
    for layer in meta["layers"]:
        found = {p: tensors[k] for p in PROBE_PARTS if (k := f"layer_{layer}.probe.{p}") in tensors}
        if not found:
            continue
        for p in PROBE_PARTS:
            t = found.get(p)
            if t is None or tuple(t.shape) != shapes[p]:
                got = "missing" if t is None else f"shape {tuple(t.shape)}"
                raise ReadoutError(f"{spath}: layer_{layer}.probe.{p} is {got}, not {shapes[p]}; {fix}")
            if p != "bias":
                check_finite(t, f"layer_{layer}.probe.{p}", spath, ReadoutError, fix)
        bias, scale = found["bias"], found["scale"]
        if bool(torch.isnan(bias).any() or torch.isposinf(bias).any() or (scale <= 0).any()):
            raise ReadoutError(f"{spath}: layer_{layer}.probe has a NaN or +inf bias or a scale <= 0; {fix}")
        entry = dict(info.get(str(layer)) or {})
        probes[layer] = Probe(
            found["weight"].float(), bias.float(), found["mean"].float(), scale.float(),
            c_reg=float(entry.pop("c", float("nan"))), cv=dict(entry.pop("cv", None) or {}), kind=kind, info=entry,
        )  # fmt: skip
    return probes


def _probe_entry(p: Probe) -> dict[str, Any]:
    """readout.json's record of how one layer's probe was fitted."""
    return {"c": p.c_reg, "cv": p.cv} if p.kind == "multinomial_logistic" else dict(p.info)
