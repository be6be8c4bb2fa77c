"""Training run directories and loading a trained phase core back.

Layout of runs/<name>/:
    config.json              {"kind": "train-phase", "config": TrainConfig (layer resolved), "resolved": {...}}
    metrics.jsonl            one JSON object per training step (readable without torch)
    checkpoints/step-N/      state.safetensors + meta.json (checkpoint.py), the last K kept
    phase_core.safetensors   final trainable state ("phase.core.*", "phase.coupling.*", "base.*", "lora.*")
    phase_core.json          status, step, best validation, sha256 of phase_core.safetensors
    run.json                 written last: marks the run finished (steerkit.runs)
    plots/                   `steerkit plot-metrics`
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..capture.layers import parse_layers
from ..errors import LayerSpecError, ReadoutError, RunDirError
from ..io import atomic_save_safetensors, atomic_write_bytes
from ..phase.core import PhaseCore
from ..phase.couplings import Coupling, make_coupling
from ..runs import finish_run, runs_root
from .checkpoint import sha256_file
from .config import TrainConfig

log = logging.getLogger(__name__)
KIND = "train-phase"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def weights(self) -> Path:
        return self.root / "phase_core.safetensors"

    @property
    def summary(self) -> Path:
        return self.root / "phase_core.json"


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode())


def resolve_layer(layer: int | str, n_blocks: int) -> int:
    layers = parse_layers(layer if isinstance(layer, int) else str(layer), n_blocks)
    if len(layers) != 1:
        raise LayerSpecError(f"the phase core couples at one block; {layer!r} names {len(layers)}")
    return layers[0]


def load_direction(spec: str, layer: int, hidden: int) -> torch.Tensor:
    """(hidden,) direction from READOUT_DIR:CONCEPT (a `steerkit extract` folder) or
    FILE.safetensors[:KEY] holding a (hidden,) or (n_blocks, hidden) tensor (row `layer`)."""
    path, _, key = spec.rpartition(":") if ":" in spec else (spec, "", "")
    p = Path(path)
    if p.is_dir():
        from ..vectors.readout import ConceptVectors

        if not key:
            raise ReadoutError(f"--direction {spec}: name the concept, e.g. {path}:calm")
        v = ConceptVectors.load(p).vector(key, layer)
    else:
        if not p.is_file():
            raise ReadoutError(f"--direction {spec}: {p} is neither a readout folder nor a .safetensors file")
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(p))
        except Exception as e:
            raise ReadoutError(
                f"--direction {spec}: {p} is not a readable safetensors file ({type(e).__name__})"
            ) from e
        if not key:
            if len(tensors) != 1:
                raise ReadoutError(f"--direction {spec}: the file holds {sorted(tensors)}; add :KEY")
            key = next(iter(tensors))
        if key not in tensors:
            raise ReadoutError(f"--direction {spec}: no tensor {key!r}; the file holds {sorted(tensors)[:8]}")
        v = tensors[key].float()
        if v.dim() == 2:
            if layer >= v.shape[0]:
                raise ReadoutError(f"--direction {spec}: {tuple(v.shape)} has no row for block {layer}")
            v = v[layer]
    if v.shape != (hidden,) or not torch.isfinite(v).all() or float(v.norm()) == 0:
        raise ReadoutError(f"--direction {spec}: need a finite non-zero ({hidden},) vector, got {tuple(v.shape)}")
    return v.float()


def build_phase(
    config: TrainConfig, hidden: int, direction: torch.Tensor | None = None
) -> tuple[PhaseCore, Coupling, nn.ModuleDict]:
    """Fresh core and coupling (initialised from the current torch RNG) and their container."""
    core = PhaseCore(hidden, config.phase)
    coupling = make_coupling(config.coupling, hidden, direction)
    return core, coupling, nn.ModuleDict({"core": core, "coupling": coupling})


def read_config(run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    from ..validate import TRAIN_CONFIG_FILE_SCHEMA, expect_dir, read_json

    expect_dir(run_dir, "run folder", RunDirError, "pass a folder written by `steerkit train-phase`")
    p = RunPaths(run_dir).config
    if not p.is_file():
        raise RunDirError(f"{run_dir} has no config.json; pass a folder written by `steerkit train-phase`")
    data = read_json(p, "run config", RunDirError, TRAIN_CONFIG_FILE_SCHEMA)
    try:
        return TrainConfig.from_dict(data["config"]), dict(data.get("resolved", {}))
    except (ValueError, KeyError, TypeError) as e:
        raise RunDirError(f"{p} is not a train-phase config ({e}); pass a train-phase run folder") from e


def save_final(
    paths: RunPaths, state: dict[str, torch.Tensor], config: TrainConfig, resolved: dict[str, Any], info: dict[str, Any]
) -> None:
    """phase_core.safetensors + phase_core.json, then run.json (the run is finished)."""
    atomic_save_safetensors({k: v.detach().cpu() for k, v in state.items()}, paths.weights)
    summary = {
        "kind": KIND,
        "config": config.to_dict(),
        "resolved": resolved,
        **info,
        "tensors": sorted(state),
        "sha256": sha256_file(paths.weights),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "finished_unix": time.time(),
    }
    write_json(paths.summary, summary)
    finish_run(paths.root, KIND, status=info.get("status"), step=info.get("step"))


def _finished(d: Path) -> float | None:
    paths = RunPaths(d)
    if not (paths.weights.is_file() and paths.summary.is_file()):
        return None
    try:
        s = json.loads(paths.summary.read_text())
        return float(s.get("finished_unix") or paths.summary.stat().st_mtime) if s.get("kind") == KIND else None
    except (OSError, ValueError, json.JSONDecodeError):
        return None


def find_latest_run(root: str | Path | None = None) -> Path | None:
    """The most recently finished train-phase run under root (default: $STEERKIT_RUNS or ./runs)."""
    r = Path(root) if root is not None else runs_root()
    if not r.is_dir():
        return None
    done = [(t, d) for d in r.iterdir() if d.is_dir() and (t := _finished(d)) is not None]
    return max(done)[1] if done else None


if TYPE_CHECKING:
    from ..models.loading import Placement


def read_final(paths: RunPaths) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(phase_core.json, phase_core.safetensors tensors) of a finished run, each checked: the summary's
    schema, the checksum, a readable safetensors file (garbage whose recorded checksum was updated to
    match is caught here) and finite values."""
    from safetensors.torch import load_file

    from ..validate import PHASE_SUMMARY_SCHEMA, check_finite, read_json

    summary = read_json(paths.summary, "run summary", RunDirError, PHASE_SUMMARY_SCHEMA)
    if sha256_file(paths.weights) != summary["sha256"]:
        raise RunDirError(f"{paths.weights} does not match its sha256 in phase_core.json: the file is corrupt")
    try:
        state = load_file(str(paths.weights))
    except Exception as e:
        raise RunDirError(f"{paths.weights} is not a safetensors file ({type(e).__name__}): the file is corrupt") from e
    for k, v in state.items():
        check_finite(v, k, paths.weights, RunDirError, "the file is corrupt; retrain the run")
    return summary, state


def load_phase_run(
    run_dir: str | Path, lm: Any = None, *, device: str = "cpu", placement: Placement | None = None
) -> tuple[Any, PhaseCore, Coupling, TrainConfig]:
    """(LoadedModel, PhaseCore, Coupling, TrainConfig) of a finished run; config.layer is the block.

    lm: an already loaded model (else config.model is loaded). Base blocks that the run trained
    ('base.*' tensors) are copied into lm.model, and its LoRA adapters ('lora.*') are merged into
    lm.model's weights. The core is returned in eval mode. placement (instead of device): where and
    in which dtype to load the model (a dtype of None keeps the run's).
    """
    d = Path(run_dir)
    paths = RunPaths(d)
    config, resolved = read_config(d)
    if not paths.weights.is_file() or not paths.summary.is_file():
        raise RunDirError(
            f"{d} is unfinished (no phase_core.safetensors); resume it with `steerkit train-phase --resume`"
        )
    _, state = read_final(paths)
    if lm is None:
        from ..models import load

        kwargs = placement.load_kwargs() if placement is not None else {"device": device}
        lm = load(config.model, **(kwargs | {"dtype": kwargs.get("dtype") or config.dtype}))
    hidden = int(lm.model.get_input_embeddings().weight.shape[1])
    if resolved.get("hidden_size") not in (None, hidden):
        raise RunDirError(f"{d} was trained on hidden size {resolved['hidden_size']}, the model has {hidden}")
    layer = resolve_layer(config.layer, lm.adapter.n_blocks(lm.model))
    core, coupling, module = build_phase(config, hidden)
    phase_state = {k[len("phase.") :]: v for k, v in state.items() if k.startswith("phase.")}
    try:
        module.load_state_dict(phase_state, strict=True)
    except RuntimeError as e:  # missing / unexpected keys or shapes: torch's message is many lines
        first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        raise RunDirError(f"{paths.weights} does not fit the run's config.json ({first[:200]})") from e
    base = {k[len("base.") :]: v for k, v in state.items() if k.startswith("base.")}
    if base:
        params = dict(lm.model.named_parameters())
        unknown = sorted(set(base) - set(params))
        if unknown or any(params[k].shape != v.shape for k, v in base.items() if k in params):
            raise RunDirError(f"{paths.weights}: its base.* tensors do not fit model {config.model}")
        with torch.no_grad():
            for k, v in base.items():
                params[k].copy_(v.to(params[k]))
    lora_state = {k[len("lora.") :]: v for k, v in state.items() if k.startswith("lora.")}
    if lora_state:
        from .lora import merge_into

        merge_into(lm.model, list(resolved["lora_targets"]), config.lora_rank, config.lora_alpha, lora_state)
    dev = lm.adapter.block_device(lm.model, layer)  # the coupled block's own device (sharded models)
    module.to(dev).eval()
    return lm, core, coupling, config.replace(layer=layer)
