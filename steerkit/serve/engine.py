"""The engine seam and the embedded engine.

An engine takes generation requests (a `StreamRequest`: prompt ids, sampling, steering edit, readout,
an `emit` callback for its events) and runs them; `cancel()` on a request frees its row at the next
step. Work that must not overlap generation (reading a text, which runs the same model) goes through
`call`. Any engine with `start`, `stop`, `submit`, `call` and `batched` plugs in behind the server.

The embedded engine: one worker thread owns the model. It takes the first waiting request, waits a
short window (at most 50 ms, and only while fewer requests have come than there were clients at the
end of the last batch) for others (up to --max-batch), and decodes them as one left-padded batch with per-row
steering, sampling and readout (`generation.stream.run_stream`); requests that arrive meanwhile form
the next batch. Families whose cached generation is wrong under left padding (the apparatus check at
start) run one request at a time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

import torch

from ..generation.stream import StreamRequest, run_stream

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than --max-queue allows."""


class Engine(Protocol):
    batched: bool

    def start(self) -> None: ...
    def stop(self, timeout: float = 10.0) -> None: ...
    def submit(self, request: StreamRequest) -> None: ...
    def call(self, fn: Callable[[], Any]) -> Future[Any]: ...


class WorkQueue:
    """What both engines share: the bounded queue of waiting requests and calls (503 past max_queue), the
    count of finish reasons, and running a call on the engine's thread."""

    def __init__(self, max_batch: int, max_queue: int) -> None:
        self.max_batch, self.max_queue = max_batch, max_queue
        self._q: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.batches = 0  # batches (embedded) or steps (vLLM) run, for tests and the benchmark
        self.finished: Counter[str] = Counter()  # finish reasons so far (stop, length, cancelled, error)

    def _room(self) -> None:
        if self._stop.is_set():
            raise QueueFull("the server is shutting down")
        if self._q.qsize() >= self.max_queue:
            raise QueueFull(f"{self._q.qsize()} requests are waiting (--max-queue {self.max_queue})")

    def submit(self, request: StreamRequest) -> None:
        self._room()
        emit = request.emit

        def counted(e: dict[str, Any]) -> None:
            if e["type"] == "finish":
                self.finished[e["reason"]] += 1
            emit(e)

        request.emit = counted
        self._q.put(request)

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            self._room()
        except QueueFull as e:
            fut.set_exception(e)
            return fut
        self._q.put((fn, fut))
        return fut

    @property
    def waiting(self) -> int:
        return self._q.qsize()

    @staticmethod
    def _run_call(fn: Callable[[], Any], fut: Future[Any]) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn())
        except BaseException as e:  # handed to the caller
            fut.set_exception(e)


class EmbeddedEngine(WorkQueue):
    """Generation in this process, on the model steerkit loaded (every family steerkit supports)."""

    def __init__(self, lm: Any, max_batch: int = 8, max_queue: int = 64, window_s: float = 0.05,
                 batched: bool | None = None) -> None:  # fmt: skip
        super().__init__(max_batch, max_queue)
        self.lm, self.window_s = lm, window_s
        self._clients = 1  # requests expected for the next batch (see _loop)
        self._running: list[StreamRequest] = []
        self.batched = self._check_batching() if batched is None else batched

    # ---- apparatus check ---------------------------------------------------------------------------
    def _check_batching(self) -> bool:
        """True when a left-padded batch generates exactly what one request alone does (greedy, two
        prompt lengths, six tokens); recurrent families are never batched."""
        if self.lm.adapter.recurrent:
            return False
        tok = self.lm.tokenizer
        prompts = [list(tok("The meeting began")["input_ids"]), list(tok("Hi")["input_ids"])]
        prompts = [p for p in prompts if p] or [[0]]

        def run(batch: list[list[int]]) -> list[list[int]]:
            out: list[list[int]] = [[] for _ in batch]

            def keep(i: int) -> Callable[[dict[str, Any]], None]:
                def emit(e: dict[str, Any]) -> None:
                    if e["type"] == "delta":
                        out[i].extend(t["id"] for t in e["tokens"])

                return emit

            reqs = [StreamRequest(p, 6, keep(i)) for i, p in enumerate(batch)]
            run_stream(self.lm, reqs, batched=True)
            return out

        alone = [run([p])[0] for p in prompts]
        together = run(prompts)
        same = alone == together
        if not same:
            log.warning("%s: batched generation differs from one request at a time; serving one at a time",
                        self.lm.info.get("spec", "model"))  # fmt: skip
        return same

    # ---- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="steerkit-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking work; cancel waiting and running rows; wait for the worker at most `timeout` s."""
        self._stop.set()
        for r in list(self._running):
            r.cancel()
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, StreamRequest):
                item.emit({"type": "finish", "reason": "cancelled", "prompt_tokens": len(item.prompt_ids),
                           "completion_tokens": 0})  # fmt: skip
            elif isinstance(item, tuple):
                item[1].cancel()
        self._q.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the worker ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop.is_set():
            item = self._q.get()
            if item is None:
                break
            if isinstance(item, tuple):
                self._run_call(*item)
                continue
            batch = [item]
            # Wait (at most window_s) until as many requests have come as there were clients at the end of
            # the last batch (its rows, plus the requests that waited meanwhile): closed-loop clients send
            # their next request right after their last one finished, a few ms apart, and a batch started
            # without them leaves them waiting a whole batch. One client: no wait.
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                wait = deadline - time.monotonic() if len(batch) < self._clients else 0.0
                try:
                    nxt = self._q.get(timeout=wait) if wait > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None or isinstance(nxt, tuple):
                    self._q.put(nxt)  # calls and the stop marker wait for the batch
                    break
                batch.append(nxt)
            self._running = batch
            try:
                run_stream(self.lm, batch, batched=self.batched)
                self.batches += 1
            except Exception:
                log.exception("generation failed for a batch of %d", len(batch))
            finally:
                self._running = []
                self._clients = min(self.max_batch, len(batch) + self._q.qsize())
