"""Apparatus checks run before any long job: are the weights really loaded, is generation
not degenerate, does the tokenizer round-trip?

Verdict rules (documented in docs/preflight.md):
- missing or unexpected checkpoint keys -> fail, naming them;
- reference-text loss ratio = mean next-token loss / log(vocab) on a fixed English paragraph.
  A model predicting no better than uniform has ratio ~1.0 (random init); trained models sit
  far below (SmolLM2-135M ~0.2, the byte-level tiny RWKV ~0.42). Ratio > 0.9 -> fail;
- greedy generation of 40 tokens from 2 fixed prompts is *degenerate* when the share of repeated
  3-grams exceeds 0.6 or the share of distinct tokens is below 0.2. Degenerate generation fails
  the check unless the loss ratio is below 0.75 (a small trained model that loops greedily, such
  as the 660k RWKV), in which case it is a warning.
`allow_untrained=True` turns the loss and generation failures into warnings (random test models).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import PreflightError
from .loading import LoadedModel

PROMPTS = ("The capital of France is", "Once upon a time, in a small village,")
REFERENCE = (
    "The sun rose over the quiet town. People walked to work, children went to school, and the "
    "baker opened his shop early in the morning. It was a normal day, and nothing unusual happened."
)
ROUND_TRIP = "Hello, world! Ünïcödé 123 — steering vectors."
MAX_NEW_TOKENS = 40
REPEAT_THRESHOLD = 0.6
DISTINCT_THRESHOLD = 0.2
LOSS_FAIL = 0.9
LOSS_TRAINED = 0.75


@dataclass
class PreflightReport:
    ok: bool
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    table: dict[str, Any] = field(default_factory=dict)
    generations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def repeated_ngram_share(tokens: list[int], n: int = 3) -> float:
    """Share of n-grams that repeat an earlier n-gram in the same sequence (0 = none)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def distinct_share(tokens: list[int]) -> float:
    return len(set(tokens)) / len(tokens) if tokens else 0.0


def reference_loss_ratio(lm: LoadedModel) -> float:
    """Mean next-token NLL on REFERENCE divided by log(vocab size)."""
    ids = lm.tokenizer(REFERENCE, return_tensors="pt").input_ids.to(lm.input_device)
    with torch.inference_mode():
        logits = lm.model(ids).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
    return nll / math.log(logits.shape[-1])


def run(lm: LoadedModel, *, allow_untrained: bool = False) -> PreflightReport:
    """Run every check; never raises (see `check` for the raising form)."""
    rep = PreflightReport(ok=True)
    t0 = time.perf_counter()
    info = lm.info
    if info.get("missing_keys"):
        keys = info["missing_keys"]
        rep.failures.append(
            f"weights not loaded: {len(keys)} missing keys ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})"
        )
    if info.get("unexpected_keys"):
        keys = info["unexpected_keys"]
        rep.failures.append(f"unexpected keys in the checkpoint: {', '.join(keys[:5])}")

    tok = lm.tokenizer
    ids = tok(ROUND_TRIP).input_ids
    decoded = tok.decode(ids, skip_special_tokens=True)
    if decoded.strip() != ROUND_TRIP.strip():
        rep.warnings.append(f"tokenizer round trip changed the text: {decoded!r}")
    if info.get("pad_token_note"):
        rep.warnings.append(str(info["pad_token_note"]))

    ratio = reference_loss_ratio(lm)
    untrained_msgs: list[str] = []
    if ratio > LOSS_FAIL:
        untrained_msgs.append(
            f"reference-text loss is {ratio:.2f} x log(vocab), no better than uniform guessing: "
            "are the pretrained weights loaded?"
        )
    worst = ""
    rep_shares, dist_shares = [], []
    for prompt in PROMPTS:
        enc = tok(prompt, return_tensors="pt").to(lm.input_device)
        with torch.inference_mode():
            out = lm.model.generate(
                **enc,
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                min_new_tokens=MAX_NEW_TOKENS,
            )
        new = out[0, enc.input_ids.shape[1] :].tolist()
        text = tok.decode(new, skip_special_tokens=True)
        rep.generations.append(text)
        rep_shares.append(repeated_ngram_share(new))
        dist_shares.append(distinct_share(new))
        if rep_shares[-1] == max(rep_shares):
            worst = text
    rep_share, dist_share = max(rep_shares), min(dist_shares)
    degenerate = rep_share > REPEAT_THRESHOLD or dist_share < DISTINCT_THRESHOLD
    if degenerate:
        msg = (
            f'generation is degenerate ("{_snippet(worst)}", repeated 3-grams {rep_share:.0%}, '
            f"distinct tokens {dist_share:.0%}): are the pretrained weights loaded?"
        )
        if ratio < LOSS_TRAINED:
            rep.warnings.append(
                msg.replace(": are the pretrained weights loaded?", "")
                + f"; the reference loss ratio {ratio:.2f} shows trained weights (a small model)"
            )
        else:
            untrained_msgs.append(msg)
    if untrained_msgs:
        if allow_untrained:
            rep.warnings.extend(m + " (allowed: --allow-untrained)" for m in untrained_msgs)
        else:
            rep.failures.extend(
                m + " (to study an untrained model on purpose: --allow-untrained)" for m in untrained_msgs
            )

    desc = lm.adapter.describe(lm.model)
    rep.table = {
        "model": info.get("spec"),
        "family": desc["family"],
        "blocks": desc["n_blocks"],
        "block kinds": desc["block_kinds"],
        "hidden size": lm.adapter.hidden_size(lm.model),
        "heads per mixer": ", ".join(
            f"{h['kind']}: {h['n_heads']}x{h['head_dim']}" if h.get("n_heads") else f"{h['kind']}: no heads"
            for h in desc["heads"]  # type: ignore[union-attr]
        ),
        "MLP down": "x".join(map(str, desc["mlp_down_shape"])) if desc["mlp_down_shape"] else "none",
        "dtype": info.get("dtype"),
        "device": info.get("device"),
        "parameters": info.get("n_params"),
        "load seconds": info.get("load_seconds"),
        "reference loss ratio": round(ratio, 3),
        "repeated 3-grams": round(rep_share, 3),
        "distinct tokens": round(dist_share, 3),
        "padding side": info.get("padding_side"),
        "check seconds": round(time.perf_counter() - t0, 2),
    }
    if desc.get("block_kind_pattern"):
        rep.table["block pattern"] = "".join(k[0].upper() for k in desc["block_kind_pattern"])  # type: ignore[union-attr]
    if desc.get("attention_windows"):  # Gemma 2/3: L = sliding-window (local) attention, G = global
        windows: list[int | None] = desc["attention_windows"]  # type: ignore[assignment]
        sizes = sorted({w for w in windows if w})
        rep.table["attention pattern"] = "".join("L" if w else "G" for w in windows) + (
            f" (L: window {', '.join(map(str, sizes))} tokens)"
        )
    rep.ok = not rep.failures
    return rep


def check(lm: LoadedModel, *, allow_untrained: bool = False) -> PreflightReport:
    """Run the checks; raise PreflightError with the first failure."""
    rep = run(lm, allow_untrained=allow_untrained)
    if not rep.ok:
        raise PreflightError(rep.failures[0])
    return rep


def _snippet(text: str, n: int = 30) -> str:
    t = " ".join(text.split())
    return t[:n] + (" ..." if len(t) > n else "")
