"""Resume after SIGKILL: rerun recomputes only the missing texts and gives identical output."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

from steerkit.capture import capture, parse_pooling
from steerkit.models import load

TEXTS = [f"Story number {i}: the {'quick ' * (i % 7)}fox went to market {i} times." for i in range(40)]

CHILD = textwrap.dedent(
    """
    import os, signal, sys, json
    from steerkit.capture import capture, parse_pooling
    from steerkit.models import load
    texts = json.loads(sys.argv[3])
    lm = load(sys.argv[1])
    state = {"calls": 0}
    def progress(done, total):
        state["calls"] += 1
        if state["calls"] == 5:  # after 4 batches, die without any cleanup
            os.kill(os.getpid(), signal.SIGKILL)
    capture(lm, texts, list(range(lm.adapter.n_blocks(lm.model))), sites=("resid", "heads"), pooling=parse_pooling("mean"), max_batch_tokens=40,
            cache_dir=sys.argv[2], cache_flush_seconds=0, progress=progress)
    """
)


def test_sigkill_then_resume(tmp_path, tiny_dir_factory):
    import json

    model_dir = tiny_dir_factory("qwen2")
    cache = tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(model_dir), str(cache), json.dumps(TEXTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    lm = load(str(model_dir))
    resumed = capture(
        lm,
        TEXTS,
        list(range(lm.adapter.n_blocks(lm.model))),
        sites=("resid", "heads"),
        pooling=parse_pooling("mean"),
        max_batch_tokens=40,
        cache_dir=cache,
    )
    assert 0 < resumed.stats["n_cached"] < len(TEXTS), resumed.stats
    assert resumed.stats["n_computed"] == len(TEXTS) - resumed.stats["n_cached"]
    fresh = capture(
        lm,
        TEXTS,
        list(range(lm.adapter.n_blocks(lm.model))),
        sites=("resid", "heads"),
        pooling=parse_pooling("mean"),
        max_batch_tokens=40,
    )
    for layer in fresh.resid:
        torch.testing.assert_close(resumed.resid[layer], fresh.resid[layer], atol=1e-6, rtol=0)
        torch.testing.assert_close(resumed.heads[layer], fresh.heads[layer], atol=1e-6, rtol=0)


def test_ctrl_c_keeps_computed_batches(tmp_path, tiny_lm_factory):
    """Ctrl-C mid-capture (default write-behind flushing): the batches finished so far are written."""
    import pytest

    lm = tiny_lm_factory("qwen2")
    state = {"calls": 0, "done": 0}

    def progress(done, total):
        state["calls"] += 1
        if state["calls"] == 5:  # the initial call, then 4 finished batches
            state["done"] = done
            raise KeyboardInterrupt

    kw = dict(sites=("resid",), pooling=parse_pooling("mean"), max_batch_tokens=40, cache_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        capture(lm, TEXTS, [1, 3], progress=progress, **kw)
    resumed = capture(lm, TEXTS, [1, 3], **kw)
    assert 0 < resumed.stats["n_cached"] == state["done"] < len(TEXTS), (resumed.stats, state)
    fresh = capture(lm, TEXTS, [1, 3], sites=("resid",), pooling=parse_pooling("mean"))
    for layer in fresh.resid:
        torch.testing.assert_close(resumed.resid[layer], fresh.resid[layer], atol=1e-6, rtol=0)
