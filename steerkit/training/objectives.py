"""Training objectives as pure functions: CE + uncertainty regulation, DPO, ORPO.

CE + U (the phase core's default objective):
    L = CE + lam * mean_tokens |U - u_target|,   U = H(p) / log V  (phase/metrics.py)

DPO, sigmoid loss (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7):
    L_DPO = -E log sigma( beta * [ (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)) ] )
with log pi(y|x) the sum of the completion's token log-probs. Implicit rewards (their eq. 5 without
the partition function): r(y) = beta * (log pi(y|x) - log pi_ref(y|x)). When the policy is its own
reference every reward is 0 and L = log 2.

ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
eqs. 4-7), as TRL 1.16 implements it:
    odds(y|x) = P(y|x) / (1 - P(y|x)),  log P(y|x) = the completion's *mean* token log-prob
    log OR = log odds(y_w|x) - log odds(y_l|x)
           = (log P_w - log P_l) - (log(1 - P_w) - log(1 - P_l))
    L_ORPO = L_NLL(chosen) - beta * mean log sigma(log OR)
where TRL's L_NLL is the token-mean cross-entropy over the whole chosen sequence (prompt tokens
included) and beta is the paper's lambda. Rewards are beta * log P (no reference model).

Shapes: logits (batch, seq, V); ids / masks (batch, seq); per-sequence values (batch,).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..phase.metrics import normalized_entropy

LN2 = math.log(2.0)


def ce_u_loss(
    logits: torch.Tensor, ids: torch.Tensor, lam: float, u_target: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = CE + lam |U - u_target| for next-token prediction on unpadded chunks.
    logits (batch, seq, V) of ids (batch, seq) -> (scalar, parts with u (batch, seq-1))."""
    lg = logits[:, :-1].float()  # (batch, seq-1, V)
    ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1).to(lg.device))  # sharded: head's device
    u = normalized_entropy(lg)  # (batch, seq-1)
    u_loss = (u - u_target).abs().mean()
    return ce + lam * u_loss, {"ce": ce, "u_loss": u_loss, "u": u}


def token_logps(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[t+1] | ids[:t+1]) per position: logits (b, T, V), ids (b, T) -> (b, T-1)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (b, T-1, V)
    return logp.gather(-1, ids[:, 1:].long().unsqueeze(-1).to(logp.device)).squeeze(-1)


def completion_logps(
    logits: torch.Tensor, ids: torch.Tensor, completion_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, mean) of the completion tokens' log-probs per sequence.
    completion_mask (b, T): 1 on completion tokens (never on padding) -> (b,), (b,)."""
    tl = token_logps(logits, ids)  # (b, T-1)
    m = completion_mask[:, 1:].to(tl.device, tl.dtype)  # (b, T-1): which predicted tokens are completion
    total = (tl * m).sum(-1)  # (b,)
    return total, total / m.sum(-1).clamp_min(1.0)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO sigmoid loss per pair and the implicit rewards. All inputs (pairs,) summed log-probs.
    Returns (losses (pairs,), chosen_rewards (pairs,), rejected_rewards (pairs,)); rewards detached."""
    chosen_ratio = chosen_logps - ref_chosen_logps  # (pairs,)
    rejected_ratio = rejected_logps - ref_rejected_logps  # (pairs,)
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))  # (pairs,)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (Maechler 2012)."""
    return torch.where(x < -LN2, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_odds_ratio(
    chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log sigma(log OR), log OR) per pair from the mean token log-probs (pairs,) -> (pairs,), (pairs,)."""
    c, r = chosen_mean_logps.float(), rejected_mean_logps.float()
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))  # (pairs,)
    return F.logsigmoid(log_odds), log_odds


def orpo_nll(logits: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """TRL's ORPO NLL: token-mean cross-entropy over every real token of the chosen sequences
    (prompt included). logits (b, T, V), ids / attention_mask (b, T) -> scalar."""
    labels = torch.where(attention_mask.bool(), ids, torch.full_like(ids, -100))[:, 1:]  # (b, T-1)
    lg = logits[:, :-1].float()
    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), labels.reshape(-1).to(lg.device), ignore_index=-100)


def orpo_loss(
    nll: torch.Tensor, chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = NLL - beta * mean log sigma(log OR); parts: the odds-ratio terms and rewards beta * log P."""
    ratio, log_odds = orpo_odds_ratio(chosen_mean_logps, rejected_mean_logps)
    loss = nll - beta * ratio.mean()
    return loss, {
        "nll_loss": nll.detach(),
        "log_odds_ratio": ratio.detach().mean(),
        "log_odds_chosen": log_odds.detach().mean(),
        "chosen_rewards": beta * chosen_mean_logps.detach().float(),
        "rejected_rewards": beta * rejected_mean_logps.detach().float(),
    }
