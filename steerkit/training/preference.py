"""The preference objectives (DPO, ORPO) on prompt / chosen / rejected pairs.

Each step runs the chosen and rejected sequences of batch_size pairs through the model in one
forward (chosen rows first), with the phase core hooked in, and adds lam |U - u_target| over the
completion tokens to the preference loss (objectives.py).

Reference (DPO): log pi_ref of every pair is computed once, before step 1, with the starting model,
core and coupling exactly as they are (no second copy of the model), and stored in the run as
reference.safetensors ("chosen", "rejected": (n_pairs,); "start.*": the starting trainable state)
with reference.json holding a fingerprint of base weights, core, coupling and pair tokens. A resumed
run reloads the starting state, recomputes the fingerprint and, on a mismatch, recomputes the
reference with a warning.

Metrics use TRL's names (rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies,
logps/chosen, logps/rejected) plus R, U, R*U and tone on the chosen and on the rejected completions
separately (chosen/R, rejected/R, ...). Validation runs every held-out pair; its score for the lr
controller and early stopping is minus the held-out reward margin.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RunDirError
from ..phase.couplings import PhaseHook
from ..phase.metrics import normalized_entropy, summarize
from ..stats import bootstrap_ci
from .data import batch_indices
from .objectives import completion_logps, dpo_loss, orpo_loss, orpo_nll
from .pairs import TokenizedPairs, load_pairs, pair_batch, split_pairs, tokenize_pairs
from .protocol import StepOut, TrainerView

log = logging.getLogger(__name__)
REFERENCE = "reference.safetensors"
REFERENCE_META = "reference.json"
SIDE_KEYS = ("R", "U", "RU", "tone", "tone_counts")


def pad_token(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    return int(pad if pad is not None else (eos if eos is not None else 0))


def run_pairs(cfg: Any, tokenizer: Any) -> tuple[TokenizedPairs, list[int], list[int]]:
    """A preference run's pairs, tokenised, and its (train, validation) pair indices."""
    pairs = load_pairs(cfg.pairs)
    tp = tokenize_pairs(tokenizer, pairs, cfg.seq_len, source=str(cfg.pairs))
    train, val = split_pairs(pairs, cfg.val_fraction, cfg.seed)
    return tp, train, val


def _num(x: Any) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def fingerprint(model: torch.nn.Module, start: dict[str, torch.Tensor], pairs_sha: str) -> str:
    """sha256 over every base-model parameter, the starting trainable state and the pair tokens."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda x: x[0]):
        if ".lora_A." in name or ".lora_B." in name:
            continue  # in `start`
        h.update(name.encode())
        h.update(p.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    for k in sorted(start):
        h.update(k.encode())
        h.update(start[k].reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    h.update(pairs_sha.encode())
    return h.hexdigest()


class PreferenceObjective:
    def prepare(self, t: TrainerView) -> dict[str, Any]:
        cfg = t.cfg
        self.kind = cfg.objective
        self.tp, self.train_idx, self.val_idx = run_pairs(cfg, t.lm.tokenizer)
        self.pad = pad_token(t.lm.tokenizer)
        self.ref_chosen: torch.Tensor | None = None
        self.ref_rejected: torch.Tensor | None = None
        return {
            "n_pairs": [len(self.train_idx), len(self.val_idx)],
            "pairs_sha256": self.tp.sha256(),
        }

    # ---- the reference ----------------------------------------------------------------------
    def begin(self, t: TrainerView, fresh: bool) -> None:
        if self.kind != "dpo":
            return
        path, meta_path = t.paths.root / REFERENCE, t.paths.root / REFERENCE_META
        if fresh:
            start = t.trainable_state()
        else:
            if not path.is_file():
                raise RunDirError(f"{path} is missing: the run's DPO reference is gone; start a new run")
            from safetensors.torch import load_file

            stored = load_file(str(path))
            start = {k[len("start.") :]: v for k, v in stored.items() if k.startswith("start.")}
            t.load_trainable(stored, "start.")
            fp = fingerprint(t.model, start, self.tp.sha256())
            try:
                old = json.loads(meta_path.read_text()).get("fingerprint")
            except (OSError, json.JSONDecodeError):
                old = None
            if old == fp and len(stored["chosen"]) == len(self.tp):
                self.ref_chosen, self.ref_rejected = stored["chosen"], stored["rejected"]
                return
            log.warning(
                "the DPO reference in %s does not match this model, core or pairs (fingerprint changed); "
                "recomputing it from the run's starting state",
                path,
            )
        self._compute_reference(t, start, path, meta_path)

    def _compute_reference(self, t: TrainerView, start: dict[str, torch.Tensor], path: Path, meta_path: Path) -> None:
        from ..io import atomic_save_safetensors
        from .runs import write_json

        t0 = time.perf_counter()
        n, bs = len(self.tp), t.cfg.batch_size
        chosen, rejected = torch.zeros(n), torch.zeros(n)
        with t.phase_hook() as hook, torch.no_grad():
            for i in range(0, n, bs):
                idx = list(range(i, min(n, i + bs)))
                sums = self._forward(t, hook, idx)["sums"]
                chosen[idx], rejected[idx] = sums[: len(idx)].cpu(), sums[len(idx) :].cpu()
        seconds = time.perf_counter() - t0
        self.ref_chosen, self.ref_rejected = chosen, rejected
        tensors = {"chosen": chosen, "rejected": rejected, **{f"start.{k}": v for k, v in start.items()}}
        atomic_save_safetensors(tensors, path)
        fp = fingerprint(t.model, start, self.tp.sha256())
        write_json(meta_path, {"fingerprint": fp, "n_pairs": n, "seconds": round(seconds, 3), "model": t.cfg.model})
        log.info("DPO reference log-probs of %d pairs computed in %.1f s", n, seconds)

    # ---- forward and loss ---------------------------------------------------------------------
    def _forward(self, t: TrainerView, hook: PhaseHook, idx: list[int]) -> dict[str, torch.Tensor]:
        ids, att, cm = (x.to(t.device) for x in pair_batch(self.tp, idx, self.pad))  # (2b, T)
        logits = t.model(ids, attention_mask=att, use_cache=False).logits  # (2b, T, V)
        sums, means = completion_logps(logits, ids, cm)  # (2b,), (2b,)
        return {"ids": ids, "att": att, "cm": cm, "logits": logits, "sums": sums, "means": means}

    def _loss(self, t: TrainerView, hook: PhaseHook, idx: list[int]) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg, b = t.cfg, len(idx)
        f = self._forward(t, hook, idx)
        m = f["cm"][:, 1:].float()  # (2b, T-1): positions that predict completion tokens
        u = normalized_entropy(f["logits"][:, :-1])  # (2b, T-1)
        u_loss = ((u - cfg.u_target).abs() * m).sum() / m.sum().clamp_min(1.0)
        extra: dict[str, Any] = {}
        if self.kind == "dpo":
            assert self.ref_chosen is not None and self.ref_rejected is not None
            ref_c = self.ref_chosen[idx].to(f["sums"])
            ref_r = self.ref_rejected[idx].to(f["sums"])
            losses, cr, rr = dpo_loss(f["sums"][:b], f["sums"][b:], ref_c, ref_r, cfg.beta)
            pref = losses.mean()
            lp_c, lp_r = f["sums"][:b].detach(), f["sums"][b:].detach()
        else:
            nll = orpo_nll(f["logits"][:b], f["ids"][:b], f["att"][:b])
            pref, parts = orpo_loss(nll, f["means"][:b], f["means"][b:], cfg.beta)
            cr, rr = parts.pop("chosen_rewards"), parts.pop("rejected_rewards")
            extra = {k: float(v) for k, v in parts.items()}
            lp_c, lp_r = f["means"][:b].detach(), f["means"][b:].detach()
        r = hook.last.r[:, :-1]  # (2b, T-1): R after each token, which shapes the next prediction
        out = {
            "pref": pref,
            "u_loss": u_loss,
            "chosen_rewards": cr,
            "rejected_rewards": rr,
            "logps_chosen": lp_c,
            "logps_rejected": lp_r,
            "r": r,
            "u": u,
            "mask": m,
            "b": b,
            **extra,
        }
        return pref + cfg.lam * u_loss, out

    def _scalars(self, o: dict[str, Any], band: tuple[float, float], prefix: str = "") -> dict[str, Any]:
        cr, rr, b = o["chosen_rewards"], o["rejected_rewards"], o["b"]
        s: dict[str, Any] = {
            f"{prefix}pref_loss": _num(o["pref"]),
            f"{prefix}u_loss": _num(o["u_loss"]),
            f"{prefix}rewards/chosen": float(cr.mean()),
            f"{prefix}rewards/rejected": float(rr.mean()),
            f"{prefix}rewards/margins": float((cr - rr).mean()),
            f"{prefix}rewards/accuracies": float((cr > rr).float().mean()),
            f"{prefix}logps/chosen": float(o["logps_chosen"].mean()),
            f"{prefix}logps/rejected": float(o["logps_rejected"].mean()),
        }
        for k in ("nll_loss", "log_odds_ratio", "log_odds_chosen"):
            if k in o:
                s[prefix + k] = o[k]
        for side, rows in (("chosen", slice(0, b)), ("rejected", slice(b, 2 * b))):
            summ = summarize(o["r"][rows], o["u"][rows], band, o["mask"][rows])
            s.update({f"{prefix}{side}/{k}": summ[k] for k in SIDE_KEYS if k in summ})
        return s

    def step(self, t: TrainerView, hook: PhaseHook, step: int) -> StepOut:
        cfg = t.cfg
        pos = batch_indices(step, len(self.train_idx), cfg.batch_size, cfg.seed).tolist()
        idx = [self.train_idx[i] for i in pos]
        loss, o = self._loss(t, hook, idx)
        return StepOut(loss, self._scalars(o, cfg.r_band), o["r"], o["u"], o["mask"])

    def validate(self, t: TrainerView, hook: PhaseHook) -> tuple[dict[str, Any], float]:
        cfg = t.cfg
        parts: list[dict[str, Any]] = []
        losses: list[float] = []
        with torch.no_grad():
            for i in range(0, len(self.val_idx), cfg.batch_size):
                loss, o = self._loss(t, hook, self.val_idx[i : i + cfg.batch_size])
                parts.append(o)
                losses.append(float(loss) * o["b"])
        b = sum(o["b"] for o in parts)

        def cat(k: str) -> torch.Tensor:
            return torch.cat([o[k] for o in parts])

        merged: dict[str, Any] = {
            "pref": sum(float(o["pref"]) * o["b"] for o in parts) / b,
            "u_loss": sum(float(o["u_loss"]) * o["b"] for o in parts) / b,
            "b": b,
            **{k: cat(k) for k in ("chosen_rewards", "rejected_rewards", "logps_chosen", "logps_rejected")},
        }
        for k in ("nll_loss", "log_odds_ratio", "log_odds_chosen"):
            if k in parts[0]:
                merged[k] = sum(o[k] * o["b"] for o in parts) / b
        width = max(o["r"].shape[1] for o in parts)

        def padded(k: str, chosen: bool) -> torch.Tensor:
            xs = [o[k][: o["b"]] if chosen else o[k][o["b"] :] for o in parts]
            return torch.cat([torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in xs])

        for k in ("r", "u", "mask"):
            merged[k] = torch.cat([padded(k, True), padded(k, False)])
        out = self._scalars(merged, cfg.r_band, "val/")
        acc = (merged["chosen_rewards"] > merged["rejected_rewards"]).double().numpy()
        lo, hi = bootstrap_ci(acc, 2000, 0.95, np.random.default_rng(cfg.seed))
        out["val/rewards/accuracies_ci"] = [float(lo), float(hi)]
        out["val_loss"] = sum(losses) / b
        out["val_pairs"] = b
        return out, -out["val/rewards/margins"]
