"""The `steerkit` click group: the global options (--debug, --verbose) and the one-line error policy
(a SteerkitError, a bad option value or an out-of-memory error becomes one line on stderr and exit
code 2; a traceback only with --debug). The commands register themselves on `main` (cli/__init__.py
imports them)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from ..errors import SteerkitError

_err: dict[str, Any] = {"stream": None, "label": ""}  # where error lines go, and "rank R of N: " under torchrun


def _fail(msg: str, code: int) -> None:
    """One error line (naming the rank in a distributed run) on the real stderr, then exit."""
    click.echo(f"error: {_err['label']}{msg}", err=True, file=_err["stream"])
    sys.exit(code)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        from .. import dist

        if not dist.launched():
            return self._invoke(ctx)
        return _distributed(lambda: self._invoke(ctx))

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SteerkitError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _fail(str(e), 2)
        except click.UsageError as e:  # a bad option value: one line too, naming the help
            if ctx.obj and ctx.obj.get("debug"):
                raise
            cmd = e.ctx.command_path if e.ctx is not None else ctx.command_path
            from .common import OptionError

            msg = e.message if isinstance(e, OptionError) else e.format_message()
            _fail(f"{msg} (see `{cmd} --help`)", 2)
        except (MemoryError, RuntimeError) as e:  # sizes the machine cannot hold: one line too
            if not _out_of_memory(e) or (ctx.obj and ctx.obj.get("debug")):
                raise
            why = (str(e).strip() or type(e).__name__).splitlines()[0][:120]
            _fail(
                f"out of memory ({why}); ask for less (--batch-size, --seq-len, --max-batch-tokens, "
                "--oscillators) or use a smaller model",
                2,
            )
        except KeyboardInterrupt:
            click.echo("interrupted: completed work is cached; run the same command again to resume", err=True)
            sys.exit(130)


def _distributed(run: Callable[[], Any]) -> Any:
    """Run a command as one rank of a torchrun launch: join the process group (with a timeout on
    collectives), keep the ranks other than 0 quiet (their output goes to /dev/null; an error still
    prints one line naming the rank), leave the group at the end. Any failure exits non-zero, so
    torchrun stops the whole launch."""
    import os
    import time

    from .. import dist

    t0 = time.perf_counter()
    rank, size = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
    _err["stream"], _err["label"] = sys.stderr, f"rank {rank} of {size}: "
    try:
        dist.init()
    except Exception as e:  # a bad rendezvous: say which rank could not join
        _fail(f"could not join the process group ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})", 1)
    quiet = not dist.is_main() and "--debug" not in sys.argv
    saved = sys.stdout, sys.stderr
    if quiet:
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115  (closed below)
    try:
        result = run()
    except Exception as e:
        if "--debug" in sys.argv:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        _fail(f"{type(e).__name__}: {first}" if first else type(e).__name__, 1)
    finally:
        if quiet:
            devnull = sys.stdout
            sys.stdout, sys.stderr = saved
            devnull.close()
    _record_comm(time.perf_counter() - t0)
    dist.barrier()  # leave together: a rank that tore down while rank 0 still wrote was aborted by gloo
    dist.teardown()
    # Every file is written (atomically) and the group is left: end the process here. gloo's threads could
    # still abort the interpreter's own shutdown ("terminate called without an active exception", about 1
    # launch in 25 on a loaded CPU), turning a finished run into a failed launch.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
    return result  # unreachable; for the type checker


def _record_comm(wall: float) -> None:
    """STEERKIT_DIST_STATS=FILE: each rank appends {rank, wall_s, comm_s} (benchmarks/distributed.py)."""
    import json
    import os

    from .. import dist

    path = os.environ.get("STEERKIT_DIST_STATS")
    if path:
        line = {"rank": dist.world().rank, "wall_s": round(wall, 4), "comm_s": round(dist.comm_seconds(), 4)}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


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
