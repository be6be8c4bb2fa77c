"""Per-token metrics of a coupled model: U, R*U, tone and drift action.

U = H(p) / log V, the predictive entropy of the next-token distribution normalised by its maximum
(Shannon 1948), in [0, 1]. R*U is high when the oscillators are synchronised while the model is
unsure. Tone maps (R, U) to six labelled states:

    R band            U < u_split ("sure")     U >= u_split ("unsure")
    R > high          rigid                    strained     (over-synchronised; the seeds' R collapse)
    low <= R <= high  focused                  searching    (inside the target band)
    R < low           drifting                 scattered    (incoherent oscillators)

Drift action says what to do with the coupling to bring R back into the target band [low, high]
(default [0.80, 0.95]): BRAKE when R > high, BOOST when R < low, COAST otherwise.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Literal

import torch

TONES: tuple[str, ...] = ("rigid", "strained", "focused", "searching", "drifting", "scattered")
Action = Literal["BRAKE", "COAST", "BOOST"]
ACTIONS: tuple[str, ...] = ("BRAKE", "COAST", "BOOST")
DEFAULT_BAND = (0.80, 0.95)


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """U = H(softmax(logits)) / log V. logits (..., V) -> (...). Differentiable."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (..., V)
    h = -(logp.exp() * logp).sum(-1)  # (...)
    return h / math.log(logits.shape[-1])


def check_band(band: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(band[0]), float(band[1])
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"R band must satisfy 0 <= low < high <= 1, got {band}")
    return lo, hi


def tone_index(
    r: torch.Tensor, u: torch.Tensor, band: tuple[float, float] = DEFAULT_BAND, u_split: float = 0.5
) -> torch.Tensor:
    """Index into TONES per token. r, u (...) -> (...) int64."""
    lo, hi = check_band(band)
    row = torch.where(r > hi, 0, torch.where(r >= lo, 1, 2))  # (...)
    col = (u >= u_split).long()  # (...)
    return row * 2 + col


def drift_action(r: torch.Tensor, band: tuple[float, float] = DEFAULT_BAND) -> torch.Tensor:
    """Index into ACTIONS per token: 0 BRAKE (R > high), 1 COAST, 2 BOOST (R < low). (...) -> (...)."""
    lo, hi = check_band(band)
    return torch.where(r > hi, 0, torch.where(r < lo, 2, 1))


def summarize(
    r: torch.Tensor,
    u: torch.Tensor,
    band: tuple[float, float] = DEFAULT_BAND,
    mask: torch.Tensor | None = None,
    u_split: float = 0.5,
) -> dict[str, object]:
    """Means and label counts over the (masked) tokens of r, u (batch, seq)."""
    r, u = r.detach().float(), u.detach().float()
    if mask is not None:
        keep = mask.bool()
        r, u = r[keep], u[keep]
    r, u = r.reshape(-1), u.reshape(-1)
    if r.numel() == 0:
        return {}
    tone_counts = Counter(TONES[i] for i in tone_index(r, u, band, u_split).tolist())
    act_counts = Counter(ACTIONS[i] for i in drift_action(r, band).tolist())
    return {
        "R": float(r.mean()),
        "R_std": float(r.std()) if r.numel() > 1 else 0.0,
        "U": float(u.mean()),
        "RU": float((r * u).mean()),
        "tone": tone_counts.most_common(1)[0][0],
        "tone_counts": {t: tone_counts.get(t, 0) for t in TONES},
        "action": act_counts.most_common(1)[0][0],
        "action_counts": {a: act_counts.get(a, 0) for a in ACTIONS},
        "R_above_099": float((r > 0.99).float().mean()),
    }
