"""Tests here run single-threaded: for 32-wide matrices intra-op threads only add overhead (and
contend badly on a busy machine). The real-model test sets its own thread count."""

from __future__ import annotations

import pytest
import torch

from steerkit.quality.metrics import one_thread


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def peaked_lm(tiny_tok):
    """A tiny llama whose next-token distributions are peaked (lm_head x 25) and which ends texts
    (EOS row boosted), so that sampled lengths and distinct-1 vary between seeds."""
    import tiny_models

    from steerkit.models import from_model

    model = tiny_models.build("llama")
    with torch.no_grad():
        model.lm_head.weight *= 25.0
        w = model.model.norm.weight
        model.lm_head.weight[tiny_tok.eos_token_id] += 12.0 * w / w.norm()
    return from_model(model, tiny_tok, spec="tiny-llama-peaked")
