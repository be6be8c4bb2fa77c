"""LoRA adapters on base blocks through peft, injected in place and removed after training.

Training wraps every linear layer of the chosen blocks with peft's LoRA layer
(`inject_adapter_in_model`: the module tree keeps its paths, so adapters and hooks still find
their modules), trains only lora_A / lora_B, and unwraps the layers when the run ends: the
in-process model is left exactly as it was. A finished run stores the LoRA tensors as
`lora.<module>.lora_A.default.weight` / `...lora_B...`; `load_phase_run` merges them into the base
weights (W += alpha / r * B @ A, peft's own merge), so the model an experiment sees is the plain
architecture with the trained weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import SteerkitError

ADAPTER = "default"
# peft refuses LoRA on these leaf modules of Mamba-type models (their fused kernels read the weight
# directly; peft.tuners.tuners_utils checks this), so they are left out of the targets.
PEFT_MAMBA_TYPES = {"falcon_h1", "mamba", "mamba2", "falcon_mamba", "nemotron_h"}
PEFT_MAMBA_EXCLUDED = {"out_proj", "conv1d"}


def _peft() -> Any:
    try:
        import peft
    except ImportError as e:
        raise SteerkitError("LoRA training needs peft: pip install 'steerkit[lora]'") from e
    return peft


def lora_targets(model: nn.Module, adapter: Any, blocks: list[int]) -> list[str]:
    """Full names of the linear layers (nn.Linear, GPT-2's Conv1D) inside the given blocks that
    peft can adapt."""
    prefix = adapter.blocks_path
    mamba = getattr(getattr(model, "config", None), "model_type", None) in PEFT_MAMBA_TYPES
    out = []
    for i in blocks:
        for name, mod in adapter.blocks(model)[i].named_modules():
            if not name or not (isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D"):
                continue
            if mamba and name.rsplit(".", 1)[-1] in PEFT_MAMBA_EXCLUDED:
                continue
            out.append(f"{prefix}.{i}.{name}")
    return out


def inject(model: nn.Module, targets: list[str], rank: int, alpha: float) -> list[nn.Parameter]:
    """Wrap `targets` with LoRA layers (B = 0: the model's output is unchanged until training).
    Returns the new trainable parameters (lora_A, lora_B of every target)."""
    peft = _peft()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none")
    import warnings

    with warnings.catch_warnings():  # peft notes that it sets fan_in_fan_out for GPT-2's Conv1D
        warnings.simplefilter("ignore", UserWarning)
        peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    params = [p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]
    for p in params:
        p.requires_grad_(True)
    return params


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """{full parameter name: tensor} of the injected LoRA weights."""
    return {n: p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}


def remove(model: nn.Module, targets: list[str], *, merge: bool) -> None:
    """Put the original layers back in place of the LoRA wrappers, merging the LoRA update into
    their weights first when `merge` (else the base weights are untouched)."""
    for name in targets:
        wrapped: Any = model.get_submodule(name)
        if not hasattr(wrapped, "get_base_layer"):
            continue
        if merge:
            wrapped.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapped.get_base_layer())


def merge_into(model: nn.Module, targets: list[str], rank: int, alpha: float, state: dict[str, torch.Tensor]) -> None:
    """Merge a finished run's LoRA tensors (`state`: full parameter names) into the base weights."""
    inject(model, targets, rank, alpha)
    params = lora_state(model)
    missing = sorted(set(params) - set(state))
    if missing:
        raise SteerkitError(
            f"the run's LoRA weights lack {missing[0]} (and {len(missing) - 1} more): the run is corrupt"
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n].to(p))
    remove(model, targets, merge=True)
