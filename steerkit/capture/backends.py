"""Alternative capture backends: the same batches through nnsight or transformer-lens.

They are cross-checks and a door for users of those ecosystems; the default `hooks` backend is
the fastest (the wrappers trace the same forward pass and, here, run the whole model). Each
runner implements `forward.Runner` and returns pooled (site, layer) -> tensor.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..errors import SteerkitError
from ..models.adapters import Adapter
from .forward import Batch, Pooled, Runner, Wanted
from .pooling import Pooling, pool

Unsupported = dict[tuple[str, int], str]  # (site, layer) -> why this backend cannot read it
BACKENDS = ("hooks", "nnsight", "lens")


def make_runner(
    backend: str, model: torch.nn.Module, tokenizer: Any, adapter: Adapter
) -> tuple[Runner | None, Unsupported]:
    """The runner for `backend` ('hooks' -> None: the engine's own `hooks_runner`) and the sites it
    cannot read (the engine lists them as skipped with the reason)."""
    if backend not in BACKENDS:
        raise ValueError(f"invalid backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "nnsight":
        return nnsight_runner(model, tokenizer, adapter), {}
    if backend == "lens":
        return lens_runner(model, tokenizer, adapter)
    return None, {}


def _pool_site(
    value: torch.Tensor,
    site: str,
    layer: int,
    model: torch.nn.Module,
    adapter: Adapter,
    mask: torch.Tensor,
    pooling: Pooling,
) -> torch.Tensor:
    """Pool one captured site value the way the hooks runner does (resid: as the next block reads it)."""
    if site == "resid":
        h = adapter.get_hidden(value) * adapter.output_scale(model, layer)
    else:
        h = value if value.dim() == 3 else value.view(mask.shape[0], mask.shape[1], -1)
    p = pool(h, mask, pooling).cpu()
    if site == "heads":
        info = adapter.block_info(model, layer)
        p = p.view(p.shape[0], info.n_heads, info.head_dim)  # type: ignore[arg-type]
    return p


def nnsight_runner(model: torch.nn.Module, tokenizer: Any, adapter: Adapter) -> Runner:
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
        inputs: dict[str, torch.Tensor], wanted: Wanted, adapter: Adapter, model: torch.nn.Module
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

    def run(batch: Batch, wanted: Wanted, last_layer: int, pooling: Pooling) -> Pooled:
        with warnings.catch_warnings():  # nnsight warns about submodules named `output` (RWKV)
            warnings.simplefilter("ignore", UserWarning)
            saved = _trace(batch.inputs(), wanted, adapter, model)
        return {w: _pool_site(v, w[0], w[1], model, adapter, batch.mask, pooling) for w, v in saved.items()}

    return run


def _site_module(model: torch.nn.Module, adapter: Adapter, site: str, layer: int) -> torch.nn.Module | None:
    """The module whose output (resid) or input (heads, mlp) holds `site` at block `layer`."""
    if site == "resid":
        return adapter.blocks(model)[layer]
    if site == "heads":
        return adapter.mixer_out_module(model, layer)
    return adapter.mlp_down_module(model, layer)


def lens_runner(model: torch.nn.Module, tokenizer: Any, adapter: Adapter) -> tuple[Runner, Unsupported]:
    """A runner that reads the same sites through a transformer-lens 4.x `TransformerBridge`.

    The bridge rewrites the module tree it wraps and switches attention to eager, so it is booted
    on a deep copy (the user's model is never touched; costs one more copy of the weights). Sites
    are found by module identity: the adapter names the module (block, mixer out-projection, MLP
    down-projection), and the bridge component wrapping that module supplies the hook point
    (`blocks.L.hook_out` for resid, `blocks.L.attn.o.hook_in` for heads, `blocks.L.mlp.out.hook_in`
    for mlp, or their family's equivalents). The forward stops after the last needed block
    (`stop_at_layer`). Sites the bridge has no hook point for (e.g. the out-projection input of
    Gated DeltaNet blocks, which transformer-lens re-implements) are returned as unsupported.
    """
    import copy
    import logging

    level = logging.getLogger("transformers").level  # importing/booting transformer_lens lowers it
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as e:
        raise SteerkitError("the lens backend needs transformer-lens: pip install 'steerkit[lens]'") from e
    finally:
        logging.getLogger("transformers").setLevel(level)

    family = str(getattr(model.config, "model_type", adapter.family))
    twin: Any = copy.deepcopy(model)
    if not getattr(twin.config, "architectures", None):  # models built from a config have none
        twin.config.architectures = [type(twin).__name__]
    # The bridge would reload the tokenizer from `name_or_path` to add BOS; it is never used here
    # (the engine passes token ids), so give it a copy that says BOS is already on.
    tok = copy.deepcopy(tokenizer)
    tok.init_kwargs.update(add_bos_token=True, name_or_path=getattr(tok, "name_or_path", "") or "local")
    targets: dict[tuple[str, int], int] = {}  # (site, layer) -> id of the module to read
    n_blocks = adapter.n_blocks(twin)
    for layer in range(n_blocks):
        for site in ("resid", "heads", "mlp"):
            info = adapter.block_info(twin, layer)
            if (site == "heads" and not info.n_heads) or (site == "mlp" and info.mlp_down is None):
                continue
            mod = _site_module(twin, adapter, site, layer)
            if mod is not None:
                targets[(site, layer)] = id(mod)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(
                getattr(model, "name_or_path", "") or family, hf_model=twin, tokenizer=tok
            )
    except (ValueError, NotImplementedError, KeyError) as e:
        raise SteerkitError(
            f"transformer-lens cannot bridge {family} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            "use --backend hooks or nnsight"
        ) from e
    finally:
        logging.getLogger("transformers").setLevel(level)
    bridge.eval()
    wrappers = {
        id(mod._original_component): mod
        for mod in twin.modules()
        if isinstance(getattr(mod, "_original_component", None), torch.nn.Module)
    }
    names = {id(hp): name for name, hp in bridge.hook_dict.items()}

    hook_names: dict[tuple[str, int], str] = {}
    unsupported: Unsupported = {}
    for (site, layer), target in targets.items():
        point = getattr(wrappers.get(target), "hook_out" if site == "resid" else "hook_in", None)
        name = names.get(id(point)) if point is not None else None
        if name is None:
            what = (
                "block output"
                if site == "resid"
                else "mixer out-projection input"
                if site == "heads"
                else "MLP down-projection input"
            )
            unsupported[(site, layer)] = f"transformer-lens has no hook point for the {what} of {family} block {layer}"
        else:
            hook_names[(site, layer)] = name

    def run(batch: Batch, wanted: Wanted, last_layer: int, pooling: Pooling) -> Pooled:
        by_name = {hook_names[w]: w for w in wanted}
        kwargs: dict[str, Any] = batch.inputs()
        ids, mask = kwargs.pop("input_ids"), batch.mask
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, cache = bridge.run_with_cache(
                ids.to(bridge.cfg.device),
                return_type=None,
                names_filter=list(by_name),
                stop_at_layer=last_layer + 1,
                use_cache=False,
                **kwargs,
            )
        return {w: _pool_site(cache[name], w[0], w[1], twin, adapter, mask, pooling) for name, w in by_name.items()}

    return run, unsupported
