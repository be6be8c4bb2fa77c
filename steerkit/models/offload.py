"""Where a module of a dispatched model runs, and its weights when they are offloaded.

A model loaded with a device map (accelerate) keeps each dispatched module's weights on its device,
or offloaded (to CPU RAM or disk) with the parameters left on the `meta` device; an accelerate hook
(`module._hf_hook`) moves the weights and the inputs to the module's *execution device* at forward
time. So a parameter's `.device` is not where the module runs: ask these helpers instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _hooks(module: nn.Module) -> list[Any]:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", [hook]))  # a SequentialHook holds several


def execution_device(module: nn.Module) -> torch.device | None:
    """The device an accelerate hook runs `module` on, or None if it has no such hook."""
    for hook in _hooks(module):
        dev = getattr(hook, "execution_device", None)
        if dev is not None:
            return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")
    return None


def module_device(module: nn.Module) -> torch.device:
    """Where `module` computes: its hook's execution device, else the first parameter or buffer
    that is not on `meta`, else the first hooked submodule's execution device, else CPU."""
    dev = execution_device(module)
    if dev is not None:
        return dev
    for t in [*module.parameters(), *module.buffers()]:
        if t.device.type != "meta":
            return t.device
    for sub in module.modules():
        dev = execution_device(sub)
        if dev is not None:
            return dev
    return torch.device("cpu")


def is_dispatched(model: nn.Module) -> bool:
    """True when accelerate dispatched the model (a device map, CPU or disk offload)."""
    return bool(getattr(model, "hf_device_map", None)) or any(_hooks(m) for m in model.modules())


def tensor_value(module: nn.Module, name: str) -> torch.Tensor:
    """Parameter or buffer `name` (e.g. 'weight') of `module` with real values: itself, or the
    offloaded copy its accelerate hook loads at forward time (on CPU or disk)."""
    t = getattr(module, name)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is not a tensor")
    if t.device.type != "meta":
        return t
    for hook in _hooks(module):
        wmap = getattr(hook, "weights_map", None)
        if wmap is not None and name in wmap:
            value = wmap[name]
            assert isinstance(value, torch.Tensor)
            return value
    raise RuntimeError(f"{type(module).__name__}.{name} is on the meta device and no offload hook holds its values")


def named_tensor_values(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, values) of every parameter, offloaded ones read from their hooks (in named_parameters order)."""
    mods = dict(model.named_modules())
    out = []
    for name, p in model.named_parameters():
        if p.device.type == "meta":
            owner, _, attr = name.rpartition(".")
            out.append((name, tensor_value(mods[owner], attr)))
        else:
            out.append((name, p))
    return out
