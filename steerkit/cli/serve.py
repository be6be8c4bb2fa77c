"""`steerkit serve`: an OpenAI-compatible server that steers per request and streams per-token concept
readouts (docs/serve.md)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from .app import main
from .common import POSITIVE_INT, device_options

if TYPE_CHECKING:
    from ..models.loading import Placement


@main.command()
@click.option("--vectors", "vectors_dir", default=None, type=click.Path(),
              help="A run folder from extract (default: the latest extract run).")  # fmt: skip
@click.option("--model", "-m", default=None, help="Model spec (default: the one the vectors were made with).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", default=8000, type=click.IntRange(0, 65535), show_default=True, help="Port (0: any free).")
@click.option("--max-batch", default=8, type=POSITIVE_INT, show_default=True, help="Requests decoded together.")
@click.option("--max-queue", default=64, type=POSITIVE_INT, show_default=True,
              help="Requests waiting beyond the running batch before new ones get 503.")  # fmt: skip
@click.option("--max-new-tokens-limit", default=1024, type=POSITIVE_INT, show_default=True,
              help="The largest max_tokens a request may ask for.")  # fmt: skip
@click.option("--api-key", default=None, envvar="STEERKIT_API_KEY",
              help="Require 'Authorization: Bearer KEY' on every API request (or set STEERKIT_API_KEY).")  # fmt: skip
@click.option("--engine", type=click.Choice(["embedded", "vllm"]), default="embedded", show_default=True,
              help="embedded: every family steerkit supports; vllm: vLLM in-process (Llama/Qwen-class models; "
              "needs the .venv-vllm environment from `make vllm`).")  # fmt: skip
@click.option("--kv-cache-gb", default=1.0, type=click.FloatRange(0.05, 1024), show_default=True,
              help="vLLM engine: KV cache size in GiB.")  # fmt: skip
@click.option("--max-model-len", default=2048, type=POSITIVE_INT, show_default=True,
              help="vLLM engine: the longest prompt + completion, in tokens.")  # fmt: skip
@click.option("--shutdown-timeout", default=10.0, type=click.FloatRange(0, 600), show_default=True,
              help="Seconds in-flight requests get to finish after SIGTERM before they are cancelled.")  # fmt: skip
@device_options
def serve(
    vectors_dir: str | None, model: str | None, host: str, port: int, max_batch: int, max_queue: int,
    max_new_tokens_limit: int, api_key: str | None, engine: str, kv_cache_gb: float, max_model_len: int,
    shutdown_timeout: float, placement: Placement,
) -> None:  # fmt: skip
    """Serve the model with steering and per-token readouts over an OpenAI-compatible HTTP API."""
    import socket

    import uvicorn

    _Server = _server_class()

    from ..errors import SteerkitError
    from ..serve.app import create_app
    from ..serve.context import Limits, load_context
    from ..serve.engine import EmbeddedEngine

    if api_key is not None and not api_key.strip():
        raise SteerkitError("--api-key is empty; give a key or leave it out")
    if engine == "vllm":
        from ..serve.vllm_engine import check_vllm

        check_vllm()  # one line, before the model loads, when vLLM is missing
    limits = Limits(max_new_tokens=max_new_tokens_limit, max_batch=max_batch, max_queue=max_queue)
    ctx = load_context(vectors_dir, model, placement.load_kwargs(), limits, api_key)
    if engine == "vllm":
        from ..serve.vllm_engine import VllmEngine

        runner: Any = VllmEngine(ctx, max_batch=max_batch, max_queue=max_queue, kv_cache_gb=kv_cache_gb,
                                 dtype="bfloat16" if placement.dtype == "bfloat16" else "float32",
                                 max_model_len=max_model_len)  # fmt: skip
        how = f"vLLM in-process (eager, KV cache {kv_cache_gb:g} GiB), continuous batching"
    else:
        runner = EmbeddedEngine(ctx.lm, max_batch=max_batch, max_queue=max_queue)
        how = f"embedded, {runner.mode}"
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        raise SteerkitError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port") from e
    bound = sock.getsockname()[1]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{bound}"
    click.echo(f"steerkit serve: {ctx.model_id}, {len(ctx.vectors.concepts)} concepts (layers "
               f"{','.join(map(str, ctx.vectors.layers))}; readout layer {ctx.default_layer}) from {ctx.run}")  # fmt: skip
    click.echo(f"API  {url}/v1  (OpenAI-compatible; {'API key required' if api_key else 'no API key'})")
    click.echo(f"engine: {how}, max batch {max_batch}, queue {max_queue}")
    click.echo(f"page {url}/")
    config = uvicorn.Config(create_app(ctx, runner), log_level=os.environ.get("STEERKIT_LOG_LEVEL", "warning"),
                            timeout_graceful_shutdown=int(shutdown_timeout) or None, lifespan="on")  # fmt: skip
    server = _Server(config)
    server.run(sockets=[sock])
    click.echo("steerkit serve: stopped")


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but a SIGTERM / SIGINT after its graceful shutdown ends the command with exit
        code 0 (uvicorn re-raises the signal, which would kill the process with -15)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    return Server
