"""U against scipy's entropy, the documented tone table and drift actions at their thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from steerkit.phase import ACTIONS, TONES, drift_action, normalized_entropy, summarize, tone_index


def test_normalized_entropy_matches_scipy():
    logits = torch.randn(3, 5, 50) * 3
    p = torch.softmax(logits, -1).numpy()
    want = stats.entropy(p, axis=-1) / math.log(50)
    np.testing.assert_allclose(normalized_entropy(logits).numpy(), want, rtol=1e-5)
    assert float(normalized_entropy(torch.zeros(7))) == pytest.approx(1.0)
    assert float(normalized_entropy(torch.tensor([0.0, 200.0, 0.0]))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "r, u, tone, action",
    [
        (0.99, 0.1, "rigid", "BRAKE"),
        (0.96, 0.9, "strained", "BRAKE"),
        (0.95, 0.49, "focused", "COAST"),  # band edges belong to the band
        (0.80, 0.5, "searching", "COAST"),
        (0.79, 0.2, "drifting", "BOOST"),
        (0.10, 0.7, "scattered", "BOOST"),
    ],
)
def test_tone_table_and_drift_action(r, u, tone, action):
    rt, ut = torch.tensor([r]), torch.tensor([u])
    assert TONES[int(tone_index(rt, ut))] == tone
    assert ACTIONS[int(drift_action(rt))] == action


def test_summarize_counts_and_band_check():
    r = torch.tensor([[0.99, 0.9, 0.5, 0.9]])
    u = torch.tensor([[0.1, 0.6, 0.6, 0.2]])
    s = summarize(r, u, mask=torch.tensor([[1, 1, 1, 0]]))
    assert s["R"] == pytest.approx((0.99 + 0.9 + 0.5) / 3)
    assert s["RU"] == pytest.approx((0.099 + 0.54 + 0.3) / 3)
    assert s["tone_counts"] == {"rigid": 1, "strained": 0, "focused": 0, "searching": 1, "drifting": 0, "scattered": 1}
    assert s["action_counts"] == {"BRAKE": 1, "COAST": 1, "BOOST": 1}
    assert s["R_above_099"] == pytest.approx(0.0)  # 0.99 is not above 0.99
    with pytest.raises(ValueError):
        drift_action(r, band=(0.9, 0.8))
