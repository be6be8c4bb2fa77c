"""Token-by-token generation of independent requests in one left-padded batch: the engine room of
`steerkit serve`.

Each row carries its own steering (a RowEdit), sampling (temperature, top-k, top-p, seed), token
budget, stop strings and readout; rows finish independently (EOS, budget, stop string, or cancelled
by the caller), and a finished row is dropped from the work of the remaining ones by generate()'s
own bookkeeping. Events go to each row's `emit` as soon as they are known:

    {"type": "prompt", "tokens": [{"token", "id", "scores"}, ...]}   (readout of the prompt, if asked)
    {"type": "delta", "text": str, "tokens": [{"token", "id", "scores"}, ...]}
    {"type": "finish", "reason": "stop" | "length" | "cancelled", "prompt_tokens": int,
     "completion_tokens": int}

A generated token's readout is the residual after the readout block *at that token's position*, which
the model computes when the token is fed back in: the next step. So a row with a readout emits each
token one step after sampling it and runs one extra step for its last token (that step's sample is
discarded). This is exactly what `steering.read_tokens` reads for the prompt + completion text.

Text is decoded incrementally over the whole completion (multi-byte characters complete before they
are sent); text that could be the start of a stop string is held back until it is known not to be.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .batch import gen_config, generate_batch, left_pad, pad_id
from .sampling import sample_rows
from .steer import RowEdit, RowSteer

Emit = Callable[[dict[str, Any]], None]
Scorer = Callable[[torch.Tensor], torch.Tensor]  # (n, hidden) residuals -> (n, k) scores


@dataclass
class StreamRequest:
    """One row. temperature 0: greedy. readout_layer None: no readout; score maps residuals (n, hidden)
    at that block to the scores (n, k) the caller wants per token."""

    prompt_ids: list[int]
    max_new: int
    emit: Emit
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    edit: RowEdit | None = None
    readout_layer: int | None = None
    score: Scorer | None = None
    prompt_readout: bool = False
    settings: dict[str, Any] = field(default_factory=dict)  # the steering / readout by name (engines that rebuild)
    cancelled: bool = False  # set from any thread; the row stops at the next step

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class _Row:
    req: StreamRequest
    tok: Any
    eos: int | None
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)  # accepted tokens (readout may be pending)
    pending: list[dict[str, Any]] = field(default_factory=list)  # ready, not yet sent
    sent_ids: list[int] = field(default_factory=list)
    sent_text: str = ""
    done: bool = False
    prompt_rows: list[list[float]] = field(default_factory=list)  # engines that receive readout rows in bulk
    prompt_rows_left: int = 0

    @property
    def reads(self) -> bool:
        return self.req.readout_layer is not None

    def finish(self, reason: str) -> None:
        if self.done:
            return
        if reason != "cancelled":
            self.flush(final=True)  # may itself end the row on a stop string
        if self.done:
            return
        self.done = True
        self.req.emit({"type": "finish", "reason": reason, "prompt_tokens": len(self.req.prompt_ids),
                       "completion_tokens": len(self.sent_ids)})  # fmt: skip

    def ready(self, tok_id: int, scores: list[float] | None) -> None:
        """Token tok_id (and its readout) is complete: queue it and send what can be sent."""
        self.pending.append({"token": self.tok.decode([tok_id]), "id": tok_id, "scores": scores})
        self.flush()

    def flush(self, final: bool = False) -> None:
        """Send the pending tokens and their text, unless the text may still be changing (an unfinished
        multi-byte character, or the start of a stop string) and this is not the end. A stop string ends
        the row: the text before it is sent, with the tokens that lie wholly before it."""
        if not self.pending:
            return
        text = self.tok.decode(self.sent_ids + [p["id"] for p in self.pending], skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.req.stop) if i >= 0), default=-1)
        if cut >= 0:
            keep: list[dict[str, Any]] = []
            for p in self.pending:
                upto = self.tok.decode(self.sent_ids + [q["id"] for q in keep] + [p["id"]], skip_special_tokens=True)
                if len(upto) > cut:
                    break
                keep.append(p)
            self.pending = []
            self._send(keep, text[:cut])
            self.done = True
            self.req.emit({"type": "finish", "reason": "stop", "prompt_tokens": len(self.req.prompt_ids),
                           "completion_tokens": len(self.sent_ids)})  # fmt: skip
            return
        if not final and (
            text.endswith("\ufffd") or any(text.endswith(s[:j]) for s in self.req.stop for j in range(1, len(s)))
        ):
            return
        toks, self.pending = self.pending, []
        self._send(toks, text)

    def _send(self, toks: list[dict[str, Any]], text: str) -> None:
        delta = text[len(self.sent_text) :]
        self.sent_ids += [p["id"] for p in toks]
        self.sent_text = text
        if toks or delta:
            self.req.emit({"type": "delta", "text": delta, "tokens": toks})

    def accept(self, tok_id: int) -> None:
        """The token sampled for this row at this step."""
        if self.done:
            return
        if self.eos is not None and tok_id == self.eos:
            self.finish("stop")
            return
        self.tokens.append(tok_id)
        if len(self.tokens) > self.req.max_new:  # the extra step that read the last token: drop its sample
            self.tokens.pop()
            self.finish("length")
            return
        if not self.reads:
            self.ready(tok_id, None)
            if len(self.tokens) >= self.req.max_new and not self.done:
                self.finish("length")


def advance(rows: list[_Row], hidden: dict[int, torch.Tensor], logits: torch.Tensor, first: Sequence[bool],
            mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """What follows one forward over `rows`: each reading row gets the readout of the token it was fed
    (or, in its first forward, of its prompt, when asked), then every row's next token is sampled and
    accepted (a cancelled row finishes). hidden: block -> (b, t, hidden) of this forward (after
    steering); logits (b, V) at each row's last position; first (b,): the forward was the row's prefill;
    mask (b, t): the real positions of this forward's inputs. Returns the sampled tokens (b,)."""
    for i, row in enumerate(rows):
        if row.done or row.req.cancelled or not row.reads:
            continue
        req = row.req
        assert req.readout_layer is not None and req.score is not None
        h = hidden[req.readout_layer][i].float()  # (t, hidden)
        if first[i]:
            if req.prompt_readout:
                real = h[mask[i].bool().to(h.device)][-len(req.prompt_ids) :]  # (P, hidden)
                sc = req.score(real.cpu()).tolist()
                toks = [
                    {"token": row.tok.decode([t]), "id": t, "scores": s}
                    for t, s in zip(req.prompt_ids, sc, strict=True)
                ]
                req.emit({"type": "prompt", "tokens": toks})
        else:
            row.ready(row.tokens[-1], req.score(h[-1:].cpu())[0].tolist())
    live = [not r.done and not r.req.cancelled for r in rows]
    nxt = sample_rows(
        logits.float(),
        [r.req.temperature if ok else 0.0 for r, ok in zip(rows, live, strict=True)],
        [r.req.top_k for r in rows],
        [r.req.top_p for r in rows],
        [r.generator for r in rows],
    )
    for i, row in enumerate(rows):
        if row.req.cancelled and not row.done:
            row.finish("cancelled")
        row.accept(int(nxt[i]))
    return nxt


class _Stepper:
    """The LogitsProcessor and StoppingCriteria of one batch: reads the residuals the readout hooks
    kept for this step, sends each row's completed tokens, samples every row's next token."""

    def __init__(self, rows: list[_Row], mask: torch.Tensor) -> None:
        self.rows, self.mask, self.step = rows, mask, 0
        self.hidden: dict[int, torch.Tensor] = {}  # layer -> (b, t, hidden) of this step's forward

    def hook(self, layer: int, adapter: Any, model: Any) -> Any:
        def fn(module: Any, args: Any, output: Any) -> None:
            self.hidden[layer] = adapter.read_hidden(model, layer, output).detach()

        return fn

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k, self.step = self.step, self.step + 1
        nxt = advance(self.rows, self.hidden, scores, [k == 0] * len(self.rows), self.mask)
        self.hidden.clear()
        out = torch.full_like(scores, -torch.inf)
        out.scatter_(1, nxt[:, None].to(scores.device), 0.0)
        return out

    def stopped(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        """(b,) True for rows that are done (the StoppingCriteria)."""
        for row in self.rows:
            if row.req.cancelled and not row.done:
                row.finish("cancelled")
        return torch.tensor([r.done for r in self.rows], device=input_ids.device)


class _Stop:
    """A StoppingCriteria that asks the stepper which rows are done."""

    def __init__(self, stepper: _Stepper) -> None:
        self.stepper = stepper

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return self.stepper.stopped(input_ids, scores)


def run_stream(lm: Any, requests: Sequence[StreamRequest], batched: bool = True) -> None:
    """Generate every request, sending its events as they happen. batched False: one request at a time
    (for families whose cached generation is wrong under left padding, e.g. recurrent ones)."""
    if not batched:
        for r in requests:
            _run(lm, [r])
        return
    _run(lm, list(requests))


def _run(lm: Any, requests: list[StreamRequest]) -> None:
    live = [r for r in requests if not r.cancelled]
    for r in requests:
        if r.cancelled:
            r.emit({"type": "finish", "reason": "cancelled", "prompt_tokens": len(r.prompt_ids),
                    "completion_tokens": 0})  # fmt: skip
    if not live:
        return
    tok = lm.tokenizer
    rows = [
        _Row(r, tok, tok.eos_token_id, _generator(r) if r.temperature > 0 else None) for r in live
    ]  # fmt: skip
    ids, mask = left_pad([r.prompt_ids for r in live], pad_id(lm))
    budget = max(r.max_new + (1 if r.readout_layer is not None else 0) for r in live)
    gc = gen_config(lm, budget)
    stepper = _Stepper(rows, mask)
    a, model = lm.adapter, lm.model
    blocks = a.blocks(model)
    steer = RowSteer(lm, [r.edit for r in live])
    handles: list[Any] = []
    try:
        with torch.inference_mode(), steer.attached():
            # readout hooks after the steering hooks: a row reads the residual the next block reads
            handles = [blocks[la].register_forward_hook(stepper.hook(la, a, model))
                       for la in sorted({r.readout_layer for r in live if r.readout_layer is not None})]  # fmt: skip
            dev = lm.input_device
            generate_batch(lm, ids.to(dev), mask.to(dev), stepper, gc, stopping=_Stop(stepper))
    except BaseException:
        for row in rows:
            if not row.done:
                row.done = True
                row.req.emit({"type": "finish", "reason": "error", "prompt_tokens": len(row.req.prompt_ids),
                              "completion_tokens": len(row.sent_ids)})  # fmt: skip
        raise
    finally:
        for h in handles:
            h.remove()
    for row in rows:  # generate() ran out of steps (every row is done by then, unless the budget was hit)
        if not row.done:
            row.finish("length")


def _generator(r: StreamRequest) -> torch.Generator:
    seed = r.seed if r.seed is not None else secrets.randbits(63)
    return torch.Generator().manual_seed(int(seed))


__all__ = ["RowEdit", "StreamRequest", "run_stream"]
