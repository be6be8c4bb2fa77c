"""PNG plots of a training run's metrics.jsonl (matplotlib, no torch): loss, R, U, R*U, the
gradient-norm ratio and the tone timeline; for DPO / ORPO runs also the reward curves
(rewards.png) and R, U on the chosen vs the rejected completions (preference_r.png)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..errors import RunDirError
from ..io import atomic_write_bytes
from ..phase.metrics import ACTIONS, TONES

TONE_COLORS = {
    "rigid": "#b2182b",
    "strained": "#ef8a62",
    "focused": "#1a9850",
    "searching": "#91cf60",
    "drifting": "#4575b4",
    "scattered": "#abd9e9",
}
ACTION_COLORS = {"BRAKE": "#d73027", "COAST": "#999999", "BOOST": "#4575b4"}


def read_metrics(run_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(metrics rows, config) of a run folder."""
    from ..validate import METRICS_LINE_SCHEMA, TRAIN_CONFIG_FILE_SCHEMA, expect_dir, read_json, read_jsonl

    d = expect_dir(run_dir, "run folder", RunDirError, "pass a folder written by `steerkit train-phase`")
    p = d / "metrics.jsonl"
    if not p.is_file():
        raise RunDirError(f"{d} has no metrics.jsonl; pass a folder written by `steerkit train-phase`")
    rows = [obj for _, obj in read_jsonl(p, "metrics", RunDirError, METRICS_LINE_SCHEMA)]
    if not rows:
        raise RunDirError(f"{p} holds no complete step yet; train for at least one step")
    c = d / "config.json"
    cfg = read_json(c, "run config", RunDirError, TRAIN_CONFIG_FILE_SCHEMA)["config"] if c.is_file() else {}
    return rows, cfg


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write loss.png, r.png, u.png, ru.png, grad_ratio.png, tone.png into out (default RUN/plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cfg = read_metrics(run_dir)
    out_dir = Path(out) if out else Path(run_dir) / "plots"
    steps = [r["step"] for r in rows]
    val = [r for r in rows if "val_loss" in r]
    band = cfg.get("r_band", [0.80, 0.95])
    written: list[Path] = []
    name = Path(run_dir).name

    def series(key: str) -> list[float]:
        return [float(r.get(key, float("nan"))) for r in rows]

    def events(ax: Any) -> None:
        for r in val:
            if "lr_reduced" in r.get("events", []):
                ax.axvline(r["step"], color="orange", ls=":", lw=1)

    # loss
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, series("loss"), lw=0.8, alpha=0.5, label="train loss (step)")
    if val:
        ax.plot([r["step"] for r in val], [r["train_loss_avg"] for r in val], "o-", label="train loss (mean)")
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "s-", label="validation loss")
    events(ax)
    objective = cfg.get("objective", "ce")
    ylabel = "CE + lambda |U - U_target|" if objective == "ce" else f"{objective.upper()} + lambda |U - U_target|"
    ax.set(xlabel="step", ylabel=ylabel, title=f"{name}: loss (dotted: lr reduced)")
    ax.legend()
    written.append(_save(fig, out_dir / "loss.png"))
    plt.close(fig)
    # R
    fig, ax = plt.subplots(figsize=(7, 4))
    r, sd = series("R"), series("R_std")
    ax.axhspan(band[0], band[1], color="green", alpha=0.12, label=f"target band {band[0]:.2f}-{band[1]:.2f}")
    ax.plot(steps, r, label="mean R")
    ax.fill_between(
        steps,
        [a - b for a, b in zip(r, sd, strict=True)],
        [a + b for a, b in zip(r, sd, strict=True)],
        alpha=0.2,
        label="+-1 sd over tokens",
    )
    ax.plot(steps, series("R_above_099"), lw=0.8, color="red", label="share of tokens R > 0.99")
    ax.set(xlabel="step", ylabel="R", ylim=(0, 1.02), title=f"{name}: order parameter R")
    ax.legend(fontsize=8)
    written.append(_save(fig, out_dir / "r.png"))
    plt.close(fig)
    # U and R*U
    for key, fname, label in (("U", "u.png", "U = H(p) / log V"), ("RU", "ru.png", "R * U")):
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, series(key))
        if key == "U":
            ax.axhline(cfg.get("u_target", 0.5), color="k", ls="--", lw=1, label="U target")
            ax.legend()
        ax.set(xlabel="step", ylabel=label, ylim=(0, 1.02), title=f"{name}: {label}")
        written.append(_save(fig, out_dir / fname))
        plt.close(fig)
    # gradient norms and ratio
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    comps = sorted({k for r in rows for k in r.get("grad_norm", {})})
    for c in comps:
        a1.plot(steps, [r.get("grad_norm", {}).get(c, float("nan")) for r in rows], label=c)
    a1.set(yscale="log", ylabel="gradient norm", title=f"{name}: gradient norms per component")
    a1.legend(fontsize=8)
    kinds = sorted({k for r in rows for k in r.get("grad_ratio", {})})
    lo, hi = cfg.get("grad_ratio_band", [0.3, 3.0])
    a2.axhspan(lo, hi, color="green", alpha=0.12, label=f"healthy {lo}-{hi}")
    for k in kinds:
        a2.plot(steps, [r.get("grad_ratio", {}).get(k, float("nan")) for r in rows], label=f"phase / {k}")
    if not kinds:
        a2.text(0.5, 0.5, "no ratio: the base model is frozen", ha="center", va="center", transform=a2.transAxes)
    a2.set(yscale="log", xlabel="step", ylabel="ratio")
    a2.legend(fontsize=8)
    written.append(_save(fig, out_dir / "grad_ratio.png"))
    plt.close(fig)
    # tone timeline: share of tokens in each tone per step, and the drift action strip
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8.5, 5), sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    shares = []
    for t in TONES:
        counts = [r.get("tone_counts", {}) for r in rows]
        shares.append([c.get(t, 0) / max(1, sum(c.values())) for c in counts])
    a1.stackplot(steps, shares, labels=TONES, colors=[TONE_COLORS[t] for t in TONES])
    a1.set(ylabel="share of tokens", ylim=(0, 1), title=f"{name}: tone timeline (R band x U < 0.5)")
    a1.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    acts = [r.get("action", "COAST") for r in rows]
    for act in ACTIONS:
        xs = [s for s, a in zip(steps, acts, strict=True) if a == act]
        a2.scatter(xs, [0] * len(xs), color=ACTION_COLORS[act], marker="|", s=400, label=act)
    a2.set(yticks=[], xlabel="step", title="drift action (majority of tokens)")
    a2.title.set_fontsize(9)
    a2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.2))
    fig.tight_layout()
    written.append(_save(fig, out_dir / "tone.png"))
    plt.close(fig)
    if any("rewards/chosen" in r for r in rows):
        written += _preference_plots(plt, rows, steps, out_dir, name)
    return written


def _preference_plots(plt: Any, rows: list[dict[str, Any]], steps: list[int], out_dir: Path, name: str) -> list[Path]:
    """rewards.png: TRL's reward curves, train and held-out, with the held-out accuracy and its CI;
    preference_r.png: R and U on the chosen vs the rejected completions."""
    val = [r for r in rows if "val/rewards/accuracies" in r]
    vs = [r["step"] for r in val]

    def s(key: str, rs: list[dict[str, Any]] = rows) -> list[float]:
        return [float(r.get(key, float("nan"))) for r in rs]

    out = []
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    for key, c in (("rewards/chosen", "C2"), ("rewards/rejected", "C3"), ("rewards/margins", "C0")):
        a1.plot(steps, s(key), lw=0.7, alpha=0.45, color=c, label=f"train {key}")
        if val:
            a1.plot(vs, s("val/" + key, val), "o-", color=c, label=f"held-out {key}")
    a1.axhline(0, color="0.7", lw=0.8)
    a1.set(ylabel="reward (beta x log-ratio)", title=f"{name}: rewards (TRL names)")
    a1.legend(fontsize=7)
    a2.plot(steps, s("rewards/accuracies"), lw=0.7, alpha=0.45, label="train rewards/accuracies")
    if val:
        acc = s("val/rewards/accuracies", val)
        ci = [r.get("val/rewards/accuracies_ci", [float("nan")] * 2) for r in val]
        a2.plot(vs, acc, "s-", color="C1", label="held-out rewards/accuracies")
        a2.fill_between(vs, [c[0] for c in ci], [c[1] for c in ci], color="C1", alpha=0.2, label="95% bootstrap CI")
    a2.axhline(0.5, color="k", ls="--", lw=0.8, label="chance")
    a2.set(xlabel="step", ylabel="accuracy", ylim=(-0.02, 1.02))
    a2.legend(fontsize=7)
    out.append(_save(fig, out_dir / "rewards.png"))
    plt.close(fig)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for ax, key in ((a1, "R"), (a2, "U")):
        for side, c in (("chosen", "C2"), ("rejected", "C3")):
            ax.plot(steps, s(f"{side}/{key}"), lw=0.7, alpha=0.45, color=c, label=f"train {side}")
            if val:
                ax.plot(vs, s(f"val/{side}/{key}", val), "o-", color=c, label=f"held-out {side}")
        ax.set(ylabel=key, ylim=(0, 1.02))
        ax.legend(fontsize=7)
    a1.set_title(f"{name}: R and U on chosen vs rejected completions")
    a2.set_xlabel("step")
    out.append(_save(fig, out_dir / "preference_r.png"))
    plt.close(fig)
    return out
