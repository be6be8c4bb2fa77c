"""Alternative capture backends: the same batches through nnsight or transformer-lens.

They are cross-checks and a door for users of those ecosystems; the default `hooks` backend is
the fastest (the wrappers trace the same forward pass and, here, run the whole model). Each
runner has the signature of `engine._run_batch` and returns pooled (site, layer) -> tensor.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from ..errors import SteerkitError
from ..models.adapters import Adapter
from .pooling import Pooling, pool

Runner = Callable[..., dict[tuple[str, int], torch.Tensor]]
BACKENDS = ("hooks", "nnsight")


def nnsight_runner(model: torch.nn.Module, tokenizer: Any) -> Runner:
    """A runner that reads the same sites through an nnsight LanguageModel trace."""
    try:
        from nnsight import LanguageModel
        from nnsight.intervention.envoy import Envoy
    except ImportError as e:
        raise SteerkitError("the nnsight backend needs `pip install nnsight==0.8.1`") from e
    with warnings.catch_warnings():  # nnsight warns about submodules named `output` (RWKV)
        warnings.simplefilter("ignore", UserWarning)
        wrapped = LanguageModel(model, tokenizer=tokenizer)
    reserved = {name for name in dir(Envoy) if not name.startswith("_")}

    def envoy(path: str) -> Any:
        obj: Any = wrapped
        for part in path.split("."):
            obj = (
                obj[int(part)]
                if part.isdigit()
                else getattr(obj, Envoy.OVERLOAD_PREFIX + part if part in reserved else part)
            )
        return obj

    def _trace(
        inputs: dict[str, torch.Tensor], wanted: list[tuple[str, int]], adapter: Adapter, model: torch.nn.Module
    ) -> dict[tuple[str, int], Any]:
        saved: dict[tuple[str, int], Any] = {}
        order = {"heads": 0, "mlp": 1, "resid": 2}  # nnsight needs sites in execution order
        with torch.inference_mode(), wrapped.trace(inputs, use_cache=False):
            for site, layer in sorted(wanted, key=lambda w: (w[1], order[w[0]])):
                info = adapter.block_info(model, layer)
                block = f"{adapter.blocks_path}.{layer}"
                if site == "resid":
                    saved[(site, layer)] = envoy(block).output.save()
                elif site == "heads":
                    saved[(site, layer)] = envoy(f"{block}.{info.mixer_out}").input.save()
                else:
                    saved[(site, layer)] = envoy(f"{block}.{info.mlp_down}").input.save()
        return saved

    def run(
        model: torch.nn.Module,
        base: torch.nn.Module,
        adapter: Adapter,
        ids: torch.Tensor,
        mask: torch.Tensor,
        wanted: list[tuple[str, int]],
        last_layer: int,
        pooling: Pooling,
        left: bool,
    ) -> dict[tuple[str, int], torch.Tensor]:
        inputs: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask.to(ids.device)}
        if left:
            inputs["position_ids"] = (torch.cumsum(mask, 1) - 1).clamp(min=0).to(ids.device)
        with warnings.catch_warnings():  # nnsight warns about submodules named `output` (RWKV)
            warnings.simplefilter("ignore", UserWarning)
            saved = _trace(inputs, wanted, adapter, model)
        out: dict[tuple[str, int], torch.Tensor] = {}
        for (site, layer), value in saved.items():
            if site == "resid":
                h = adapter.get_hidden(value) * adapter.output_scale(model, layer)
            else:
                h = value if value.dim() == 3 else value.view(mask.shape[0], mask.shape[1], -1)
            p = pool(h, mask, pooling).cpu()
            if site == "heads":
                info = adapter.block_info(model, layer)
                p = p.view(p.shape[0], info.n_heads, info.head_dim)  # type: ignore[arg-type]
            out[(site, layer)] = p
        return out

    return run
