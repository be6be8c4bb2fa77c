"""Continuous batching: requests join a running batch between decode steps and leave it as soon as they
finish, so no request waits for another to end (the embedded engine of `steerkit serve`).

A `Decoder` holds the running rows, their KV cache (a transformers DynamicCache, (b, heads, T, d) per
layer), the attention mask (b, T) and each row's next input token. Between steps:

- `admit(requests)`: the new requests' prompts run as one left-padded prefill with their own steering
  and readout; their caches are then merged into the running one, the shorter side left-padded with
  masked zeros (each row keeps the rotary positions it was computed with: a row's position is the
  count of its real tokens, never its column).
- `step()`: one forward of every row's last token; each row reads, samples and accepts exactly as in
  `stream.run_stream` (`stream.advance`), with its own steering edit, sampler and stop conditions.
- finished and cancelled rows leave after each forward; the mask's columns that no remaining row
  uses are cut from the front of the cache.

So a request's tokens and readouts are those of the same request run alone (greedy; seeded sampling
draws from the row's own generator): the tests check it with requests joining mid-way.

Only families whose cache is plain full attention (DynamicLayer on every layer) and whose forward
takes position ids can join mid-way (`supports`); the others (recurrent, hybrid, sliding-window
caches) keep `run_stream`'s whole batches.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from .batch import left_pad, pad_id
from .steer import RowSteer
from .stream import StreamRequest, _generator, _Row, advance


def _forward_params(model: Any) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def supports(lm: Any) -> bool:
    """True when requests can join and leave a running batch of this model: not recurrent, a forward
    that takes position ids and a cache, and a DynamicCache of plain full-attention layers."""
    from transformers.cache_utils import DynamicLayer

    if getattr(lm.adapter, "recurrent", False):
        return False
    params = _forward_params(lm.model)
    if "position_ids" not in params or not ({"cache", "past_key_values"} & params):
        return False
    try:
        cache = new_cache(lm.model)
    except Exception:  # a config DynamicCache cannot describe
        return False
    layers = list(getattr(cache, "layers", None) or [])
    return bool(layers) and all(type(la) is DynamicLayer for la in layers)


class Decoder:
    """The running batch of one engine thread. Not thread-safe: one thread admits and steps."""

    def __init__(self, lm: Any) -> None:
        self.lm = lm
        params = _forward_params(lm.model)
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep = "logits_to_keep" in params
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)  # (b, T)
        self._steer: RowSteer | None = None
        self.steps = 0  # decode forwards run (for tests and the benchmark)

    def __len__(self) -> int:
        return len(self.rows)

    # ---- one forward ---------------------------------------------------------------------------------
    def _forward(self, rows: list[_Row], steer: RowSteer, ids: torch.Tensor, mask: torch.Tensor,
                 pos: torch.Tensor, cache: Any) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:  # fmt: skip
        """Logits (b, V) at the last position and the readout blocks' residuals {block: (b, t, hidden)}."""
        a, model = self.lm.adapter, self.lm.model
        blocks = a.blocks(model)
        hidden: dict[int, torch.Tensor] = {}

        def keep(layer: int) -> Any:
            def fn(module: Any, args: Any, output: Any) -> None:
                hidden[layer] = a.read_hidden(model, layer, output).detach()

            return fn

        reads = sorted({r.req.readout_layer for r in rows if r.reads and r.req.readout_layer is not None})
        dev = self.lm.input_device
        kw: dict[str, Any] = {self._cache_kw: cache, "use_cache": True}
        if self._keep:
            kw["logits_to_keep"] = 1
        handles: list[Any] = []
        with torch.inference_mode(), steer.attached():
            try:  # readout hooks after the steering hooks: a row reads the residual the next block reads
                handles = [blocks[la].register_forward_hook(keep(la)) for la in reads]
                out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), **kw)
            finally:
                for h in handles:
                    h.remove()
        return out.logits[:, -1, :], hidden

    # ---- joining -------------------------------------------------------------------------------------
    def admit(self, requests: Sequence[StreamRequest]) -> None:
        """Prefill `requests` (cancelled ones finish at once) and add them to the running batch."""
        new = []
        for r in requests:
            if r.cancelled:
                r.emit({"type": "finish", "reason": "cancelled", "prompt_tokens": len(r.prompt_ids),
                        "completion_tokens": 0})  # fmt: skip
            else:
                new.append(r)
        if not new:
            return
        tok = self.lm.tokenizer
        rows = [_Row(r, tok, tok.eos_token_id, _generator(r) if r.temperature > 0 else None) for r in new]
        ids, mask = left_pad([r.prompt_ids for r in new], pad_id(self.lm))
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = new_cache(self.lm.model)
        try:
            logits, hidden = self._forward(rows, RowSteer(self.lm, [r.edit for r in new]), ids, mask, pos, cache)
            advance(rows, hidden, logits, [True] * len(rows), mask)
        except BaseException:
            _fail(rows)
            raise
        self._merge(rows, cache, mask)
        self._drop_finished()

    def _merge(self, rows: list[_Row], cache: Any, mask: torch.Tensor) -> None:
        if not self.rows:
            self.rows, self.cache, self.mask = rows, cache, mask
            self._steer = None
            return
        t_old, t_new = self.mask.shape[1], mask.shape[1]
        t = max(t_old, t_new)
        self.mask = torch.cat([_pad_left(self.mask, t), _pad_left(mask, t)])
        for old, add in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_pad_left(old.keys, t, dim=-2), _pad_left(add.keys, t, dim=-2)])
            old.values = torch.cat([_pad_left(old.values, t, dim=-2), _pad_left(add.values, t, dim=-2)])
        self.rows = self.rows + rows
        self._steer = None

    # ---- decoding ------------------------------------------------------------------------------------
    def step(self) -> None:
        """One decode forward of every running row; finished rows leave."""
        self._drop_finished()
        if not self.rows:
            return
        ids = torch.tensor([[r.tokens[-1]] for r in self.rows])  # (b, 1): each row's last accepted token
        self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=self.mask.dtype)], dim=1)
        pos = self.mask.sum(-1, keepdim=True) - 1  # (b, 1): the count of the row's real tokens before this one
        if self._steer is None:
            self._steer = RowSteer(self.lm, [r.req.edit for r in self.rows])
        try:
            logits, hidden = self._forward(self.rows, self._steer, ids, self.mask, pos, self.cache)
            advance(self.rows, hidden, logits, [False] * len(self.rows), self.mask[:, -1:])
        except BaseException:
            self.fail_all()
            raise
        self.steps += 1
        self._drop_finished()

    def _drop_finished(self) -> None:
        for r in self.rows:
            if r.req.cancelled and not r.done:
                r.finish("cancelled")
        keep = [i for i, r in enumerate(self.rows) if not r.done]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self._steer = [], None, None
            self.mask = torch.zeros(0, 0, dtype=torch.long)
            return
        idx = torch.tensor(keep)
        self.rows = [self.rows[i] for i in keep]
        self.mask = self.mask[idx]
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if len(used) else 0  # columns before it are padding for every remaining row
        self.mask = self.mask[:, start:]
        for la in self.cache.layers:
            la.keys = la.keys[idx.to(la.keys.device), :, start:]
            la.values = la.values[idx.to(la.values.device), :, start:]
        self._steer = None

    def cancel_all(self) -> None:
        for r in self.rows:
            r.req.cancel()
        self._drop_finished()

    def fail_all(self) -> None:
        """End every running row with finish reason "error" and empty the batch (after a failed forward)."""
        _fail(self.rows)
        self.rows, self.cache, self._steer = [], None, None
        self.mask = torch.zeros(0, 0, dtype=torch.long)


def _pad_left(x: torch.Tensor, t: int, dim: int = 1) -> torch.Tensor:
    """x with zeros prepended along `dim` up to length t."""
    n = t - x.shape[dim]
    if n <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = n
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def _fail(rows: list[_Row]) -> None:
    for row in rows:
        if not row.done:
            row.done = True
            row.req.emit({"type": "finish", "reason": "error", "prompt_tokens": len(row.req.prompt_ids),
                          "completion_tokens": len(row.sent_ids)})  # fmt: skip


def run_continuous(lm: Any, requests: Sequence[StreamRequest], join_at: Sequence[int] | None = None) -> int:
    """Run `requests` through one Decoder, request i joining after join_at[i] decode steps (default: all
    at once); returns the decode steps run. The engine's loop, in miniature (tests, the apparatus check)."""
    dec = Decoder(lm)
    at = list(join_at) if join_at is not None else [0] * len(requests)
    waiting = sorted(range(len(requests)), key=lambda i: at[i])
    while waiting or len(dec):
        due = [i for i in waiting if at[i] <= dec.steps]
        if not due and not len(dec):  # nothing running: the next ones join now
            due = [i for i in waiting if at[i] == at[waiting[0]]]
        if due:
            dec.admit([requests[i] for i in due])
            waiting = [i for i in waiting if i not in due]
        dec.step()
    return dec.steps
