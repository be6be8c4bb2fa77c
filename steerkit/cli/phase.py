"""`steerkit train-phase` and `steerkit plot-metrics`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .app import main
from .common import (
    FINITE_FLOAT,
    NONNEG_FLOAT,
    NONNEG_INT,
    OPEN_UNIT_FLOAT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    UNIT_FLOAT,
    BoundedFloat,
    BoundedInt,
    console,
    model_options,
)

if TYPE_CHECKING:
    from ..models.loading import Placement


def _blocks(value: str | None, option: str) -> str | tuple[int, ...]:
    """A block spec as given (resolved against the model's depth when the run starts); syntax checked now."""
    from ..training.setup import check_block_spec

    if not value or not value.strip():
        return ()
    check_block_spec(value, option)
    return value.strip()


def _latest_unfinished(root: Path) -> Path | None:
    """Newest run folder under root with a train-phase config.json and no phase_core.safetensors,
    not marked failed (a run that diverged keeps its checkpoints but is never a default)."""
    import json

    from ..training.loop import FAILED

    if not root.is_dir():
        return None
    cands = []
    for d in root.iterdir():
        try:
            ours = json.loads((d / "config.json").read_text()).get("kind") == "train-phase"
        except (OSError, ValueError, AttributeError):
            ours = False
        if ours and not (d / "phase_core.safetensors").exists() and not (d / FAILED).exists():
            cands.append(d)
    return max(cands, key=lambda d: (d / "config.json").stat().st_mtime) if cands else None


@main.command("train-phase")
@model_options
@click.option(
    "--text",
    "texts",
    multiple=True,
    type=click.Path(),
    help="Training text: .txt (stories separated by --- lines) / .jsonl / folder; repeatable. Default: corpora/stories.",
)
@click.option(
    "--layer", default="0.5", show_default=True, help="Coupled block: index, negative index, or fraction of depth."
)
@click.option(
    "--coupling",
    type=click.Choice(["additive", "multiplicative", "gate"]),
    default="additive",
    show_default=True,
    help="How R touches the model.",
)
@click.option(
    "--direction",
    default=None,
    help="Additive coupling direction: READOUT_DIR:CONCEPT or FILE.safetensors[:KEY] (default: learned).",
)
@click.option("--fixed-direction", is_flag=True, help="Keep the additive direction fixed (do not train it).")
@click.option("--alpha", default=0.1, type=FINITE_FLOAT, show_default=True, help="Initial coupling strength (learned).")
@click.option(
    "--oscillators",
    default=16,
    type=BoundedInt(2, 4096),
    show_default=True,
    help="Number of Kuramoto oscillators N (2-4096).",
)
@click.option("--k", "k_coupling", default=2.0, type=FINITE_FLOAT, show_default=True, help="Kuramoto coupling K.")
@click.option("--learn-k", is_flag=True, help="Train K too.")
@click.option("--dt", default=0.1, type=POSITIVE_FLOAT, show_default=True, help="Euler time step (time units).")
@click.option("--steps-per-token", default=4, type=POSITIVE_INT, show_default=True, help="Euler steps per token.")
@click.option(
    "--steps", default=200, type=POSITIVE_INT, show_default=True, help="Training steps (a new total with --resume)."
)
@click.option(
    "--seq-len",
    default=None,
    type=BoundedInt(2),
    help="Tokens per training sequence (default 64; DPO/ORPO: 1024, TRL's max_length, so whole pairs fit).",
)
@click.option("--batch-size", default=4, type=POSITIVE_INT, show_default=True, help="Sequences per step.")
@click.option(
    "--lr", default=3e-3, type=POSITIVE_FLOAT, show_default=True, help="Learning rate of the phase core and coupling."
)
@click.option(
    "--base-lr", default=1e-5, type=POSITIVE_FLOAT, show_default=True, help="Learning rate of unfrozen base blocks."
)
@click.option(
    "--lam", default=0.1, type=NONNEG_FLOAT, show_default=True, help="Weight lambda of |U - U_target| in the loss."
)
@click.option(
    "--u-target", default=0.5, type=UNIT_FLOAT, show_default=True, help="Target normalised entropy U in [0, 1]."
)
@click.option("--val-every", default=10, type=POSITIVE_INT, show_default=True, help="Validate every N steps.")
@click.option(
    "--val-fraction",
    default=0.1,
    type=OPEN_UNIT_FLOAT,
    show_default=True,
    help="Share of texts held out for validation.",
)
@click.option(
    "--patience",
    default=10,
    type=POSITIVE_INT,
    show_default=True,
    help="Early stopping: validations without improvement.",
)
@click.option(
    "--plateau-share",
    default=0.2,
    type=BoundedFloat(0.0, 1.0, low_open=True),
    show_default=True,
    help="Plateau: no improvement for this share of the steps cuts the lr.",
)
@click.option(
    "--lr-factor",
    default=0.5,
    type=BoundedFloat(0.5, 0.7),
    show_default=True,
    help="Lr multiplier on a plateau (0.5-0.7).",
)
@click.option("--checkpoint-every", default=50, type=POSITIVE_INT, show_default=True, help="Checkpoint every N steps.")
@click.option("--keep-last", default=5, type=POSITIVE_INT, show_default=True, help="Checkpoints kept.")
@click.option("--unfreeze", default=None, help="Base blocks to train too, e.g. 14,15 (default: none).")
@click.option(
    "--lora-rank",
    default=0,
    type=NONNEG_INT,
    show_default=True,
    help="> 0: train LoRA adapters (peft) of this rank too.",
)
@click.option(
    "--lora-alpha",
    default=16.0,
    type=POSITIVE_FLOAT,
    show_default=True,
    help="LoRA scale numerator (update = alpha/rank * B A).",
)
@click.option(
    "--lora-lr", default=1e-4, type=POSITIVE_FLOAT, show_default=True, help="Learning rate of the LoRA adapters."
)
@click.option(
    "--lora-blocks", default=None, help="Blocks whose linear layers get LoRA, e.g. 14 or 10:20 (default: all)."
)
@click.option(
    "--objective",
    type=click.Choice(["ce", "dpo", "orpo"]),
    default="ce",
    show_default=True,
    help="ce: CE + lam |U - U_target| on --text; dpo / orpo: preference loss on --pairs (+ the U term).",
)
@click.option(
    "--pairs",
    default=None,
    type=click.Path(),
    help="Preference pairs: JSONL of {prompt, chosen, rejected} or a datasets save_to_disk folder (see docs/preference.md).",
)
@click.option(
    "--beta",
    default=0.1,
    type=POSITIVE_FLOAT,
    show_default=True,
    help="DPO beta (sigmoid loss) / ORPO lambda of the odds-ratio term.",
)
@click.option(
    "--from",
    "parent",
    default=None,
    type=click.Path(),
    help="Start from this finished run's core, coupling, block and LoRA (recorded as the parent).",
)
@click.option(
    "--optimizer",
    type=click.Choice(["adamw", "apollo", "apollo-mini"]),
    default="adamw",
    show_default=True,
    help="Optimizer of trained base weights (--unfreeze, LoRA); the phase core always uses AdamW.",
)
@click.option(
    "--apollo-rank", default=None, type=POSITIVE_INT, help="APOLLO projection rank (default 256; APOLLO-Mini 1)."
)
@click.option(
    "--seed", default=0, type=SEED, show_default=True, help="Random seed (initialisation, data split and order)."
)
@click.option("--out", default=None, type=click.Path(), help="Folder holding runs (default $STEERKIT_RUNS or ./runs).")
@click.option("--name", default=None, help="Run name (folder under --out); default: a timestamped name.")
@click.option(
    "--resume", is_flag=True, help="Continue run --name (default: the newest unfinished run) from its last checkpoint."
)
def train_phase(
    model: str | None, trust_remote_code: bool, dtype: str | None, device: str, placement: Placement,
    texts: tuple[str, ...], layer: str,
    coupling: str, direction: str | None, fixed_direction: bool, alpha: float, oscillators: int, k_coupling: float,
    learn_k: bool, dt: float, steps_per_token: int, steps: int, seq_len: int | None, batch_size: int, lr: float,
    base_lr: float, lam: float, u_target: float, val_every: int, val_fraction: float, patience: int,
    plateau_share: float, lr_factor: float, checkpoint_every: int, keep_last: int, unfreeze: str | None,
    lora_rank: int, lora_alpha: float, lora_lr: float, lora_blocks: str | None, objective: str, pairs: str | None,
    beta: float, parent: str | None, optimizer: str, apollo_rank: int | None, seed: int, out: str | None,
    name: str | None, resume: bool,
) -> None:  # fmt: skip
    """Train a Kuramoto phase core coupled into a frozen model (L = CE + lam |U - U_target|, or DPO / ORPO
    on preference pairs plus the U term)."""
    from ..errors import RunDirError
    from ..models import load
    from ..runs import new_run_dir, runs_root
    from ..training import loop
    from ..training.runs import read_config

    root = Path(out) if out else runs_root()
    if root.exists() and not root.is_dir():
        raise RunDirError(f"--out {root} is a file; choose a folder")
    if resume:
        run_dir = root / name if name else _latest_unfinished(root)
        if run_dir is None or not (run_dir / "config.json").is_file():
            raise RunDirError(
                f"nothing to resume under {root}{' named ' + name if name else ''}; start a run without --resume"
            )
        saved, _ = read_config(run_dir)
        lm = load(
            saved.model, **(placement.load_kwargs() | {"dtype": saved.dtype}), trust_remote_code=trust_remote_code
        )
        cfg_steps = steps if _given("steps") else None
        click.echo(f"resuming {run_dir}", err=True)
        with _bar(cfg_steps or saved.steps) as on_step:
            result = loop.resume(run_dir, lm=lm, steps=cfg_steps, on_step=on_step)
    else:
        cfg = _config(locals())
        if cfg.parent and not _given("model"):
            saved, _ = read_config(Path(cfg.parent)) if (Path(cfg.parent) / "config.json").is_file() else (cfg, {})
            cfg = cfg.replace(model=saved.model, dtype=cfg.dtype or saved.dtype)
        if cfg.pairs:  # fail on bad pairs before a model loads
            from ..training.pairs import load_pairs

            load_pairs(cfg.pairs)
        run_dir = (
            root / name if name else new_run_dir("phase", cfg.objective if cfg.objective != "ce" else cfg.coupling.name)
        )
        if out and not name:
            run_dir = root / run_dir.name
        lm = load(cfg.model, **(placement.load_kwargs() | {"dtype": cfg.dtype}), trust_remote_code=trust_remote_code)
        with _bar(cfg.steps) as on_step:
            result = loop.train(cfg, run_dir, lm=lm, on_step=on_step)
    _report(result)


def _given(param: str) -> bool:
    ctx = click.get_current_context()
    return ctx.get_parameter_source(param) not in (click.core.ParameterSource.DEFAULT, None)


def _default_seq_len(objective: str) -> int:
    """64 tokens of story text for CE; TRL's max_length (1024) for preference pairs, whose
    completions a short window would cut to their first few tokens."""
    return 64 if objective == "ce" else 1024


def _config(o: dict[str, Any]) -> Any:
    from ..models import zoo
    from ..phase import CouplingConfig, PhaseConfig
    from ..training import TrainConfig
    from ..training.config import TrainingConfigError

    try:
        return TrainConfig(
            model=o["model"] or zoo.DEFAULT_MODEL,
            dtype=o["dtype"],
            texts=tuple(str(Path(t).resolve()) for t in o["texts"]),  # a resume may run elsewhere
            layer=o["layer"],
            phase=PhaseConfig(
                n_oscillators=o["oscillators"], K=o["k_coupling"], learn_K=o["learn_k"], dt=o["dt"],
                steps_per_token=o["steps_per_token"],
            ),
            coupling=CouplingConfig(name=o["coupling"], alpha=o["alpha"], learn_direction=not o["fixed_direction"]),
            direction=o["direction"], steps=o["steps"], seq_len=o["seq_len"] or _default_seq_len(o["objective"]), batch_size=o["batch_size"], lr=o["lr"],
            base_lr=o["base_lr"], lam=o["lam"], u_target=o["u_target"], val_every=o["val_every"],
            val_fraction=o["val_fraction"], patience=o["patience"], plateau_share=o["plateau_share"],
            lr_factor=o["lr_factor"], checkpoint_every=o["checkpoint_every"], keep_last=o["keep_last"],
            seed=o["seed"], unfreeze=_blocks(o["unfreeze"], "--unfreeze"), lora_rank=o["lora_rank"],
            lora_alpha=o["lora_alpha"], lora_lr=o["lora_lr"], lora_blocks=_blocks(o["lora_blocks"], "--lora-blocks"),
            objective=o["objective"], pairs=str(Path(o["pairs"]).resolve()) if o["pairs"] else None, beta=o["beta"],
            parent=str(Path(o["parent"]).resolve()) if o["parent"] else None, optimizer=o["optimizer"],
            apollo_rank=o["apollo_rank"],
        )  # fmt: skip
    except TrainingConfigError:
        raise
    except ValueError as e:  # from PhaseConfig / CouplingConfig
        raise TrainingConfigError(str(e)) from e


class _bar:
    """Progress bar (steps/s, ETA) fed by the training loop's per-step callback."""

    def __init__(self, total: int) -> None:
        self.total = total

    def __enter__(self) -> Any:
        from .progress import progress_bar

        self._cm = progress_bar("train-phase", unit="steps")
        update = self._cm.__enter__()

        def on_step(step: int, m: dict[str, Any]) -> None:
            update(step, self.total)

        return on_step

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)


def _report(result: Any) -> None:
    from ..training.plots import read_metrics

    rows, _ = read_metrics(result.run_dir)
    last = rows[-1]
    vals = [r for r in rows if "val_loss" in r]
    msg = f"{result.status} at step {result.step}: loss {last['loss']:.4f}, R {last.get('R', float('nan')):.3f}, U {last.get('U', float('nan')):.3f}"
    if vals and "val/rewards/accuracies" in vals[-1]:
        v = vals[-1]
        lo, hi = v.get("val/rewards/accuracies_ci", [float("nan")] * 2)
        msg += (
            f", held-out rewards/accuracies {v['val/rewards/accuracies']:.3f} (95% CI {lo:.3f}-{hi:.3f}, "
            f"{v.get('val_pairs', '?')} pairs), margin {v['val/rewards/margins']:.4f}"
        )
    elif vals:
        msg += f", val loss {vals[-1]['val_loss']:.4f} (best {result.best_val:.4f})"
    console().print(msg)
    if result.stop_reason:
        click.echo(f"stopped: {result.stop_reason}", err=True)
    if result.status == "interrupted":
        click.echo(
            f"checkpoint saved in {result.run_dir}/checkpoints; continue with: steerkit train-phase --resume --name {result.run_dir.name} --out {result.run_dir.parent}",
            err=True,
        )
        sys.exit(128 + (result.signal or 0) if result.signal else 1)
    click.echo(f"run: {result.run_dir}  (plots: steerkit plot-metrics {result.run_dir})")


@main.command("plot-metrics")
@click.argument("run", type=click.Path())
@click.option("--out", default=None, type=click.Path(), help="Folder for the PNGs (default RUN/plots).")
def plot_metrics(run: str, out: str | None) -> None:
    """PNGs of a train-phase run: loss, R, U, R*U, gradient-norm ratio, tone timeline."""
    from ..errors import RunDirError
    from ..training.plots import plot_run

    if out and Path(out).exists() and not Path(out).is_dir():
        raise RunDirError(f"--out {out} is a file; choose a folder")
    for p in plot_run(run, out):
        click.echo(str(p))
