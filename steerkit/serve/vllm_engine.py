"""The vLLM engine behind `steerkit serve --engine vllm`: the same requests, steering and per-token readouts
as the embedded engine, at serving-engine speed, driving vLLM in-process without forking it.

One thread owns a vLLM `LLMEngine` (in-process: VLLM_ENABLE_V1_MULTIPROCESSING=0; eager mode, which the
hooks need; prefix caching off, since a cache hit would skip the hooked forward). It adds requests as
they come (vLLM batches continuously), steps the engine, and after every step drains the readout rows
the worker extension kept (`vllm_worker.py`) and hands each request's new tokens and rows to the same
per-row bookkeeping the embedded engine uses (`generation.stream._Row`: text decoding, stop strings,
the one-step-late readout of each token). A cancelled or finished row is aborted in vLLM.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
from typing import Any

import torch

from ..errors import SteerkitError
from ..generation.stream import StreamRequest, _Row
from .engine import WorkQueue

log = logging.getLogger(__name__)


class VllmEngine(WorkQueue):
    """Requests carry `steerkit` settings (concepts, layers, mode, scale, readout) instead of tensors: the
    worker builds each edit from the vectors it loaded at start."""

    batched = True
    mode = "continuous"  # vLLM schedules continuously
    builds_edits_itself = True  # the worker builds each edit from the request's settings

    def __init__(self, ctx: Any, max_batch: int = 8, max_queue: int = 64, kv_cache_gb: float = 1.0,
                 dtype: str = "float32", model_path: str | None = None, max_model_len: int = 2048) -> None:  # fmt: skip
        super().__init__(max_batch, max_queue)
        self.ctx, self.kv_cache_gb, self.dtype = ctx, kv_cache_gb, dtype
        self.max_model_len = min(max_model_len, ctx.context_length or max_model_len)
        self.model_path = model_path or model_folder(ctx.lm)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.engine: Any = None

    # ---- start ---------------------------------------------------------------------------------------
    def build(self) -> None:
        """Create vLLM's engine with steerkit's worker extension; fail with one line where it cannot steer."""
        check_vllm()
        from vllm import EngineArgs, LLMEngine

        args = EngineArgs(
            model=self.model_path, tokenizer=self.model_path, dtype=self.dtype, enforce_eager=True,
            enable_prefix_caching=False, max_num_seqs=self.max_batch, seed=0,
            kv_cache_memory_bytes=int(self.kv_cache_gb * (1 << 30)),
            worker_extension_cls="steerkit.serve.vllm_worker.SteerkitWorkerExtension",
            max_model_len=self.max_model_len,
        )  # fmt: skip
        self.engine = LLMEngine.from_engine_args(args)
        info = self.engine.collective_rpc("steerkit_setup", args=(str(self.ctx.run), self.ctx.model_id))
        log.info("vLLM engine hooked: %s", info)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="steerkit-vllm", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._q.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the loop --------------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self.build()
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        live: dict[str, tuple[_Row, int]] = {}  # vLLM id -> (row, tokens already handed over)
        while not self._stop.is_set():
            block = not live
            try:
                while True:
                    item = self._q.get(timeout=0.05) if block else self._q.get_nowait()
                    block = False
                    if item is None:
                        break
                    if isinstance(item, tuple):
                        self._run_call(*item)
                        continue
                    rid = self._add(item)
                    if rid is not None:
                        live[rid] = (self._row(item), 0)
                    if len(live) >= self.max_batch:
                        break
            except queue.Empty:
                pass
            if not live:
                continue
            for rid, (row, _) in list(live.items()):
                if row.req.cancelled and not row.done:
                    row.finish("cancelled")
                if row.done:
                    self._end(rid, live)
            if not live:
                continue
            outs = self.engine.step()
            self.batches += 1
            rows_by_id = self.engine.collective_rpc("steerkit_drain")[0]
            for out in outs:
                if out.request_id not in live:
                    continue
                row, seen = live[out.request_id]
                new = list(out.outputs[0].token_ids)[seen:]
                live[out.request_id] = (row, seen + len(new))
                self._feed(row, new, rows_by_id.get(out.request_id, []))
                if row.done or out.finished:
                    if not row.done:
                        row.finish("length")
                    self._end(out.request_id, live)
        for rid, (row, _) in list(live.items()):
            row.finish("cancelled")
            self._end(rid, live)

    def _row(self, req: StreamRequest) -> _Row:
        row = _Row(req, self.ctx.lm.tokenizer, self.ctx.lm.tokenizer.eos_token_id, None)
        row.prompt_rows_left = len(req.prompt_ids) if req.readout_layer is not None else 0
        return row

    def _add(self, req: StreamRequest) -> str | None:
        from vllm import SamplingParams

        if req.cancelled:
            req.emit({"type": "finish", "reason": "cancelled", "prompt_tokens": len(req.prompt_ids),
                      "completion_tokens": 0})  # fmt: skip
            return None
        rid = "sk-" + secrets.token_hex(8)
        sk = dict(req.settings)
        sk["id"] = rid
        extra = (
            {"steerkit": sk}
            if (sk.get("concepts") or sk.get("directions") or sk.get("read_layer") is not None)
            else None
        )
        reads = req.readout_layer is not None
        params = SamplingParams(
            n=1, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k if req.top_k > 0 else -1,
            seed=req.seed if req.temperature > 0 else None, max_tokens=req.max_new + (1 if reads else 0),
            ignore_eos=False, skip_special_tokens=True, detokenize=False, extra_args=extra,
        )  # fmt: skip
        self.engine.add_request(rid, {"prompt_token_ids": list(req.prompt_ids)}, params)
        return rid

    def _feed(self, row: _Row, new: list[int], rows: list[list[float]]) -> None:
        """Hand a step's new tokens and readout rows to the row: the first prompt-length rows are the prompt's,
        then row j is the readout of generated token j (fed back the step after it was sampled)."""
        req = row.req
        if req.readout_layer is not None and rows:
            left = row.prompt_rows_left
            if left:
                head, rows = rows[:left], rows[left:]
                row.prompt_rows += head
                row.prompt_rows_left = left - len(head)
                if row.prompt_rows_left == 0 and req.prompt_readout:
                    toks = [{"token": row.tok.decode([t]), "id": t, "scores": s}
                            for t, s in zip(req.prompt_ids, row.prompt_rows, strict=True)]  # fmt: skip
                    req.emit({"type": "prompt", "tokens": toks})
            for sc in rows:  # the readout of the oldest token whose row is not in yet
                k = len(row.sent_ids) + len(row.pending)
                if k < len(row.tokens) and not row.done:
                    row.ready(row.tokens[k], sc)
        for t in new:
            row.accept(int(t))

    def _end(self, rid: str, live: dict[str, Any]) -> None:
        live.pop(rid, None)
        try:
            self.engine.abort_request([rid])
        except Exception:  # already finished inside vLLM
            pass
        self.engine.collective_rpc("steerkit_forget", args=([rid],))


def generate_rows(engine: VllmEngine, prompts: list[list[int]], seeds: list[int], settings: list[dict[str, Any]],
                  max_new: int, temperature: float) -> list[tuple[list[int], str]]:  # fmt: skip
    """Generate many rows through a started engine and wait for all: per row (its tokens without EOS, the
    finish reason). temperature 0: greedy; else vLLM's seeded sampler (seed per row)."""
    done = threading.Event()
    out: list[tuple[list[int], str]] = [([], "") for _ in prompts]
    left = [len(prompts)]
    lock = threading.Lock()

    def collect(i: int) -> Any:
        def emit(e: dict[str, Any]) -> None:
            if e["type"] == "delta":
                out[i][0].extend(int(t["id"]) for t in e["tokens"])
            elif e["type"] == "finish":
                out[i] = (out[i][0], e["reason"])
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        done.set()

        return emit

    for i, (p, seed, st) in enumerate(zip(prompts, seeds, settings, strict=True)):
        req = StreamRequest(list(p), max_new, collect(i), temperature=temperature, seed=seed, settings=dict(st))
        engine.submit(req)
    if prompts:
        done.wait()
    return out


def steer_eval_generator(lm: Any, run: Any, cv: Any, scale: str, kv_cache_gb: float = 1.0, max_batch: int = 64
                         ) -> tuple[Any, Any]:  # fmt: skip
    """(generate, close) for `steer-eval --engine vllm`: a started engine, and steer-eval's chunk generator
    over it (run_grid's `generate`): each row steered by its own direction (as numbers) at `layer`."""
    from .context import ServeContext

    ctx = ServeContext(lm, cv, run, str(lm.info.get("spec")), cv.layers[0])
    engine = VllmEngine(ctx, max_batch=max_batch, max_queue=1 << 30, kv_cache_gb=kv_cache_gb)
    engine.start()
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def generate(pids: list[list[int]], owners: list[int], seeds: list[int], layer: int, delta: torch.Tensor,
                 spec: Any) -> torch.Tensor:  # fmt: skip
        settings = [{"directions": {layer: d.tolist()}, "scale": scale} if layer >= 0 and bool(d.any()) else {}
                    for d in delta]  # fmt: skip
        temperature = 0.0 if spec.greedy else float(spec.temperature)
        rows = generate_rows(engine, [pids[o] for o in owners], seeds, settings, spec.max_new, temperature)
        out = torch.full((len(owners), spec.max_new), int(pad), dtype=torch.long)
        for i, (toks, reason) in enumerate(rows):
            out[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            if reason == "stop" and len(toks) < spec.max_new and tok.eos_token_id is not None:
                out[i, len(toks)] = int(tok.eos_token_id)  # trim() cuts at EOS, as after generate()
        return out

    return generate, engine.stop


def check_vllm() -> None:
    """One line, before anything starts, when this environment cannot run the vLLM engine."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] not in ("0", ""):
        raise SteerkitError("VLLM_ENABLE_V1_MULTIPROCESSING must be 0: steerkit drives vLLM in-process")
    if os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "0") not in ("0", ""):
        raise SteerkitError("VLLM_USE_V2_MODEL_RUNNER is set: steerkit's hooks need the V1 model runner")
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise SteerkitError("vLLM is not installed in this environment: `make vllm` builds .venv-vllm; run "
                            ".venv-vllm/bin/steerkit serve --engine vllm") from e  # fmt: skip


def model_folder(lm: Any) -> str:
    """A folder vLLM can load: the model's own local folder, or the zoo's cached safetensors copy."""
    p = lm.info.get("path")
    if p and os.path.isdir(str(p)):
        return str(p)
    raise SteerkitError(f"the vLLM engine needs the model as a local folder; {lm.info.get('spec')} has none "
                        "(pass -m with a model directory)")  # fmt: skip


__all__ = ["VllmEngine", "check_vllm", "generate_rows", "model_folder", "steer_eval_generator"]
