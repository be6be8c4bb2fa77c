"""The phase-core training loop: L = CE + lam * |U - U_target|, diagnostics, checkpoints, resume.

`train(config, run_dir)` starts a run; `resume(run_dir)` continues one from its newest valid
checkpoint and produces exactly the losses an uninterrupted run would have (batches are a pure
function of (seed, step); parameters, optimizer, lr controller and RNG states are restored).
SIGINT/SIGTERM finish the current step, save a checkpoint and return status 'interrupted'.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import RunDirError
from ..phase.couplings import PhaseHook
from ..phase.metrics import normalized_entropy, summarize
from . import checkpoint as ck
from . import diagnostics as dg
from . import lora
from .config import TrainConfig, TrainingConfigError
from .data import batch_indices, load_texts, make_chunks
from .runs import KIND, RunPaths, build_phase, load_direction, read_config, resolve_layer, save_final, write_json

log = logging.getLogger(__name__)
StepCallback = Callable[[int, dict[str, Any]], Any]  # return "stop" to stop after this step


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # 'finished' | 'early_stopped' | 'interrupted'
    step: int
    best_val: float | None
    stop_reason: str | None
    signal: int | None = None


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    lm: Any = None,
    device: str = "cpu",
    on_step: StepCallback | None = None,
    handle_signals: bool = True,
) -> TrainResult:
    """Start a new run in run_dir (which must not hold a run already)."""
    d = Path(run_dir)
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise RunDirError(f"{d} already exists; continue it with --resume or choose another --name")
    return _Trainer(config, d, lm, device, on_step, handle_signals, resume=False).run()


def resume(
    run_dir: str | Path,
    *,
    lm: Any = None,
    device: str = "cpu",
    steps: int | None = None,
    on_step: StepCallback | None = None,
    handle_signals: bool = True,
) -> TrainResult:
    """Continue the run in run_dir from its newest valid checkpoint (steps: a new total)."""
    d = Path(run_dir)
    config, _ = read_config(d)
    if steps is not None:
        config = config.replace(steps=steps)
    return _Trainer(config, d, lm, device, on_step, handle_signals, resume=True).run()


class _Trainer:
    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        lm: Any,
        device: str,
        on_step: StepCallback | None,
        handle_signals: bool,
        resume: bool,
    ) -> None:
        self.cfg, self.paths, self.on_step = config, RunPaths(run_dir), on_step
        self.handle_signals, self.resuming = handle_signals, resume
        if lm is None:
            from ..models import load

            lm = load(config.model, dtype=config.dtype, device=device)
        self.lm = lm
        self._signal: int | None = None
        self.recent: list[float] = []

    # ---- set-up --------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg, lm = self.cfg, self.lm
        model, adapter = lm.model, lm.adapter
        n_blocks = adapter.n_blocks(model)
        self.layer = resolve_layer(cfg.layer, n_blocks)
        self.cfg = cfg = cfg.replace(layer=self.layer)
        bad = [i for i in cfg.unfreeze if not -n_blocks <= i < n_blocks]
        if bad:
            raise RunDirError(f"--unfreeze {bad}: the model has blocks 0..{n_blocks - 1}")
        self.hidden = int(model.get_input_embeddings().weight.shape[1])
        texts = load_texts(cfg.texts)
        self.chunks = make_chunks(lm.tokenizer, texts, cfg.seq_len, cfg.val_fraction, cfg.seed)
        self.device = next(model.parameters()).device
        if not self.resuming:
            torch.manual_seed(cfg.seed)
            random.seed(cfg.seed)
            np.random.seed(cfg.seed)
        direction = None
        if cfg.direction:
            direction = load_direction(cfg.direction, self.layer, self.hidden)
        self.core, self.coupling, self.module = build_phase(cfg, self.hidden, direction)
        self.module.to(self.device)
        # freeze the base, unfreeze the named blocks (restored in run()'s finally)
        for p in model.parameters():
            p.requires_grad_(False)
        self.base_params: dict[str, torch.nn.Parameter] = {}
        self.groups: dict[str, list[torch.nn.Parameter]] = {
            "phase": [p for p in self.module.parameters() if p.requires_grad]
        }
        names = {id(p): n for n, p in model.named_parameters()}
        for i in sorted({b % n_blocks for b in cfg.unfreeze}):
            kind = adapter.block_info(model, i).kind
            for p in adapter.blocks(model)[i].parameters():
                p.requires_grad_(True)
                self.base_params[names[id(p)]] = p
                self.groups.setdefault(kind, []).append(p)
        self.lora_targets: list[str] = []
        if cfg.lora_rank:
            lora_blocks = sorted({b % n_blocks for b in cfg.lora_blocks} or range(n_blocks))
            bad = [i for i in cfg.lora_blocks if not -n_blocks <= i < n_blocks]
            both = sorted(set(lora_blocks) & {b % n_blocks for b in cfg.unfreeze})
            if bad or both:
                raise RunDirError(
                    f"--lora-blocks {bad}: the model has blocks 0..{n_blocks - 1}"
                    if bad
                    else f"blocks {both} are both unfrozen and LoRA-adapted; choose one per block"
                )
            self.lora_targets = lora.lora_targets(model, adapter, lora_blocks)
            self.groups["lora"] = lora.inject(model, self.lora_targets, cfg.lora_rank, cfg.lora_alpha)
        param_groups: list[dict[str, Any]] = [{"params": self.groups["phase"], "lr": cfg.lr}]
        if self.base_params:
            param_groups.append({"params": list(self.base_params.values()), "lr": cfg.base_lr})
        if self.lora_targets:
            param_groups.append({"params": self.groups["lora"], "lr": cfg.lora_lr})
        self.base_lrs = [g["lr"] for g in param_groups]
        self.opt = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)
        self.ctl = dg.LRController()
        self.resolved = {
            "layer": self.layer,
            "n_blocks": n_blocks,
            "hidden_size": self.hidden,
            "family": adapter.family,
            "block_kind": adapter.block_info(model, self.layer).kind,
            "model_fingerprint": lm.info.get("fingerprint"),
            "n_texts": list(self.chunks.n_texts),
            "n_chunks": [len(self.chunks.train), len(self.chunks.val)],
            "trainable": {k: sum(p.numel() for p in v) for k, v in self.groups.items()},
            "lora_targets": self.lora_targets,
        }

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        out = {f"phase.{k}": v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
        out.update({f"base.{k}": p.detach().cpu().clone() for k, p in self.base_params.items()})
        out.update({f"lora.{k}": p.detach().cpu().clone() for k, p in lora.lora_state(self.lm.model).items()})
        return out

    # ---- checkpoints ---------------------------------------------------------------------
    def _save(self, step: int, last: dict[str, Any]) -> None:
        tensors = {f"param.{k}": v for k, v in self._trainable_state().items()}
        opt_t, opt_meta = ck.flatten_optimizer(self.opt.state_dict())
        rng_t, rng_meta = ck.rng_state()
        tensors.update(opt_t)
        tensors.update(rng_t)
        meta = {"metrics": last, "optimizer": opt_meta, "controller": self.ctl.state(), "rng": rng_meta}
        ck.save_checkpoint(self.paths.checkpoints, step, tensors, meta, self.cfg.keep_last)

    def _restore(self) -> int:
        c = ck.latest_checkpoint(self.paths.checkpoints)
        if c is None:
            raise RunDirError(f"{self.paths.root} has no usable checkpoint to resume from; start a new run")
        phase = {k[len("param.phase.") :]: v for k, v in c.tensors.items() if k.startswith("param.phase.")}
        self.module.load_state_dict(phase, strict=True)
        with torch.no_grad():
            for k, p in self.base_params.items():
                p.copy_(c.tensors[f"param.base.{k}"].to(p))
            for k, lp in lora.lora_state(self.lm.model).items():
                lp.copy_(c.tensors[f"param.lora.{k}"].to(lp))
        self.opt.load_state_dict(ck.unflatten_optimizer(c.tensors, c.meta["optimizer"]))
        self.ctl = dg.LRController.from_state(c.meta["controller"])
        ck.set_rng_state(c.tensors, c.meta["rng"])
        lines = _read_metrics(self.paths.metrics)
        kept = [m for m in lines if int(m.get("step", 0)) <= c.step]
        write_json_lines(self.paths.metrics, kept)
        self.recent = [m["loss"] for m in kept if m["step"] > self.ctl.last_eval_step]
        log.info("resuming %s from step %d", self.paths.root, c.step)
        return c.step

    # ---- one step ------------------------------------------------------------------------
    def _loss(self, hook: PhaseHook, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.lm.model(ids, use_cache=False).logits[:, :-1].float()  # (batch, seq-1, V)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        u = normalized_entropy(logits)  # (batch, seq-1)
        u_loss = (u - self.cfg.u_target).abs().mean()
        return ce + self.cfg.lam * u_loss, {"ce": ce, "u_loss": u_loss, "u": u, "r": hook.last.r[:, :-1]}

    def _validate(self, hook: PhaseHook) -> dict[str, float]:
        val = self.chunks.val
        n = min(len(val), self.cfg.val_batches * self.cfg.batch_size)
        tot, ces = [], []
        with torch.no_grad():
            for i in range(0, n, self.cfg.batch_size):
                loss, parts = self._loss(hook, val[i : min(n, i + self.cfg.batch_size)].to(self.device))
                tot.append(float(loss))
                ces.append(float(parts["ce"]))
        return {"val_loss": sum(tot) / len(tot), "val_ce": sum(ces) / len(ces)}

    def _step(self, hook: PhaseHook, step: int, captured: dict[str, torch.Tensor]) -> dict[str, Any]:
        cfg = self.cfg
        for g, base in zip(self.opt.param_groups, self.base_lrs, strict=True):
            g["lr"] = base * self.ctl.lr_scale
        idx = batch_indices(step, len(self.chunks.train), cfg.batch_size, cfg.seed)
        ids = self.chunks.train[idx].to(self.device)  # (batch, seq)
        t0 = time.perf_counter()
        loss, parts = self._loss(hook, ids)
        if not math.isfinite(loss.item()):  # before the update, so the last checkpoint stays usable
            raise TrainingConfigError(f"the loss became {loss.item()} at step {step}; lower --lr or --alpha")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norms = dg.grad_norms(self.groups)
        all_params = [p for ps in self.groups.values() for p in ps]
        torch.nn.utils.clip_grad_norm_(all_params, cfg.grad_clip)
        self.opt.step()
        ratios, ratio_flag = dg.grad_ratios(norms, cfg.grad_ratio_band)
        out = hook.last
        watched = {"phase.drive": out.drive, "phase.R": out.r, **captured}
        _, r_col = dg.r_collapse(parts["r"])  # summarize() reports the share as R_above_099
        m: dict[str, Any] = {
            "step": step,
            "loss": loss.item(),
            "ce": parts["ce"].item(),
            "u_loss": parts["u_loss"].item(),
            "lr": self.opt.param_groups[0]["lr"],
            **summarize(parts["r"], parts["u"], cfg.r_band),
            "grad_norm": norms,
            "grad_ratio": ratios,
            "grad_ratio_flag": ratio_flag,
            "collapsed": dg.collapsed(watched, cfg.collapse_threshold),
            "r_collapse": r_col,
            "step_seconds": round(time.perf_counter() - t0, 4),
        }
        return m

    # ---- the run -------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self._requires_grad = {n: p.requires_grad for n, p in self.lm.model.named_parameters()}
        self.lora_targets = []
        old_handlers: dict[int, Any] = {}
        handles: list[Any] = []
        try:
            self._setup()
            self.recent = []
            start = 0
            if self.resuming:
                start = self._restore()
            else:
                self.paths.root.mkdir(parents=True, exist_ok=True)
                cfg_json = {"kind": KIND, "config": self.cfg.to_dict(), "resolved": self.resolved}
                write_json(self.paths.config, cfg_json)
            old_handlers = self._install_signals()
            return self._loop(start, handles)
        finally:
            for h in handles:
                h.remove()
            self._restore_signals(old_handlers)
            lora.remove(self.lm.model, self.lora_targets, merge=False)  # the model as it was
            for n, p in self.lm.model.named_parameters():
                p.requires_grad_(self._requires_grad[n])

    def _loop(self, start: int, handles: list[Any]) -> TrainResult:
        cfg, paths = self.cfg, self.paths
        plateau_steps = max(2 * cfg.val_every, round(cfg.plateau_share * cfg.steps))
        warned: set[str] = set()
        status, step, saved, last = "finished", start, start, {}
        model, adapter = self.lm.model, self.lm.adapter
        captured: dict[str, torch.Tensor] = {}
        with PhaseHook(self.lm, self.core, self.coupling, self.layer) as hook:
            for i in sorted({self.layer, *(b % adapter.n_blocks(model) for b in cfg.unfreeze)}):
                handles.append(adapter.blocks(model)[i].register_forward_hook(_keeper(adapter, captured, f"block{i}")))
            for step in range(start + 1, cfg.steps + 1):
                last = self._step(hook, step, captured)
                self.recent.append(last["loss"])
                self._warn(last, warned)
                if step % cfg.val_every == 0 or step == cfg.steps:
                    last.update(self._validate(hook))
                    last["train_loss_avg"] = sum(self.recent) / len(self.recent)
                    self.recent = []
                    last["events"] = self.ctl.update(
                        step,
                        last["val_loss"],
                        patience=cfg.patience,
                        plateau_steps=plateau_steps,
                        factor=cfg.lr_factor,
                        max_bad=cfg.max_bad_reductions,
                    )
                _append_metrics(paths.metrics, last)
                stop_cb = self.on_step(step, last) if self.on_step else None
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    self._save(step, last)
                    saved = step
                if self.ctl.stop_reason:
                    status = "early_stopped"
                    break
                if self._signal is not None or stop_cb == "stop":
                    status = "interrupted"
                    break
        if saved != step and step > start:
            self._save(step, last)
        if status != "interrupted":
            info = {
                "status": status,
                "step": step,
                "best_val": self.ctl.state()["best_val"],
                "best_step": self.ctl.best_step,
                "stop_reason": self.ctl.stop_reason,
            }
            save_final(paths, self._trainable_state(), cfg, self.resolved, info)
        best = self.ctl.state()["best_val"]
        return TrainResult(paths.root, status, step, best, self.ctl.stop_reason, self._signal)

    def _warn(self, m: dict[str, Any], warned: set[str]) -> None:
        for name in m["collapsed"]:
            if name not in warned:
                warned.add(name)
                log.warning("activation collapse: %s has near-zero variance across tokens (step %d)", name, m["step"])
        if m["r_collapse"] and "R" not in warned:
            warned.add("R")
            log.warning("R collapse: R > 0.99 on %.0f%% of tokens (step %d)", 100 * m["R_above_099"], m["step"])
        if m["grad_ratio_flag"] and "ratio" not in warned:
            warned.add("ratio")
            log.warning(
                "gradient-norm ratio phase/base %s outside %s (step %d)",
                m["grad_ratio"],
                self.cfg.grad_ratio_band,
                m["step"],
            )

    # ---- signals -------------------------------------------------------------------------
    def _install_signals(self) -> dict[int, Any]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            log.warning("signal %d: finishing the step, saving a checkpoint, then stopping", signum)
            self._signal = signum

        old: dict[int, Any] = {}
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, handler)
        return old

    @staticmethod
    def _restore_signals(old: dict[int, Any]) -> None:
        for s, h in old.items():
            signal.signal(s, h)


def _keeper(adapter: Any, store: dict[str, torch.Tensor], name: str) -> Callable[..., None]:
    def hook(module: Any, args: Any, output: Any) -> None:
        store[name] = adapter.get_hidden(output).detach()

    return hook


def _append_metrics(path: Path, m: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(m) + "\n")
        f.flush()


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    return out


def write_json_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    from ..io import atomic_write_bytes

    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
