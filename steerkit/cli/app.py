"""The `steerkit` click group: the global options (--debug, --verbose) and the one-line error policy
(a SteerkitError, a bad option value or an out-of-memory error becomes one line on stderr and exit
code 2; a traceback only with --debug). The commands register themselves on `main` (cli/__init__.py
imports them)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from ..errors import SteerkitError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SteerkitError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except click.UsageError as e:  # a bad option value: one line too, naming the help
            if ctx.obj and ctx.obj.get("debug"):
                raise
            cmd = e.ctx.command_path if e.ctx is not None else ctx.command_path
            from .common import OptionError

            msg = e.message if isinstance(e, OptionError) else e.format_message()
            click.echo(f"error: {msg} (see `{cmd} --help`)", err=True)
            sys.exit(2)
        except (MemoryError, RuntimeError) as e:  # sizes the machine cannot hold: one line too
            if not _out_of_memory(e) or (ctx.obj and ctx.obj.get("debug")):
                raise
            why = (str(e).strip() or type(e).__name__).splitlines()[0][:120]
            click.echo(
                f"error: out of memory ({why}); ask for less (--batch-size, --seq-len, --max-batch-tokens, "
                "--oscillators) or use a smaller model",
                err=True,
            )
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: completed work is cached; run the same command again to resume", err=True)
            sys.exit(130)


def _out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return (
        isinstance(e, MemoryError)
        or type(e).__name__ == "OutOfMemoryError"
        or "can't allocate memory" in text
        or "out of memory" in text
    )


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log diagnostics (INFO level).")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """steerkit: capture, concept vectors, quality reports and causal tests for recurrent,
    hybrid and transformer language models."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    _quiet_libraries()


def _quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*falling back to its reference PyTorch.*")
    for name in ("transformers", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:  # transformers' own progress bars and notes
        from transformers.utils import logging as tlog  # noqa: PLC0415

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers missing is reported by the command
        pass
