"""The ASGI app (FastAPI on Starlette): OpenAI-compatible routes with per-request steering and per-token
readouts, /v1/read, /v1/concepts and the web page. Every error is an OpenAI-style JSON body; nothing a
client sends can stop the server from serving the next request."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..generation.stream import StreamRequest
from .context import ServeContext
from .engine import Engine, QueueFull
from .jobs import Job, parse_job
from .requests import ApiError, bad, parse_json, parse_readout

log = logging.getLogger(__name__)
OPEN = {"/", "/health"}  # no API key needed (the page asks for one when the API answers 401)


def error_response(e: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status == 503 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def create_app(ctx: ServeContext, engine: Engine) -> FastAPI:
    engine_builds_edits = not getattr(engine, "builds_edits_itself", False)  # the vLLM worker builds its own

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    app = FastAPI(title="steerkit serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        msg = f"no route {request.method} {request.url.path}; see GET /v1/models, /v1/concepts and docs/serve.md"
        if e.status_code == 405:
            msg = f"{request.method} is not allowed on {request.url.path}"
        code = "not_found" if e.status_code == 404 else "method_not_allowed" if e.status_code == 405 else None
        return error_response(ApiError(e.status_code, msg, None, code))

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": {"message": f"internal error ({type(e).__name__}); the server keeps serving",
                                       "type": "server_error", "param": None, "code": None}}, status_code=500)  # fmt: skip

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        if ctx.api_key and request.url.path not in OPEN:
            got = request.headers.get("authorization", "")
            if not secrets.compare_digest(got.encode(), f"Bearer {ctx.api_key}".encode()):
                return error_response(ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                               None, "invalid_api_key"))  # fmt: skip
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > ctx.limits.max_body_bytes:
            return error_response(ApiError(413, f"the body has {size} bytes; the limit is "
                                                f"{ctx.limits.max_body_bytes}", None, "body_too_large"))  # fmt: skip
        return await call_next(request)

    async def body_of(request: Request) -> dict[str, Any]:
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > ctx.limits.max_body_bytes:
                raise ApiError(413, f"the body is over the limit of {ctx.limits.max_body_bytes} bytes", None,
                               "body_too_large")  # fmt: skip
        return parse_json(bytes(raw))

    # ---- plain routes ------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": ctx.model_id, "concepts": len(ctx.vectors.concepts),
                "batched": engine.batched, "engine": engine.mode}  # fmt: skip

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": ctx.model_id, "object": "model", "created": 0,
                                            "owned_by": "steerkit", "run": str(ctx.run)}]}  # fmt: skip

    @app.get("/v1/concepts")
    async def concepts() -> dict[str, Any]:
        return ctx.describe_concepts()

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("steerkit.serve").joinpath("page.html").read_text(encoding="utf-8"))

    @app.post("/v1/read")
    async def read(request: Request) -> dict[str, Any]:
        from ..steering import read_tokens

        body = await body_of(request)
        unknown = set(body) - {"text", "concepts", "layer", "model"}
        if unknown:
            raise bad(f"unknown field '{sorted(unknown)[0]}'; /v1/read takes text, concepts, layer", sorted(unknown)[0])
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise bad("'text' is required: a non-empty string", "text", "invalid_type" if not isinstance(text, str)
                      else "empty_prompt")  # fmt: skip
        spec = parse_readout(ctx, {"concepts": body.get("concepts", "all"), "layer": body.get("layer")}, "read")
        assert spec is not None
        try:
            r = await asyncio.wrap_future(engine.call(lambda: read_tokens(ctx.lm, ctx.vectors, text, spec.layer)))
        except QueueFull as e:
            raise ApiError(503, f"server busy: {e}; retry shortly", None, "queue_full") from e
        scores, pooled = r["scores"][:, spec.idx], r["pooled"][spec.idx]
        rows = [{"token": t, "scores": [float(x) for x in row]} for t, row in zip(r["tokens"], scores, strict=True)]
        return {"readout": {**spec.header(), "tokens": rows},
                "pooled": {c: float(x) for c, x in zip(spec.concepts, pooled, strict=True)}}  # fmt: skip

    # ---- generation --------------------------------------------------------------------------------
    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Any:
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Any:
        return await generate(request, chat=True)

    async def generate(request: Request, chat: bool) -> Any:
        body = await body_of(request)
        job = parse_job(ctx, body, chat)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        req = StreamRequest(
            prompt_ids=job.prompt_ids, max_new=job.max_tokens, temperature=job.temperature, top_p=job.top_p,
            top_k=job.top_k, seed=job.seed, stop=job.stop,
            edit=job.steer.edit(ctx.vectors) if job.steer is not None and engine_builds_edits else None,
            readout_layer=job.readout.layer if job.readout else None,
            score=ctx.reader(job.readout.layer, job.readout.idx) if job.readout else None,
            prompt_readout=bool(job.readout and job.readout.prompt),
            emit=lambda e: _post(loop, events, e),
        )  # fmt: skip
        req.settings = {
            **(job.steer.settings() if job.steer else {}),
            **({"read_layer": job.readout.layer, "read_idx": job.readout.idx} if job.readout else {}),
        }
        try:
            engine.submit(req)
        except QueueFull as e:
            raise ApiError(503, f"server busy: {e}; retry shortly", None, "queue_full") from e
        shape = Shape(ctx.model_id, chat, job)
        if job.stream:
            return StreamingResponse(stream(request, req, events, shape), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
        text, toks, prompt_rows, fin = "", [], None, {}
        try:
            while True:
                ev = await next_event(request, req, events)
                if ev is None:
                    return Response(status_code=499)
                if ev["type"] == "prompt":
                    prompt_rows = ev["tokens"]
                elif ev["type"] == "delta":
                    text += ev["text"]
                    toks += ev["tokens"]
                else:
                    fin = ev
                    break
        finally:
            req.cancel()  # no-op when finished; frees the row when the handler is cancelled
        if fin.get("reason") == "error":
            raise RuntimeError("generation failed; see the server log")
        return shape.full(text, toks, prompt_rows, fin)

    return app


def _post(loop: asyncio.AbstractEventLoop, events: asyncio.Queue[dict[str, Any]], e: dict[str, Any]) -> None:
    """Hand an event from the engine's thread to the request's queue (dropped once the loop is closed)."""
    try:
        loop.call_soon_threadsafe(events.put_nowait, e)
    except RuntimeError:
        pass


async def next_event(request: Request, req: StreamRequest, events: asyncio.Queue[dict[str, Any]]) -> Any:
    """The next event of req, or None when the client went away (then the row is cancelled)."""
    while True:
        try:
            return await asyncio.wait_for(events.get(), timeout=0.5)
        except TimeoutError:
            if await request.is_disconnected():
                req.cancel()
                return None


async def stream(request: Request, req: StreamRequest, events: asyncio.Queue[dict[str, Any]],
                 shape: Shape) -> AsyncIterator[bytes]:  # fmt: skip
    """Server-sent events: one chunk per delta, carrying its tokens' readout rows; then [DONE]."""
    finished = False
    try:
        first = True
        prompt_rows = None
        while True:
            e = await next_event(request, req, events)
            if e is None:
                return
            if e["type"] == "prompt":
                prompt_rows = e["tokens"]
                continue
            if e["type"] == "delta":
                yield sse(shape.chunk(e["text"], e["tokens"], None, first, prompt_rows))
                first, prompt_rows = False, None
                continue
            finished = True
            if e["reason"] == "error":
                yield sse({"error": {"message": "generation failed; see the server log", "type": "server_error",
                                     "param": None, "code": None}})  # fmt: skip
            else:
                yield sse(shape.chunk("", [], e["reason"], first, prompt_rows))
                if shape.job.include_usage:
                    yield sse({**shape.head(), "choices": [], "usage": usage(e)})
            yield b"data: [DONE]\n\n"
            return
    finally:
        if not finished:
            req.cancel()  # the client disconnected: free the row


def _row(t: dict[str, Any]) -> dict[str, Any]:
    return {"token": t["token"], "id": t["id"], "scores": t["scores"]}


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def usage(fin: dict[str, Any]) -> dict[str, int]:
    p, c = int(fin.get("prompt_tokens", 0)), int(fin.get("completion_tokens", 0))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


class Shape:
    """The OpenAI response and chunk shapes for one request (completion or chat)."""

    def __init__(self, model: str, chat: bool, job: Job) -> None:
        self.model, self.chat, self.job = model, chat, job
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())

    def head(self) -> dict[str, Any]:
        obj = ("chat.completion.chunk" if self.chat else "text_completion") if self.job.stream else (
            "chat.completion" if self.chat else "text_completion")  # fmt: skip
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def readout(self, toks: list[dict[str, Any]], prompt_rows: Any) -> dict[str, Any] | None:
        if self.job.readout is None:
            return None
        out = {**self.job.readout.header(), "tokens": [_row(t) for t in toks]}
        if prompt_rows is not None:
            out["prompt"] = [_row(t) for t in prompt_rows]
        return out

    def chunk(self, text: str, toks: list[dict[str, Any]], finish: str | None, first: bool, prompt_rows: Any
              ) -> dict[str, Any]:  # fmt: skip
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if self.chat:
            choice["delta"] = {"role": "assistant", "content": text} if first else {"content": text} if text else {}
        else:
            choice["text"], choice["logprobs"] = text, None
        ro = self.readout(toks, prompt_rows)
        if ro is not None:
            choice["readout"] = ro
        return {**self.head(), "choices": [choice]}

    def full(self, text: str, toks: list[dict[str, Any]], prompt_rows: Any, fin: dict[str, Any]) -> dict[str, Any]:
        reason = fin.get("reason", "stop")
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason if reason in ("stop", "length") else "stop"}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"], choice["logprobs"] = text, None
        ro = self.readout(toks, prompt_rows)
        if ro is not None:
            choice["readout"] = ro
        return {**self.head(), "choices": [choice], "usage": usage(fin)}
