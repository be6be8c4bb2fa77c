"""The training loop, shared by every objective: set-up, steps, validation-driven lr control,
checkpoints, exact resume, signals.

`train(config, run_dir)` starts a run; `resume(run_dir)` continues one from its newest valid
checkpoint and produces exactly the losses an uninterrupted run would have (batches are a pure
function of (seed, step); parameters, optimizer, lr controller and RNG states are restored).
SIGINT/SIGTERM finish the current step, save a checkpoint and return status 'interrupted'.

The objective (ce.py: CE + U on text chunks; preference.py: DPO / ORPO on pairs) supplies the
data, the loss of one step and the validation score; everything else lives here and in the parts
it uses: setup.py (freezing, LoRA, --from), optim.py, checkpoint.py, diagnostics.py, signals.py.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RunDirError, SteerkitError
from ..phase.couplings import PhaseHook
from ..phase.metrics import summarize
from . import checkpoint as ck
from . import diagnostics as dg
from .config import TrainConfig, TrainingConfigError
from .optim import Optimizers
from .protocol import Objective, StepOut
from .runs import KIND, RunPaths, read_config, save_final, write_json
from .setup import ModelGuard, Parts, build_parts, load_trainable_state, trainable_state
from .signals import StopSignals

log = logging.getLogger(__name__)
StepCallback = Callable[[int, dict[str, Any]], Any]  # return "stop" to stop after this step
FAILED = "failed.json"  # marks a run that failed after writing checkpoints (kept, never a default)


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # 'finished' | 'early_stopped' | 'interrupted'
    step: int
    best_val: float | None
    stop_reason: str | None
    signal: int | None = None


def make_objective(cfg: TrainConfig) -> Objective:
    if cfg.objective == "ce":
        from .ce import CEObjective

        return CEObjective()
    from .preference import PreferenceObjective

    return PreferenceObjective()


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
    return Trainer(config, d, lm, device, on_step, handle_signals, resume=False).run()


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
    return Trainer(config, d, lm, device, on_step, handle_signals, resume=True).run()


class Trainer:
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
        self.objective = make_objective(config)
        self.recent: list[float] = []
        self.signals = StopSignals(handle_signals)

    # ---- set-up --------------------------------------------------------------------------
    def _setup(self) -> None:
        if not self.resuming:
            torch.manual_seed(self.cfg.seed)
            random.seed(self.cfg.seed)
            np.random.seed(self.cfg.seed)
        self.cfg, self.parts, parent = build_parts(self.cfg, self.lm)
        self.guard.lora_targets = self.parts.lora_targets
        self.layer = self.parts.layer
        self.device = self.lm.input_device  # where batches go (sharded: the first shard)
        facts = self.objective.prepare(self)
        self.opt = Optimizers(self.cfg, self.parts)
        self.ctl = dg.LRController()
        model, adapter = self.lm.model, self.lm.adapter
        self.resolved = {
            "layer": self.layer,
            "n_blocks": self.parts.n_blocks,
            "hidden_size": self.parts.hidden,
            "family": adapter.family,
            "block_kind": adapter.block_info(model, self.layer).kind,
            "model_fingerprint": self.lm.info.get("fingerprint"),
            **facts,
            "trainable": {k: sum(p.numel() for p in v) for k, v in self.parts.groups.items()},
            "lora_targets": self.parts.lora_targets,
        }
        if parent:
            self.resolved["parent"] = parent

    @property
    def model(self) -> Any:
        return self.lm.model

    def phase_hook(self) -> PhaseHook:
        return PhaseHook(self.lm, self.parts.core, self.parts.coupling, self.layer)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.parts, self.lm.model)

    def load_trainable(self, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        load_trainable_state(self.parts, self.lm.model, tensors, prefix)

    # ---- checkpoints ---------------------------------------------------------------------
    def _save(self, step: int, last: dict[str, Any]) -> None:
        tensors = {f"param.{k}": v for k, v in self.trainable_state().items()}
        opt_t, opt_meta = self.opt.state()
        rng_t, rng_meta = ck.rng_state()
        tensors.update(opt_t)
        tensors.update(rng_t)
        meta = {"metrics": last, **opt_meta, "controller": self.ctl.state(), "rng": rng_meta}
        ck.save_checkpoint(self.paths.checkpoints, step, tensors, meta, self.cfg.keep_last)

    def _restore(self) -> int:
        c = ck.latest_checkpoint(self.paths.checkpoints)
        if c is None:
            raise RunDirError(f"{self.paths.root} has no usable checkpoint to resume from; start a new run")
        from ..validate import CHECKPOINT_RESUME_SCHEMA, check_schema

        check_schema(c.meta, CHECKPOINT_RESUME_SCHEMA, str(c.path / "meta.json"), RunDirError)
        try:
            self.load_trainable(c.tensors, "param.")
            self.opt.load(c.tensors, c.meta)
            self.ctl = dg.LRController.from_state(c.meta["controller"])
            ck.set_rng_state(c.tensors, c.meta["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a checkpoint of another run's layout
            raise RunDirError(
                f"{c.path} does not fit this run ({type(e).__name__}: {(str(e).strip() or '-').splitlines()[0][:160]}); "
                "start a new run"
            ) from e
        kept = [m for m in read_metrics_lines(self.paths.metrics) if int(m.get("step", 0)) <= c.step]
        write_json_lines(self.paths.metrics, kept)
        self.recent = [m["loss"] for m in kept if m["step"] > self.ctl.last_eval_step]
        log.info("resuming %s from step %d", self.paths.root, c.step)
        return c.step

    # ---- one step ------------------------------------------------------------------------
    def _step(self, hook: PhaseHook, step: int, captured: dict[str, torch.Tensor]) -> dict[str, Any]:
        cfg = self.cfg
        self.opt.set_scale(self.ctl.lr_scale)
        t0 = time.perf_counter()
        out = self.objective.step(self, hook, step)
        loss = out.loss
        if not math.isfinite(loss.item()):  # before the update, so the last checkpoint stays usable
            raise TrainingConfigError(f"the loss became {loss.item()} at step {step}; lower --lr or --alpha")
        self.opt.zero_grad()
        loss.backward()
        norms = dg.grad_norms(self.parts.groups)
        all_params = [p for ps in self.parts.groups.values() for p in ps]
        torch.nn.utils.clip_grad_norm_(all_params, cfg.grad_clip)
        self.opt.step()
        ratios, ratio_flag = dg.grad_ratios(norms, cfg.grad_ratio_band)
        ph = hook.last
        watched = {"phase.drive": ph.drive, "phase.R": ph.r, **captured}
        r = out.r if out.mask is None else out.r[out.mask.bool()]
        _, r_col = dg.r_collapse(r)  # summarize() reports the share as R_above_099
        return {
            "step": step,
            "loss": loss.item(),
            **out.scalars,
            "lr": self.opt.lr,
            **summarize(out.r, out.u, cfg.r_band, out.mask),
            "grad_norm": norms,
            "grad_ratio": ratios,
            "grad_ratio_flag": ratio_flag,
            "collapsed": dg.collapsed(watched, cfg.collapse_threshold),
            "r_collapse": r_col,
            "step_seconds": round(time.perf_counter() - t0, 4),
        }

    # ---- the run -------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.guard = ModelGuard(self.lm.model)
        handles: list[Any] = []
        made = _first_missing(self.paths.root)  # the topmost folder this run creates (None: root existed)
        in_loop = False
        try:
            self._setup()
            self.recent = []
            start = 0
            if self.resuming:
                self.objective.begin(self, fresh=False)
                start = self._restore()
                (self.paths.root / FAILED).unlink(missing_ok=True)
            else:
                self.paths.root.mkdir(parents=True, exist_ok=True)
                cfg_json = {"kind": KIND, "config": self.cfg.to_dict(), "resolved": self.resolved}
                write_json(self.paths.config, cfg_json)
                self.objective.begin(self, fresh=True)
            with self.signals:
                in_loop = True
                return self._loop(start, handles)
        except BaseException as e:
            if not self.resuming or in_loop:
                failure = _no_half_run(self.paths, None if self.resuming else made, e)
                if failure is not None:
                    raise failure from e
            raise
        finally:
            for h in handles:
                h.remove()
            self.guard.restore()

    def _loop(self, start: int, handles: list[Any]) -> TrainResult:
        cfg, paths = self.cfg, self.paths
        plateau_steps = max(2 * cfg.val_every, round(cfg.plateau_share * cfg.steps))
        warner = dg.Warner(cfg.grad_ratio_band)
        status, step, saved, last = "finished", start, start, {}
        model, adapter = self.lm.model, self.lm.adapter
        captured: dict[str, torch.Tensor] = {}
        with self.phase_hook() as hook:
            for i in sorted({self.layer, *self.cfg.unfreeze}):  # type: ignore[misc]
                handles.append(adapter.blocks(model)[i].register_forward_hook(_keeper(adapter, captured, f"block{i}")))
            for step in range(start + 1, cfg.steps + 1):
                last = self._step(hook, step, captured)
                self.recent.append(last["loss"])
                warner.check(last)
                if step % cfg.val_every == 0 or step == cfg.steps:
                    vals, score = self.objective.validate(self, hook)
                    last.update(vals)
                    last["train_loss_avg"] = sum(self.recent) / len(self.recent)
                    self.recent = []
                    last["events"] = self.ctl.update(
                        step,
                        score,
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
                if self.signals.received is not None or stop_cb == "stop":
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
            save_final(paths, self.trainable_state(), cfg, self.resolved, info)
        best = self.ctl.state()["best_val"]
        return TrainResult(paths.root, status, step, best, self.ctl.stop_reason, self.signals.received)


def _first_missing(d: Path) -> Path | None:
    """The topmost of d and its parents that does not exist yet (None: d exists)."""
    missing = None
    for p in (d, *d.parents):
        if p.exists():
            break
        missing = p
    return missing


def _no_half_run(paths: RunPaths, made: Path | None, e: BaseException) -> BaseException | None:
    """A run that fails leaves no half-run for a default to pick up: without checkpoints what it
    created is removed (an existing folder is emptied); with checkpoints it stays, marked failed
    (failed.json), which `--resume` without --name skips. Returns the error to raise (a
    SteerkitError gets a note saying which), or None to re-raise `e`."""
    steps = ck.step_dirs(paths.checkpoints)
    if steps:
        write_json(paths.root / FAILED, {"error": str(e) or type(e).__name__, "last_checkpoint": steps[-1][0]})
        note = (
            f"{paths.root} keeps its checkpoints (up to step {steps[-1][0]}) and is marked failed; "
            f"delete it, or continue it with --resume --name {paths.root.name}"
        )
    elif paths.root.exists():
        for child in [made] if made is not None else list(paths.root.iterdir()):
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        note = f"the run folder {paths.root} was removed (nothing to keep)"
    else:
        return None
    return type(e)(f"{e}; {note}") if isinstance(e, SteerkitError) else None


def _keeper(adapter: Any, store: dict[str, torch.Tensor], name: str) -> Callable[..., None]:
    def hook(module: Any, args: Any, output: Any) -> None:
        store[name] = adapter.get_hidden(output).detach()

    return hook


def _append_metrics(path: Path, m: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(m) + "\n")
        f.flush()


def read_metrics_lines(path: Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl (a last line cut by a crash is dropped; any other bad line is an error)."""
    from ..validate import METRICS_LINE_SCHEMA, read_jsonl

    if not path.is_file():
        return []
    return [obj for _, obj in read_jsonl(path, "metrics", RunDirError, METRICS_LINE_SCHEMA)]


def write_json_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    from ..io import atomic_write_bytes

    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


__all__ = ["Parts", "StepOut", "Trainer", "TrainResult", "resume", "train"]
