"""Optimizers of a training run and their checkpoint state.

The phase core and coupling always train with AdamW (lr). Trained base weights (unfrozen blocks,
lr base_lr; LoRA adapters, lr lora_lr) use AdamW too, or APOLLO / APOLLO-Mini (Zhu et al. 2024,
"APOLLO: SGD-like Memory, AdamW-level Performance"; the `apollo-torch` package): Adam moments
kept in a random rank-r projection of each 2-D gradient, used only to scale the raw gradient per
channel (APOLLO, rank 256) or per tensor (APOLLO-Mini, rank 1, scale 128). With adamw everything
is one torch AdamW, exactly as before.

State: optimizer tensors go into the checkpoint's safetensors as "<prefix>.<param id>.<key>",
scalars and param groups into meta.json. APOLLO keeps a projector object per parameter; it is
saved as its attributes (the projection matrix as a tensor, the seed and counters as JSON) and
rebuilt from an allow-list of classes: nothing is unpickled.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from ..errors import SteerkitError
from . import checkpoint as ck
from .config import TrainConfig
from .setup import Parts

APOLLO_SETTINGS: dict[str, dict[str, Any]] = {
    "apollo": {"rank": 256, "scale_type": "channel", "scale": 1.0},
    "apollo-mini": {"rank": 1, "scale_type": "tensor", "scale": 128.0},
}
UPDATE_PROJ_GAP = 200
PROJECTOR_CLASSES = {
    "apollo_torch.random_projector.GradientProjector",
    "apollo_torch.svd_projector.GaLoreProjector",
}


def _apollo() -> Any:
    try:
        import apollo_torch
    except ImportError as e:
        raise SteerkitError("--optimizer apollo needs apollo-torch: pip install 'steerkit[apollo]'") from e
    return apollo_torch


class Optimizers:
    """One or two torch optimizers driven as one: zero_grad, step, lr scaling, checkpoint state."""

    def __init__(self, cfg: TrainConfig, parts: Parts) -> None:
        base = list(parts.base_params.values())
        lora_params = parts.groups.get("lora", [])
        phase_group: dict[str, Any] = {"params": parts.groups["phase"], "lr": cfg.lr}
        self.opts: list[torch.optim.Optimizer] = []
        if cfg.optimizer == "adamw" or not (base or lora_params):
            groups = [phase_group]
            if base:
                groups.append({"params": base, "lr": cfg.base_lr})
            if lora_params:
                groups.append({"params": lora_params, "lr": cfg.lora_lr})
            self.opts.append(torch.optim.AdamW(groups, weight_decay=cfg.weight_decay))
        else:
            self.opts.append(torch.optim.AdamW([phase_group], weight_decay=cfg.weight_decay))
            groups = _apollo_groups(cfg, base, cfg.base_lr) + _apollo_groups(cfg, lora_params, cfg.lora_lr)
            self.opts.append(_apollo().APOLLOAdamW(groups, weight_decay=cfg.weight_decay))
        self.base_lrs = [[float(g["lr"]) for g in o.param_groups] for o in self.opts]

    def set_scale(self, scale: float) -> None:
        for o, lrs in zip(self.opts, self.base_lrs, strict=True):
            for g, lr in zip(o.param_groups, lrs, strict=True):
                g["lr"] = lr * scale

    @property
    def lr(self) -> float:
        return float(self.opts[0].param_groups[0]["lr"])

    def zero_grad(self) -> None:
        for o in self.opts:
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        for o in self.opts:
            o.step()

    # ---- checkpoint state ------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {}
        for i, o in enumerate(self.opts):
            prefix = _prefix(i)
            sd = o.state_dict()
            sd = {"state": {pid: dict(st) for pid, st in sd["state"].items()}, "param_groups": sd["param_groups"]}
            objects: dict[str, Any] = {}
            for pid, st in sd["state"].items():
                for k in [k for k, v in st.items() if _is_object(v)]:
                    objects[f"{pid}.{k}"] = _save_object(st.pop(k), f"{prefix}.{pid}.{k}", tensors)
            t, m = ck.flatten_optimizer(sd)
            tensors.update({prefix + name[len("opt") :]: v for name, v in t.items()})
            if objects:
                m["objects"] = objects
            meta["optimizer" if i == 0 else f"optimizer{i + 1}"] = m
        return tensors, meta

    def load(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        for i, o in enumerate(self.opts):
            prefix = _prefix(i)
            key = "optimizer" if i == 0 else f"optimizer{i + 1}"
            if key not in meta:
                raise SteerkitError(f"the checkpoint has no {key} state: it was made with another --optimizer")
            mine = {"opt" + k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            mine = {k: v for k, v in mine.items() if ".projector." not in k}
            sd = ck.unflatten_optimizer(mine, meta[key])
            for name, spec in meta[key].get("objects", {}).items():
                pid, k = name.split(".", 1)
                sd["state"].setdefault(int(pid), {})[k] = _load_object(spec, f"{prefix}.{pid}.{k}", tensors)
            o.load_state_dict(sd)


def _prefix(i: int) -> str:
    return "opt" if i == 0 else f"opt{i + 1}"


def _apollo_groups(cfg: TrainConfig, params: list[nn.Parameter], lr: float) -> list[dict[str, Any]]:
    """APOLLO groups: 2-D weights by effective rank min(rank, both dims), the rest plain Adam."""
    s = APOLLO_SETTINGS[cfg.optimizer]
    rank = cfg.apollo_rank or int(s["rank"])
    by_rank: dict[int, list[nn.Parameter]] = {}
    plain: list[nn.Parameter] = []
    for p in params:
        if p.dim() == 2:
            by_rank.setdefault(min(rank, *p.shape), []).append(p)
        else:
            plain.append(p)
    groups: list[dict[str, Any]] = [
        {"params": ps, "lr": lr, "rank": r, "proj": "random", "scale_type": s["scale_type"], "scale": s["scale"],
         "update_proj_gap": UPDATE_PROJ_GAP, "proj_type": "std"}
        for r, ps in sorted(by_rank.items())
    ]  # fmt: skip
    if plain:
        groups.append({"params": plain, "lr": lr})
    return groups


def _is_object(v: Any) -> bool:
    return not isinstance(v, torch.Tensor | int | float | bool | str | type(None) | list | tuple | dict)


def _save_object(obj: Any, name: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    cls = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if cls not in PROJECTOR_CLASSES:
        raise SteerkitError(f"cannot checkpoint optimizer state of type {cls}")
    attrs: dict[str, Any] = {}
    for k, v in vars(obj).items():
        if isinstance(v, torch.Tensor):
            tensors[f"{name}.{k}"] = v.detach().cpu().contiguous()
            attrs[k] = {"tensor": f"{name}.{k}", "device": str(v.device)}
        else:
            attrs[k] = {"value": v}
    return {"class": cls, "attrs": attrs}


def _load_object(spec: dict[str, Any], name: str, tensors: dict[str, torch.Tensor]) -> Any:
    cls_name = spec["class"]
    if cls_name not in PROJECTOR_CLASSES:
        raise SteerkitError(f"the checkpoint names optimizer state of unknown type {cls_name}")
    _apollo()
    mod, _, qual = cls_name.rpartition(".")
    cls = getattr(importlib.import_module(mod), qual)
    obj = cls.__new__(cls)
    for k, a in spec["attrs"].items():
        setattr(obj, k, tensors[a["tensor"]].to(a["device"]) if "tensor" in a else a["value"])
    return obj
