"""Norm-washout diagnostic: how much of the injected perturbation survives to later blocks and the logits.

For the residual stream h_k after block k (free arm) and h'_k (forced arm), per token t:
    raw_k   = ||h'_kt - h_kt|| / ||h_kt||                           (change of the residual)
    dir_k   = ||n(h'_kt) - n(h_kt)|| / ||n(h_kt)||,  n(x) = x / rms(x)  (what a following RMSNorm /
              LayerNorm without its gain passes on: a pure rescaling gives 0)
averaged over tokens. The injection is raw at the coupled block; the final norm's output and the
centred logits z - mean_v z (softmax is blind to a constant) are the last two sites. A multiplicative
coupling right before a normalisation shows a large raw change and dir ~ 0: its effect dies there.
The effect "dies at" the earliest site from which on dir stays below max(0.1%, 1% of the injected raw).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

DEAD = 1e-3  # a direction change below 0.1% of the residual ...
SURVIVE = 0.01  # ... or below 1% of the injected change counts as washed out


def rms_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / rms(x) over the last dimension (..., hidden)."""
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-30)


def relative_change(free: torch.Tensor, forced: torch.Tensor) -> float:
    """Mean over tokens of ||forced_t - free_t|| / ||free_t|| for (..., hidden) tensors."""
    a, b = free.double(), forced.double()
    num = (b - a).norm(dim=-1)  # (...)
    den = a.norm(dim=-1).clamp_min(1e-30)  # (...)
    return float((num / den).mean())


def direction_change(free: torch.Tensor, forced: torch.Tensor) -> float:
    """relative_change of the RMS-normalised states: blind to a per-token rescaling."""
    return relative_change(rms_normalize(free), rms_normalize(forced))


def centred(logits: torch.Tensor) -> torch.Tensor:
    z = logits.double()
    return z - z.mean(-1, keepdim=True)


def site_profile(free: dict[str, torch.Tensor], forced: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """{site: {"raw": ..., "dir": ...}} for the sites present in both (block_<k>, final_norm, logits)."""
    out: dict[str, dict[str, float]] = {}
    for site, a in free.items():
        b = forced[site]
        if site == "logits":
            out[site] = {"raw": relative_change(centred(a), centred(b)), "dir": relative_change(centred(a), centred(b))}
        else:
            out[site] = {"raw": relative_change(a, b), "dir": direction_change(a, b)}
    return out


def mean_profiles(profiles: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Average per-prompt profiles site by site."""
    if not profiles:
        return {}
    sites = list(profiles[0])
    return {s: {k: float(np.mean([p[s][k] for p in profiles])) for k in ("raw", "dir")} for s in sites}


def summarize_washout(profile: dict[str, dict[str, float]], layer: int) -> dict[str, Any]:
    """Injected size, survival at each later site (dir / injected) and where the effect dies."""
    inj_key = f"block_{layer}"
    if inj_key not in profile:
        return {"injected": None, "survival": {}, "dies_at": None, "logits": None}
    injected = profile[inj_key]["raw"]
    survival = {s: (v["dir"] / injected if injected > 0 else 0.0) for s, v in profile.items()}
    dies_at = None  # the earliest site from which on every direction change counts as washed out
    floor = max(DEAD, SURVIVE * injected)
    for s, v in reversed(list(profile.items())):
        if v["dir"] >= floor:
            break
        dies_at = s
    return {
        "injected": injected,
        "injected_dir": profile[inj_key]["dir"],
        "survival": survival,
        "dies_at": dies_at,
        "logits": profile.get("logits", {}).get("raw"),
    }
