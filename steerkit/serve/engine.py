"""The engine seam and the embedded engine.

An engine takes generation requests (a `StreamRequest`: prompt ids, sampling, steering edit, readout,
an `emit` callback for its events) and runs them; `cancel()` on a request frees its row at the next
step. Work that must not overlap generation (reading a text, which runs the same model) goes through
`call`. Any engine with `start`, `stop`, `submit`, `call` and `batched` plugs in behind the server.

The embedded engine: one worker thread owns the model. Families whose KV cache can take rows in and out
(plain full attention: Llama, Qwen, GPT-2, GPT-NeoX; `generation.continuous.supports`) batch
continuously: requests that arrive while others decode are prefilled and join the running batch at the
next step, and each leaves it as soon as it finishes (`generation.continuous.Decoder`, up to
--max-batch rows). Other families (recurrent, hybrid, sliding-window caches) run whole batches: the
worker takes the first waiting request, waits a short window (at most 50 ms, and only while fewer
requests have come than there were clients at the end of the last batch) for others, and decodes them
as one left-padded batch (`generation.stream.run_stream`). Either way each row has its own steering,
sampling and readout. An apparatus check at start confirms that batched generation equals one request
alone (continuous: with requests joining mid-way); a family that fails it runs one request at a time.
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

from ..generation.continuous import Decoder, run_continuous, supports
from ..generation.stream import StreamRequest, run_stream

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than --max-queue allows."""


class Engine(Protocol):
    batched: bool

    @property
    def mode(self) -> str: ...  # continuous | batched | one at a time

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
        self.batches = 0  # batches (embedded) or steps (vLLM and continuous embedded) run, for tests and the benchmark
        self.peak = 0  # the most rows decoded in one forward so far
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
                 batched: bool | None = None, continuous: bool | None = None) -> None:  # fmt: skip
        """batched / continuous None: decided by the apparatus check; continuous needs batched."""
        super().__init__(max_batch, max_queue)
        self.lm, self.window_s = lm, window_s
        self._clients = 1  # requests expected for the next batch (see _loop_batches)
        self._running: list[StreamRequest] = []
        self.batched = self._check_batching() if batched is None else batched
        if not self.batched:
            continuous = False
        self.continuous = self._check_continuous() if continuous is None else continuous

    @property
    def mode(self) -> str:
        """continuous | batched | one at a time."""
        return "continuous" if self.continuous else ("batched" if self.batched else "one at a time")

    # ---- apparatus check ---------------------------------------------------------------------------
    def _check_prompts(self) -> list[list[int]]:
        tok = self.lm.tokenizer
        prompts = [list(tok(t)["input_ids"]) for t in ("The meeting began", "Hi", "It was late at night and")]
        return [p for p in prompts if p] or [[0]]

    def _greedy(self, prompts: list[list[int]], how: Callable[[list[StreamRequest]], Any]) -> list[list[int]]:
        """The greedy tokens (six per prompt) of `how` run on one request per prompt."""
        out: list[list[int]] = [[] for _ in prompts]

        def keep(i: int) -> Callable[[dict[str, Any]], None]:
            def emit(e: dict[str, Any]) -> None:
                if e["type"] == "delta":
                    out[i].extend(t["id"] for t in e["tokens"])

            return emit

        how([StreamRequest(p, 6, keep(i)) for i, p in enumerate(prompts)])
        return out

    def _alone(self, prompts: list[list[int]]) -> list[list[int]]:
        return [self._greedy([p], lambda r: run_stream(self.lm, r, batched=True))[0] for p in prompts]

    def _check_batching(self) -> bool:
        """True when a left-padded batch generates exactly what one request alone does (greedy, three
        prompt lengths, six tokens); recurrent families are never batched."""
        if self.lm.adapter.recurrent:
            return False
        prompts = self._check_prompts()
        same = self._alone(prompts) == self._greedy(prompts, lambda r: run_stream(self.lm, r, batched=True))
        if not same:
            log.warning("%s: batched generation differs from one request at a time; serving one at a time",
                        self.lm.info.get("spec", "model"))  # fmt: skip
        return same

    def _check_continuous(self) -> bool:
        """True when the family's cache can take rows in and out and requests joining a running batch at
        steps 0, 2 and 3 generate exactly what each does alone (greedy)."""
        if not supports(self.lm):
            return False
        prompts = self._check_prompts()
        joined = self._greedy(prompts, lambda r: run_continuous(self.lm, r, join_at=[0, 2, 3][: len(r)]))
        same = joined == self._alone(prompts)
        if not same:
            log.warning("%s: requests joining a running batch differ from one alone; serving whole batches",
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
        if self.continuous:
            self._loop_continuous()
        else:
            self._loop_batches()

    def _loop_continuous(self) -> None:
        """Before every decode step: run waiting calls, admit waiting requests up to max_batch rows (one
        prefill for those that came together), then step every running row once."""
        dec = Decoder(self.lm)
        while not self._stop.is_set():
            new: list[StreamRequest] = []
            stop = False
            while len(dec) + len(new) < self.max_batch:
                try:
                    item = self._q.get() if not len(dec) and not new else self._q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                if isinstance(item, tuple):
                    self._run_call(*item)
                    continue
                new.append(item)
            try:
                if new:
                    self._running = [r.req for r in dec.rows] + new
                    dec.admit(new)
                if len(dec):
                    self.peak = max(self.peak, len(dec))
                    self._running = [r.req for r in dec.rows]
                    dec.step()
                    self.batches += 1
            except Exception:
                log.exception("generation failed for %d running rows", len(dec) + len(new))
                dec.fail_all()  # every row still running ends with reason "error"; the next requests start afresh
            self._running = [r.req for r in dec.rows]
            if stop:
                break
        dec.cancel_all()
        self._running = []

    def _loop_batches(self) -> None:
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
            self.peak = max(self.peak, len(batch))
            try:
                run_stream(self.lm, batch, batched=self.batched)
                self.batches += 1
            except Exception:
                log.exception("generation failed for a batch of %d", len(batch))
            finally:
                self._running = []
                self._clients = min(self.max_batch, len(batch) + self._q.qsize())
