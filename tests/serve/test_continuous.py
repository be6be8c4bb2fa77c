"""Continuous batching (generation/continuous.py): requests that join a running batch mid-way, with
different steering edits, samplers, readouts and budgets, generate exactly what each generates alone
(run_stream with one request, itself checked against `steerkit steer` and `read` in test_api.py);
rows leave as they finish and the cache shrinks with them; a cancelled row leaves the others as they
were. Every attention family batches continuously; recurrent and hybrid ones do not."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from steerkit.generation import RowEdit
from steerkit.generation.continuous import Decoder, run_continuous, supports
from steerkit.generation.stream import StreamRequest, run_stream

CONTINUOUS = {"llama", "qwen2", "qwen3", "gpt2", "gpt_neox"}
PROMPTS = ["The meeting began", "Hi", "She opened the letter and read it twice", "x y z", "It was late at night"]


def test_which_families_batch_continuously(tiny_lm_factory):
    from conftest import FAMILIES

    got = {f for f in FAMILIES if supports(tiny_lm_factory(f))}
    assert got == CONTINUOUS & set(FAMILIES)


def _requests(lm: Any, out: list[dict[str, Any]]) -> list[StreamRequest]:
    """Five requests: steered at one or two blocks (add, ablate_then_add), sampled with a seed, reading
    one or two concepts (with the prompt's rows), different budgets. Their events go to out[i]."""
    hidden = lm.model.config.hidden_size
    g = torch.Generator().manual_seed(0)
    d1, d2 = torch.randn(hidden, generator=g) * 4, torch.randn(hidden, generator=g) * 3
    basis = torch.nn.functional.normalize(torch.randn(1, hidden, generator=g))
    w = torch.randn(hidden, 2, generator=g)

    def score(h: torch.Tensor) -> torch.Tensor:  # (n, hidden) -> (n, 2)
        return h.float() @ w

    def emit(i: int) -> Any:
        def fn(e: dict[str, Any]) -> None:
            o = out[i]
            if e["type"] == "delta":
                o["ids"] += [t["id"] for t in e["tokens"]]
                o["rows"] += [t["scores"] for t in e["tokens"] if t["scores"] is not None]
                o["text"] += e["text"]
            elif e["type"] == "prompt":
                o["prompt"] = [t["scores"] for t in e["tokens"]]
            else:
                o["finish"] = e["reason"]

        return fn

    tok = lm.tokenizer
    ids = [list(tok(p)["input_ids"]) for p in PROMPTS]
    return [
        StreamRequest(ids[0], 9, emit(0), edit=RowEdit({1: d1})),
        StreamRequest(ids[1], 12, emit(1), readout_layer=2, score=score, prompt_readout=True),
        StreamRequest(
            ids[2],
            7,
            emit(2),
            temperature=0.8,
            seed=11,
            top_p=0.9,
            edit=RowEdit({0: d2, 2: d1}, mode="ablate_then_add", bases={2: basis}),
        ),  # fmt: skip
        StreamRequest(ids[3], 10, emit(3), edit=RowEdit({2: d2}, scale="relative"), readout_layer=1, score=score),
        StreamRequest(ids[4], 5, emit(4), temperature=1.2, seed=3, top_k=5),
    ]


def _fresh(n: int) -> list[dict[str, Any]]:
    return [{"ids": [], "rows": [], "text": "", "prompt": None, "finish": None} for _ in range(n)]


@pytest.mark.parametrize("family", sorted(CONTINUOUS))
def test_joining_mid_way_equals_alone(family, tiny_lm_factory):
    lm = tiny_lm_factory(family)
    alone = _fresh(5)
    for r in _requests(lm, alone):
        run_stream(lm, [r], batched=True)
    together = _fresh(5)
    steps = run_continuous(lm, _requests(lm, together), join_at=[0, 0, 2, 3, 7])
    assert steps < sum(len(o["ids"]) + 1 for o in alone)  # the rows really shared steps
    for a, b in zip(alone, together, strict=True):
        assert (a["ids"], a["text"], a["finish"]) == (b["ids"], b["text"], b["finish"])
        for key in ("rows", "prompt"):
            if a[key]:
                torch.testing.assert_close(torch.tensor(b[key]), torch.tensor(a[key]), rtol=1e-4, atol=1e-4)
            else:
                assert not b[key]
    assert together[1]["prompt"] is not None and len(together[1]["rows"]) == len(together[1]["ids"])


def test_rows_leave_and_the_cache_shrinks_and_a_cancel_leaves_the_rest_alone(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    alone = _fresh(5)
    for r in _requests(lm, alone):
        run_stream(lm, [r], batched=True)
    out = _fresh(5)
    reqs = _requests(lm, out)
    dec = Decoder(lm)
    dec.admit(reqs[:3])
    widths = []
    for k in range(30):
        if k == 1:
            dec.admit(reqs[3:])
        if k == 2:
            reqs[4].cancel()
        if not len(dec):
            break
        dec.step()
        if len(dec):
            layer = dec.cache.layers[0]
            assert layer.keys.shape[0] == len(dec) == dec.mask.shape[0]
            assert layer.keys.shape[2] == dec.mask.shape[1]
            assert bool(dec.mask[:, 0].any())  # no column that every row leaves unused
            widths.append(dec.mask.shape[1])
    assert not len(dec) and dec.cache is None
    assert out[4]["finish"] == "cancelled" and len(out[4]["ids"]) <= 3
    for i in range(4):
        assert out[i]["ids"] == alone[i]["ids"] and out[i]["finish"] == alone[i]["finish"]
    # each step adds a column; without the cut of columns no remaining row uses, the width would only grow
    assert any(w2 <= w1 for w1, w2 in zip(widths, widths[1:], strict=False))


def test_engine_picks_continuous_batching_by_family(tiny_lm_factory):
    from steerkit.serve.engine import EmbeddedEngine

    assert EmbeddedEngine(tiny_lm_factory("llama")).mode == "continuous"
    assert EmbeddedEngine(tiny_lm_factory("mamba")).mode == "one at a time"


def test_a_failed_forward_ends_every_running_row_with_error_and_the_engine_goes_on(tiny_lm_factory):
    """A forward that raises mid-way (here: the prefill of a request that joins two running ones) ends
    every running row with finish reason "error" (no client is left waiting) and the next request is
    served normally."""
    import threading

    from steerkit.serve.engine import EmbeddedEngine

    lm = tiny_lm_factory("llama")
    engine = EmbeddedEngine(lm, max_batch=4)
    assert engine.mode == "continuous"
    prefills = {"n": 0}

    def boom(module, args, output):
        if args[0].shape[1] > 1:  # a prefill
            prefills["n"] += 1
            if prefills["n"] == 2:
                raise RuntimeError("planted failure")

    finished: dict[int, str] = {}
    done = threading.Event()

    def emit(i: int) -> Any:
        def fn(e: dict[str, Any]) -> None:
            if e["type"] == "finish":
                finished[i] = e["reason"]
                if len(finished) == 3:
                    done.set()

        return fn

    ids = [list(lm.tokenizer(p)["input_ids"]) for p in PROMPTS[:3]]
    handle = lm.adapter.blocks(lm.model)[1].register_forward_hook(boom)
    engine.start()
    try:
        gate = threading.Event()
        engine.call(gate.wait)  # hold the worker so that the first two requests join in one prefill
        for i in range(2):
            engine.submit(StreamRequest(ids[i], 200, emit(i)))
        gate.set()
        for _ in range(3000):  # until they are decoding
            if engine.batches >= 2:
                break
            threading.Event().wait(0.01)
        engine.submit(StreamRequest(ids[2], 5, emit(2)))
        assert done.wait(60), finished
        handle.remove()
        assert finished == {0: "error", 1: "error", 2: "error"}
        out = _fresh(1)
        again = threading.Event()
        req = _requests(lm, out)[0]
        inner = req.emit
        req.emit = lambda e: (inner(e), again.set() if e["type"] == "finish" else None)
        engine.submit(req)
        assert again.wait(60) and out[0]["finish"] == "length" and len(out[0]["ids"]) == 9
    finally:
        handle.remove()
        engine.stop()
