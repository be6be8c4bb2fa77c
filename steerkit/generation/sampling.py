"""Samplers: pure functions of logits and per-row seeds, and the LogitsProcessors that apply them.

Sampling is exact and seed-per-row: Gumbel noise from each row's own torch.Generator is added to
logits / T, so argmax draws from softmax(logits / T) (the Gumbel-max trick; Gumbel 1954, Maddison et
al. 2014). Row r depends only on its seed, never on the global RNG nor on the other rows, so a row
sampled in a batch equals the same row sampled alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..phase.metrics import normalized_entropy


def gumbel_noise(n: int, generators: list[torch.Generator]) -> torch.Tensor:
    """Standard Gumbel noise -log(-log U), one row of n per generator: (rows, n) float32.
    argmax(logits / T + G) is a draw from softmax(logits / T). Row r depends only on generators[r].
    float32 uniforms resolve 2^-24, which truncates the noise at about 16.6: probabilities below ~1e-7
    are not represented exactly."""
    u = torch.stack([torch.rand(n, generator=g) for g in generators])  # (rows, n)
    return -torch.log(-torch.log(u.clamp_min(1e-38)))


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """One row's logits (V,) with tokens outside the top-k and outside the nucleus (the smallest set
    whose probability reaches top_p; Holtzman et al. 2020) set to -inf. top_k 0 and top_p 1: unchanged."""
    out = logits
    if 0 < top_k < out.shape[-1]:
        kth = out.topk(top_k).values[-1]
        out = out.masked_fill(out < kth, -torch.inf)
    if top_p < 1.0:
        sorted_logits, order = out.sort(descending=True)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, -1) >= top_p  # tokens after the nucleus is full
        out = out.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), -torch.inf)
    return out


def sample_rows(
    logits: torch.Tensor,
    temperature: list[float],
    top_k: list[int],
    top_p: list[float],
    generators: list[torch.Generator | None],
) -> torch.Tensor:
    """The next token of each row: (rows,) long. logits (rows, V) float. Row r is greedy (argmax) when
    temperature[r] == 0, else a draw from softmax(filtered logits / T) by Gumbel-max with generators[r]."""
    out = logits.argmax(-1)
    for r, t in enumerate(temperature):
        if t > 0:
            g = generators[r]
            assert g is not None, "a sampled row needs its generator"
            row = filter_top_k_top_p(logits[r].float() / t, top_k[r], top_p[r])
            out[r] = int((row + gumbel_noise(row.shape[-1], [g])[0].to(row.device)).argmax())
    return out


class Greedy:
    """The identity LogitsProcessor: generate()'s argmax is then greedy decoding."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores


class Sampler:
    """A transformers LogitsProcessor for seeded sampling at one temperature; it records each step's
    normalised entropy U = H / log V (rows,) and top-k token ids (rows, k). replay (rows, G): force these tokens instead."""

    def __init__(self, seeds: list[int], temperature: float, k: int, replay: torch.Tensor | None = None) -> None:
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature, self.k, self.replay = temperature, k, replay
        self.u: list[torch.Tensor] = []  # per step (rows,)
        self.top: list[torch.Tensor] = []  # per step (rows, k)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t = len(self.u)
        self.u.append(normalized_entropy(scores).double().cpu())
        self.top.append(scores.topk(min(self.k, scores.shape[-1]), dim=-1).indices.cpu())
        if self.replay is not None:
            out = torch.full_like(scores, -torch.inf)
            out.scatter_(1, self.replay[:, t : t + 1].to(scores.device), 0.0)
            return out
        noise = gumbel_noise(scores.shape[-1], self.gens).to(scores.device)  # (rows, V)
        return (scores.float() / self.temperature + noise).to(scores.dtype)


@dataclass(frozen=True)
class GenSpec:
    """How continuations are drawn: max_new tokens, seeded sampling at `temperature` or greedy."""

    max_new: int
    temperature: float = 1.0
    greedy: bool = False

    def processor(self, seeds: list[int]) -> Greedy | Sampler:
        return Greedy() if self.greedy else Sampler(seeds, self.temperature, 1)


def generated_length(new_tokens: list[int], eos: int | None) -> int:
    """Tokens before the first EOS (all of them when there is none)."""
    if eos is None or eos not in new_tokens:
        return len(new_tokens)
    return new_tokens.index(eos)


def trim(tokens: torch.Tensor, eos: int | None) -> list[list[int]]:
    """Each row's tokens before the first EOS."""
    return [(t := row.tolist())[: generated_length(t, eos)] for row in tokens]
