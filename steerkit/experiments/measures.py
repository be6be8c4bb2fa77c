"""Per-prompt measures of an intervention (pure functions on logits, log-probs and token ids).

Teacher-forced on the fixed continuation (positions that predict continuation tokens):
- kl:       KL(p_forced || p_free) = sum_v p_f(v) (log p_f(v) - log p_0(v)) per position, averaged
            (Kullback & Leibler 1951), in nats per token; >= 0, 0 exactly when nothing changed.
- entropy:  U_forced - U_free, U = H(p) / log V (phase.metrics.normalized_entropy).
- nll:      mean -log p(continuation token), forced minus free (nats per token).
- probe:<c> change of the mean concept score (h - center) . v_c at the readout layer.
- pref_margin: on a preference-trained run (DPO / ORPO), per held-out pair, the change of the
            preference margin log pi(chosen | prompt) - log pi(rejected | prompt) (summed token
            log-probs for DPO, token means for ORPO, as each objective scores a completion);
            the rows of this measure are the run's held-out pairs, not the prompts.
Sampled generations (each arm samples with its own seeds):
- distinct: distinct-n = unique n-grams / n-grams of one generation (Li et al., NAACL 2016),
            averaged over the seeds; forced minus free.
- length:   generated tokens before EOS (max_new_tokens when none); forced minus free.
- gen_entropy: mean U of the distributions the arm sampled from; forced minus free.
- topk:     1 - |topk(p_forced) ∩ topk(p_free)| / k along the free arm's generations (both models
            teacher-forced on the same sampled text); 0 exactly when the top-k sets agree.
"""

from __future__ import annotations

import torch

from ..generation.sampling import generated_length, gumbel_noise  # noqa: F401 (measures of generations)
from ..phase.metrics import normalized_entropy

# name -> (alternative of the sign-flip test, unit, what a positive value means)
MEASURES: dict[str, tuple[str, str, str]] = {
    "kl": ("greater", "nats/token", "KL(p_forced || p_free) on the fixed continuations"),
    "entropy": ("two-sided", "U (0-1)", "change in normalised entropy U on the fixed continuations"),
    "nll": ("two-sided", "nats/token", "change in the continuations' negative log-likelihood"),
    "topk": ("greater", "fraction", "1 - top-k overlap along sampled generations"),
    "distinct": ("two-sided", "fraction", "change in distinct-n of sampled generations"),
    "length": ("two-sided", "tokens", "change in the length of sampled generations"),
    "gen_entropy": ("two-sided", "U (0-1)", "change in U along sampled generations"),
    "pref_margin": (
        "two-sided",
        "nats",
        "change in the held-out preference margin log p(chosen) - log p(rejected), per held-out pair",
    ),
}
PREF_MARGIN = "pref_margin"
DIVERGENCES = ("kl", "topk")  # >= 0 by construction: one-sided tests, dose = |R - R_free|
PROBE_PREFIX = "probe:"


def measure_info(name: str) -> tuple[str, str, str]:
    if name.startswith(PROBE_PREFIX):
        c = name[len(PROBE_PREFIX) :]
        return ("two-sided", "score", f"change in the {c!r} concept-probe score on the fixed continuations")
    if name not in MEASURES:
        raise ValueError(f"unknown measure {name!r}; known: {', '.join(MEASURES)} and probe:<concept>")
    return MEASURES[name]


def kl_per_position(logp_p: torch.Tensor, logp_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row for log-probabilities (..., V) -> (...)."""
    lp, lq = logp_p.double(), logp_q.double()
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)


def nll_per_position(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(target) per position: logp (..., V), targets (...) -> (...)."""
    return -logp.double().gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


def entropy_per_position(logits: torch.Tensor) -> torch.Tensor:
    """U = H / log V per position (..., V) -> (...)."""
    return normalized_entropy(logits).double()


def topk_overlap(logits_a: torch.Tensor, logits_b: torch.Tensor, k: int) -> torch.Tensor:
    """|topk(a) ∩ topk(b)| / k per row: (..., V), (..., V) -> (...) in [0, 1]."""
    k = min(k, logits_a.shape[-1])
    ia = logits_a.topk(k, dim=-1).indices  # (..., k)
    ib = logits_b.topk(k, dim=-1).indices  # (..., k)
    hit = (ia.unsqueeze(-1) == ib.unsqueeze(-2)).any(-1)  # (..., k)
    return hit.double().sum(-1) / k


def preference_margin(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> torch.Tensor:
    """log p(chosen) - log p(rejected) per pair: (pairs,), (pairs,) -> (pairs,) float64."""
    return chosen_logps.double() - rejected_logps.double()


def distinct_n(tokens: list[int], n: int) -> float:
    """Unique n-grams / n-grams of one token sequence; 1.0 when it has no n-gram (too short)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 if not grams else len(set(grams)) / len(grams)


def sampling_steps(length: int, max_new: int) -> int:
    """Sampling steps a generation took: its tokens plus the EOS step, at most max_new."""
    return min(length + 1, max_new)
