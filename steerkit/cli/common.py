"""Options and helpers shared by CLI commands."""

from __future__ import annotations

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


def model_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--model, --trust-remote-code, --dtype, --device."""
    f = click.option("--device", default="cpu", show_default=True, help="Torch device (cpu, cuda, cuda:1, mps).")(f)
    f = click.option(
        "--dtype",
        type=click.Choice(["float32", "bfloat16", "float16"]),
        default=None,
        help="Weight dtype (default float32).",
    )(f)
    f = click.option("--trust-remote-code", is_flag=True, help="Allow custom modelling code from the model repo.")(f)
    f = click.option(
        "--model", "-m", default=None, help="Zoo alias, local HF dir, .gguf file or hub id (default: smollm2-135m)."
    )(f)
    return f
