"""`intervene()`: a trained phase run + settings -> a finished intervention folder (what the CLI calls)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import RunDirError
from ...runs import new_run_dir, prepare_out, runs_root
from ..prompts import load_prompts
from .apparatus import Progress, Setup
from .config import InterveneConfig
from .experiment import load_heldout_pairs, run_intervention
from .report import KIND, build_report, write_report

if TYPE_CHECKING:
    from ...models.loading import Placement


def resolve_run(run: str | Path | None) -> Path:
    """RUN_DIR, or the newest finished train-phase run under runs/ when None."""
    from ...training.runs import find_latest_run

    if run is None:
        found = find_latest_run()
        if found is None:
            raise RunDirError(f"no trained phase core under {runs_root()}/; train one with `steerkit train-phase`")
        return found
    from ...validate import expect_dir

    d = expect_dir(run, "--run", RunDirError, "pass a run written by `steerkit train-phase`")
    if not (d / "phase_core.safetensors").is_file() and not (d / "config.json").is_file():
        raise RunDirError(
            f"{d} holds no trained phase core (phase_core.safetensors); pass a finished `steerkit train-phase` run"
        )
    return d


def _source(run_dir: Path, coupling: Any, tcfg: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    try:
        summary = json.loads((run_dir / "phase_core.json").read_text())
    except (OSError, json.JSONDecodeError):
        pass
    return {
        "run": str(run_dir),
        "model": tcfg.model,
        "coupling": coupling.name,
        "alpha": float(coupling.alpha.detach()),
        "center": coupling.config.center,
        "phase_core_sha256": summary.get("sha256"),
        "trained_steps": summary.get("step"),
        "status": summary.get("status"),
    }


def intervene(
    cfg: InterveneConfig,
    run: str | Path | None = None,
    prompts: str | Path | None = None,
    readout: str | Path | None = None,
    out: str | Path | None = None,
    *,
    lm: Any = None,
    device: str = "cpu",
    placement: Placement | None = None,
    progress: Progress | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run the real experiment and both controls; write intervention.{json,md} and PNGs.

    Output: `out`, else runs/<stamp>-intervene. A new folder is assembled under a temporary name
    beside it and renamed into place, so it is complete or absent. Under torchrun the ranks share the
    prompt chunks; rank 0 alone writes and returns the report, the others return `(target, {})`.
    """
    from ...training.runs import load_phase_run
    from ...vectors.readout import ConceptVectors

    run_dir = resolve_run(run)
    plist = load_prompts(prompts)  # fail fast on bad input, before loading a model
    cv = ConceptVectors.load(readout) if readout is not None else None
    target = Path(out) if out is not None else new_run_dir("intervene")
    if target.exists():
        prepare_out(target, KIND)
    lm, core, coupling, tcfg = load_phase_run(run_dir, lm=lm, device=device, placement=placement)
    pairs = load_heldout_pairs(tcfg, lm.tokenizer)  # a DPO / ORPO run: the pref_margin measure on its held-out pairs
    res = run_intervention(
        Setup(lm, core, coupling, int(tcfg.layer)), plist, cfg, cv, progress, pairs=pairs, distributed=True
    )
    if not res.complete:  # a rank other than 0 under torchrun: rank 0 writes the report
        return target, {}
    rep = build_report(res, _source(run_dir, coupling, tcfg))
    if target.exists():
        write_report(target, rep)
        return target, rep
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_report(tmp, rep)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, rep
