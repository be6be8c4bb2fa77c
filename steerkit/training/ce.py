"""The CE + uncertainty-regulation objective on fixed-length chunks of text (the default)."""

from __future__ import annotations

from typing import Any

import torch

from ..phase.couplings import PhaseHook
from .data import batch_indices, load_texts, make_chunks
from .objectives import ce_u_loss
from .protocol import StepOut, TrainerView


class CEObjective:
    """L = CE + lam |U - u_target| on chunks of seq_len tokens; validation: the same loss on
    val_batches batches of held-out texts."""

    def prepare(self, t: TrainerView) -> dict[str, Any]:
        cfg = t.cfg
        self.chunks = make_chunks(t.lm.tokenizer, load_texts(cfg.texts), cfg.seq_len, cfg.val_fraction, cfg.seed)
        return {"n_texts": list(self.chunks.n_texts), "n_chunks": [len(self.chunks.train), len(self.chunks.val)]}

    def begin(self, t: TrainerView, fresh: bool) -> None:
        return None

    def _loss(self, t: TrainerView, hook: PhaseHook, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = t.lm.model(ids, use_cache=False).logits  # (batch, seq, V)
        loss, parts = ce_u_loss(logits, ids, t.cfg.lam, t.cfg.u_target)
        parts["r"] = hook.last.r[:, :-1]
        return loss, parts

    def step(self, t: TrainerView, hook: PhaseHook, step: int) -> StepOut:
        cfg = t.cfg
        idx = batch_indices(step, len(self.chunks.train), cfg.batch_size, cfg.seed)
        ids = self.chunks.train[idx].to(t.device)  # (batch, seq)
        loss, parts = self._loss(t, hook, ids)
        return StepOut(loss, {"ce": parts["ce"].item(), "u_loss": parts["u_loss"].item()}, parts["r"], parts["u"])

    def validate(self, t: TrainerView, hook: PhaseHook) -> tuple[dict[str, Any], float]:
        cfg, val = t.cfg, self.chunks.val
        n = min(len(val), cfg.val_batches * cfg.batch_size)
        tot, ces = [], []
        with torch.no_grad():
            for i in range(0, n, cfg.batch_size):
                loss, parts = self._loss(t, hook, val[i : min(n, i + cfg.batch_size)].to(t.device))
                tot.append(float(loss))
                ces.append(float(parts["ce"]))
        out = {"val_loss": sum(tot) / len(tot), "val_ce": sum(ces) / len(ces)}
        return out, out["val_loss"]
