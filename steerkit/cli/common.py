"""Options and helpers shared by CLI commands."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import click

_console: Any = None


def console() -> Any:
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=False)
    return _console


def device_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--device and --dtype, with the same meaning on every command that loads a model.

    The command receives them as one `placement` argument (`steerkit.models.loading.Placement`;
    load with `load(spec, **placement.load_kwargs())`), or as `device` and `dtype` arguments if
    its signature names those. An unusable device, or a dtype the device cannot run, is a one-line
    error (exit 2) when the model loads, before anything is written."""
    names = set(inspect.signature(f).parameters)

    @functools.wraps(f)
    def command(*args: Any, **kwargs: Any) -> Any:
        from ..models.loading import Placement

        placement = Placement(device=kwargs.pop("device"), dtype=kwargs.pop("dtype"))
        if "placement" in names:
            kwargs["placement"] = placement
        if "device" in names:
            kwargs["device"] = placement.device
        if "dtype" in names:
            kwargs["dtype"] = placement.dtype
        return f(*args, **kwargs)

    g: Callable[..., Any] = command
    g = click.option("--device", default="cpu", show_default=True, help="Torch device (cpu, cuda, cuda:1, mps).")(g)
    g = click.option(
        "--dtype",
        type=click.Choice(["float32", "bfloat16", "float16"]),
        default=None,
        help="Weight dtype (default float32); captured activations are pooled in float32 whatever it is.",
    )(g)
    return g


def model_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--model, --trust-remote-code, and `device_options` (--device, --dtype)."""
    f = device_options(f)
    f = click.option("--trust-remote-code", is_flag=True, help="Allow custom modelling code from the model repo.")(f)
    f = click.option(
        "--model", "-m", default=None, help="Zoo alias, local HF dir, .gguf file or hub id (default: smollm2-135m)."
    )(f)
    return f


class OptionError(click.BadParameter):
    """A bad option value whose message is complete (names the option); printed as one line."""


def _opt(param: click.Parameter | None) -> str:
    return param.opts[0] if param is not None and getattr(param, "opts", None) else "value"


class BlockSpecType(click.ParamType):
    """A block spec (12, -1, 0.5, 4:10, 10:-1, all; comma-separated), syntax-checked at parse time
    and resolved against the model's depth once it is loaded (`spec.resolve(n_blocks)`)."""

    name = "BLOCKS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ..capture.layers import BlockSpec
        from ..errors import LayerSpecError

        try:
            return BlockSpec.parse(value)
        except LayerSpecError as e:
            raise OptionError(f"{_opt(param)} {value}: {e}", ctx, param) from e


class PoolingType(click.ParamType):
    """last | mean | mean_after:N -> a `Pooling`."""

    name = "POOLING"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ..capture.pooling import parse_pooling

        try:
            return parse_pooling(value)
        except ValueError as e:
            raise OptionError(f"{_opt(param)}: {e}", ctx, param) from e


class SitesType(click.ParamType):
    """Comma-separated capture sites -> a tuple (resid, heads, mlp)."""

    name = "SITES"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ..capture.engine import check_sites

        sites = tuple(s.strip() for s in value.split(",") if s.strip()) if isinstance(value, str) else tuple(value)
        try:
            check_sites(sites, what=_opt(param))
        except ValueError as e:
            raise OptionError(str(e), ctx, param) from e
        return sites


BLOCKS = BlockSpecType()
POOLING = PoolingType()
SITES = SitesType()
