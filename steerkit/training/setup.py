"""What a training run trains: the phase core + coupling, unfrozen base blocks, LoRA adapters, and
(with --from) the state a parent run left. Every objective shares this set-up.

`build_parts` freezes the base, unfreezes the named blocks, injects LoRA and loads a parent run;
`ModelGuard` puts the in-process model back as it was (requires_grad flags, LoRA wrappers removed).
The trainable state is a flat {name: tensor} dict with prefixes phase. / base. / lora. (runs.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..capture.layers import BlockSpec, parse_layers
from ..errors import LayerSpecError, RunDirError
from ..phase.core import PhaseCore
from ..phase.couplings import Coupling
from . import lora
from .config import TrainConfig
from .runs import KIND, RunPaths, build_phase, load_direction, read_config, read_final, resolve_layer

log = logging.getLogger(__name__)


@dataclass
class Parts:
    core: PhaseCore
    coupling: Coupling
    module: nn.ModuleDict
    layer: int
    n_blocks: int
    hidden: int
    base_params: dict[str, nn.Parameter] = field(default_factory=dict)  # unfrozen base weights by name
    groups: dict[str, list[nn.Parameter]] = field(default_factory=dict)  # 'phase', block kinds, 'lora'
    lora_targets: list[str] = field(default_factory=list)
    fixed: dict[str, torch.Tensor] = field(default_factory=dict)  # parent's base.* tensors not trained here


def resolve_blocks(spec: Any, n_blocks: int, option: str) -> tuple[int, ...]:
    """A block spec (a string like '10:-1', or ints) -> sorted indices in [0, n_blocks)."""
    if spec is None or spec == () or spec == "":
        return ()
    check_block_spec(spec, option)
    shown = f"[{spec}]" if isinstance(spec, str) else str(list(spec))
    try:
        return tuple(parse_layers(spec, n_blocks))
    except LayerSpecError as e:
        raise LayerSpecError(f"{option} {shown}: the model has blocks 0..{n_blocks - 1} ({e})") from e


def check_block_spec(spec: Any, option: str) -> None:
    """Syntax of a block spec, before any model loads."""
    try:
        BlockSpec.parse(spec)
    except LayerSpecError as e:
        raise LayerSpecError(f"{option} {spec!r}: give block indices like 12, 12,13, 10:20 or 10:-1 ({e})") from e


def read_parent(parent: str | Path, lm: Any) -> tuple[TrainConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """(config, resolved, final state) of a finished train-phase run made with lm's model."""
    d = Path(parent)
    paths = RunPaths(d)
    if not d.is_dir() or not paths.config.is_file():
        raise RunDirError(f"--from {d} is not a train-phase run folder (no config.json); pass a finished run")
    try:
        kind = json.loads(paths.config.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind != KIND:
        raise RunDirError(f"--from {d} is not a phase run (kind {kind!r}); pass a folder written by train-phase")
    cfg, resolved = read_config(d)
    if not paths.weights.is_file() or not paths.summary.is_file():
        raise RunDirError(f"--from {d} is unfinished (no phase_core.safetensors); finish it with --resume first")
    hidden = int(lm.model.get_input_embeddings().weight.shape[1])
    fp, n_blocks = lm.info.get("fingerprint"), lm.adapter.n_blocks(lm.model)
    other = (resolved.get("model_fingerprint") not in (None, fp) and fp is not None) or (
        resolved.get("hidden_size") not in (None, hidden) or resolved.get("n_blocks") not in (None, n_blocks)
    )
    if other:
        raise RunDirError(f"--from {d} was trained on another model ({cfg.model}); use that model or another run")
    return cfg, resolved, read_final(paths)[1]


def inherit(cfg: TrainConfig, parent_cfg: TrainConfig) -> TrainConfig:
    """The child trains the parent's core: its block, oscillators, coupling and LoRA layout."""
    changes: dict[str, Any] = {"layer": parent_cfg.layer, "phase": parent_cfg.phase, "coupling": parent_cfg.coupling}
    changes["direction"] = None  # the trained direction comes with the parent's state
    if parent_cfg.lora_rank:
        changes.update(
            lora_rank=parent_cfg.lora_rank, lora_alpha=parent_cfg.lora_alpha, lora_blocks=parent_cfg.lora_blocks
        )
    return cfg.replace(**changes)


def build_parts(cfg: TrainConfig, lm: Any) -> tuple[TrainConfig, Parts, dict[str, Any]]:
    """Freeze the base, unfreeze / LoRA-adapt the configured blocks, build the core (from the parent
    run with cfg.parent). Returns the config with every spec resolved, the parts and a record of the
    parent (empty without one)."""
    model, adapter = lm.model, lm.adapter
    n_blocks = adapter.n_blocks(model)
    parent_state: dict[str, torch.Tensor] = {}
    parent_info: dict[str, Any] = {}
    parent = cfg.parent
    if parent is not None:
        pcfg, presolved, parent_state = read_parent(parent, lm)
        parent_info = {
            "run": str(Path(parent).resolve()),
            "objective": pcfg.objective,
            "lora_targets": presolved.get("lora_targets", []),
        }
        cfg = inherit(cfg, pcfg)
    layer = resolve_layer(cfg.layer, n_blocks)
    unfreeze = resolve_blocks(cfg.unfreeze, n_blocks, "--unfreeze")
    lora_blocks = resolve_blocks(cfg.lora_blocks, n_blocks, "--lora-blocks")
    cfg = cfg.replace(layer=layer, unfreeze=unfreeze, lora_blocks=lora_blocks)
    hidden = int(model.get_input_embeddings().weight.shape[1])
    direction = load_direction(cfg.direction, layer, hidden) if cfg.direction else None
    core, coupling, module = build_phase(cfg, hidden, direction)
    device = adapter.block_device(model, layer)  # the coupled block's own device (sharded models)
    if parent_state:
        phase = {k[len("phase.") :]: v for k, v in parent_state.items() if k.startswith("phase.")}
        module.load_state_dict(phase, strict=True)
    module.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    parts = Parts(core, coupling, module, layer, n_blocks, hidden)
    parts.groups["phase"] = [p for p in module.parameters() if p.requires_grad]
    names = {id(p): n for n, p in model.named_parameters()}
    for i in unfreeze:
        kind = adapter.block_info(model, i).kind
        for p in adapter.blocks(model)[i].parameters():
            p.requires_grad_(True)
            parts.base_params[names[id(p)]] = p
            parts.groups.setdefault(kind, []).append(p)
    if parent_state:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in parent_state.items():
                if k.startswith("base."):
                    params[k[len("base.") :]].copy_(v.to(params[k[len("base.") :]]))
        parts.fixed = {
            k: v
            for k, v in parent_state.items()
            if k.startswith("base.") and k[len("base.") :] not in parts.base_params
        }
    if cfg.lora_rank:
        blocks = sorted(lora_blocks or range(n_blocks))
        both = sorted(set(blocks) & set(unfreeze))
        if both:
            raise RunDirError(f"blocks {both} are both unfrozen and LoRA-adapted; choose one per block")
        parts.lora_targets = lora.lora_targets(model, adapter, blocks)
        if parent_info.get("lora_targets") and parent_info["lora_targets"] != parts.lora_targets:
            raise RunDirError(f"--from {cfg.parent}: its LoRA targets differ from this model's; use the run's model")
        parts.groups["lora"] = lora.inject(model, parts.lora_targets, cfg.lora_rank, cfg.lora_alpha)
        plora = {k[len("lora.") :]: v for k, v in parent_state.items() if k.startswith("lora.")}
        if plora:
            with torch.no_grad():
                for k, lp in lora.lora_state(model).items():
                    lp.copy_(plora[k].to(lp))
    return cfg, parts, parent_info


def trainable_state(parts: Parts, model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of everything the run trains (plus a parent's fixed base tensors), CPU."""
    out = {f"phase.{k}": v.detach().cpu().clone() for k, v in parts.module.state_dict().items()}
    out.update({k: v.detach().cpu().clone() for k, v in parts.fixed.items()})
    out.update({f"base.{k}": p.detach().cpu().clone() for k, p in parts.base_params.items()})
    out.update({f"lora.{k}": p.detach().cpu().clone() for k, p in lora.lora_state(model).items()})
    return out


def load_trainable_state(parts: Parts, model: nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    """Copy `prefix` + trainable_state names from tensors into the live parameters."""
    n = len(prefix) + len("phase.")
    phase = {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + "phase.")}
    parts.module.load_state_dict(phase, strict=True)
    with torch.no_grad():
        for k, p in parts.base_params.items():
            p.copy_(tensors[f"{prefix}base.{k}"].to(p))
        for k, lp in lora.lora_state(model).items():
            lp.copy_(tensors[f"{prefix}lora.{k}"].to(lp))


class ModelGuard:
    """Records the model's requires_grad flags; `restore()` removes LoRA wrappers (unmerged) and
    puts the flags back, so the in-process model ends the run as it began (trained unfrozen blocks
    keep their new weights, as before)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags = {n: p.requires_grad for n, p in model.named_parameters()}
        self.lora_targets: list[str] = []

    def restore(self) -> None:
        lora.remove(self.model, self.lora_targets, merge=False)
        for n, p in self.model.named_parameters():
            if n in self.flags:
                p.requires_grad_(self.flags[n])
