"""Options and helpers shared by CLI commands."""

from __future__ import annotations

import functools
import inspect
import math
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
    """--device, --dtype, --device-map, --max-memory and --offload-folder, with the same meaning on
    every command that loads a model (docs/scale.md).

    The command receives them as one `placement` argument (`steerkit.models.loading.Placement`;
    load with `load(spec, **placement.load_kwargs())`), or as `device` and `dtype` arguments if
    its signature names those (such a command refuses --device-map). An unusable device, a dtype
    the device cannot run or a bad device map is a one-line error (exit 2) when the model loads,
    before anything is written."""
    names = set(inspect.signature(f).parameters)

    @functools.wraps(f)
    def command(*args: Any, **kwargs: Any) -> Any:
        from ..dist import local_device
        from ..errors import ModelLoadError
        from ..models.loading import Placement

        mapping = {k: kwargs.pop(k) for k in ("device_map", "max_memory", "offload_folder")}
        kwargs["device"] = local_device(kwargs["device"])  # under torchrun: cuda -> cuda:LOCAL_RANK
        try:
            placement = Placement(device=kwargs.pop("device"), dtype=kwargs.pop("dtype"), **mapping)
        except ValueError as e:
            raise ModelLoadError(str(e)) from e
        if "placement" not in names and placement.device_map is not None:
            raise ModelLoadError("this command does not take --device-map yet; leave it out")
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
    g = click.option(
        "--device-map",
        default=None,
        help="Shard / offload a model too large for one device: auto | balanced | balanced_low_0 | sequential "
        "(accelerate plans it) or FILE.json {module: device, 'cpu' or 'disk'} (docs/scale.md).",
    )(g)
    g = click.option(
        "--max-memory",
        default=None,
        help="Memory per device for --device-map auto etc., e.g. 0=20GiB,1=20GiB,cpu=60GiB.",
    )(g)
    g = click.option(
        "--offload-folder",
        default=None,
        type=click.Path(file_okay=False),
        help="Folder for disk-offloaded weights (default: $STEERKIT_CACHE/offload).",
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


class BoundedFloat(click.ParamType):
    """A finite float (NaN and inf refused at parse time, like any other bad value), optionally
    within bounds: low/high with low_open/high_open for strict inequalities."""

    name = "FLOAT"

    def __init__(
        self, low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False
    ) -> None:
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def describe(self) -> str:
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            return f"a number in {'(' if self.low_open else '['}{lo:g}, {hi:g}{')' if self.high_open else ']'}"
        if lo is not None:
            return f"a finite number {'>' if self.low_open else '>='} {lo:g}"
        if hi is not None:
            return f"a finite number {'<' if self.high_open else '<='} {hi:g}"
        return "a finite number"

    def ok(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return self.high is None or (x < self.high if self.high_open else x <= self.high)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            if isinstance(value, bool):
                raise ValueError
            x = float(value) if isinstance(value, int | float) else float(str(value).strip())
        except (ValueError, OverflowError) as e:
            raise OptionError(f"{_opt(param)} must be {self.describe()}, got {value!r}", ctx, param) from e
        if not self.ok(x):
            raise OptionError(f"{_opt(param)} must be {self.describe()}, got {value}", ctx, param)
        return x


class BoundedInt(click.ParamType):
    """An integer, optionally within [low, high]; '1.5', 'nan' and '' are refused."""

    name = "INTEGER"

    def __init__(self, low: int | None = None, high: int | None = None) -> None:
        self.low, self.high = low, high

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"an integer in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"an integer >= {self.low}"
        return f"an integer <= {self.high}" if self.high is not None else "an integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            if isinstance(value, bool) or isinstance(value, float):
                raise ValueError
            x = value if isinstance(value, int) else int(str(value).strip(), 10)
        except ValueError as e:
            raise OptionError(f"{_opt(param)} must be {self.describe()}, got {value!r}", ctx, param) from e
        if (self.low is not None and x < self.low) or (self.high is not None and x > self.high):
            raise OptionError(f"{_opt(param)} must be {self.describe()}, got {x}", ctx, param)
        return x


FINITE_FLOAT = BoundedFloat()
POSITIVE_FLOAT = BoundedFloat(0.0, low_open=True)
NONNEG_FLOAT = BoundedFloat(0.0)
UNIT_FLOAT = BoundedFloat(0.0, 1.0)  # [0, 1]
OPEN_UNIT_FLOAT = BoundedFloat(0.0, 1.0, low_open=True, high_open=True)  # (0, 1)
POSITIVE_INT = BoundedInt(1)
NONNEG_INT = BoundedInt(0)
SEED = BoundedInt(0, 2**32 - 1)  # numpy's seed range


def guard_floats(group: click.Group) -> None:
    """Give every plain float option of every command the finite check (NaN / inf are bad values
    everywhere); options with their own BoundedFloat keep it."""
    for cmd in group.commands.values():
        if isinstance(cmd, click.Group):
            guard_floats(cmd)
            continue
        for p in cmd.params:
            if isinstance(p.type, click.types.FloatParamType):
                p.type = FINITE_FLOAT
