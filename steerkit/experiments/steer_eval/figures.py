"""steer-eval figures (PNG bytes, so the caller writes them atomically):

- steer_eval_curves.png: per concept group, the mean success rate (solid) and NLL increase (dashed,
  right axis) against alpha, one colour per layer; alpha 0 is the unsteered baseline; grey dotted:
  the random-direction control's success rate.
- steer_eval_operating.png: each concept at its operating point (filled) or, without one, at its
  best cell under the NLL cap (hollow): NLL increase vs success rate.
- steer_eval_offtarget.png: steered concept (rows, at its operating point or best cell) x read
  concept (columns): the mean change of each read concept's score; the diagonal is the target.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def figures(rep: dict[str, Any], groups: dict[str, list[str]]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    return {
        "steer_eval_curves.png": _curves(rep, groups),
        "steer_eval_operating.png": _operating(rep),
        "steer_eval_offtarget.png": _offtarget(rep, groups),
    }


def _curves(rep: dict[str, Any], groups: dict[str, list[str]]) -> bytes:
    import matplotlib.pyplot as plt

    alphas, layers = rep["alphas"], rep["layers"]
    n = max(1, len(groups))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(1, len(layers))))
    by = {(c["concept"], c["layer"], c["alpha"]): c for c in rep["cells"]}
    rand = {(r["layer"], r["alpha"]): r for r in rep["random"]}
    for k, (gname, members) in enumerate(groups.items()):
        ax = axes[k // cols][k % cols]
        ax2 = ax.twinx()
        base = float(np.mean([rep["baseline"]["success"][m] for m in members]))
        xs = [0.0, *alphas]
        for colour, la in zip(colours, layers, strict=True):
            succ = [base] + [np.mean([by[(m, la, a)]["success"] for m in members]) for a in alphas]
            nll = [0.0] + [np.nanmean([_num(by[(m, la, a)]["nll_increase"]) for m in members]) for a in alphas]
            ax.plot(xs, succ, "-o", color=colour, ms=3, label=f"layer {la}")
            ax2.plot(xs, nll, "--", color=colour, lw=1)
        rs = [base] + [np.mean([_num(rand[(la, a)]["success"]) for la in layers]) for a in alphas]
        ax.plot(xs, rs, ":", color="grey", label="random")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{gname} ({len(members)})", fontsize=9)
        ax.set_xlabel("alpha", fontsize=8)
        if k % cols == 0:
            ax.set_ylabel("success (solid)", fontsize=8)
        ax2.set_ylabel("NLL increase (dashed)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax2.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=6, loc="upper left")
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle("steer-eval: success rate and NLL increase vs alpha", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _operating(rep: dict[str, Any]) -> bytes:
    import matplotlib.pyplot as plt

    cap = rep["config"]["max_nll_increase"]
    fig, ax = plt.subplots(figsize=(7, 5))
    for n in rep["concepts"]:
        op = rep["operating_points"][n]
        style: dict[str, Any]
        if op is not None:
            x, y, style = _num(op["nll_increase"]), op["success"], {"color": "tab:blue"}
        else:
            ok = [c for c in rep["cells"] if c["concept"] == n and c["nll_increase"] is not None]
            ok = [c for c in ok if c["nll_increase"] <= cap] or ok
            if not ok:
                continue
            best = max(ok, key=lambda c: c["success"])
            x, y = _num(best["nll_increase"]), best["success"]
            style = {"facecolors": "none", "edgecolors": "grey"}
        ax.scatter([x], [y], s=18, **style)
        ax.annotate(n, (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.axvline(cap, ls="--", color="tab:red", lw=1, label=f"--max-nll-increase {cap:g}")
    rs = rep["summary"]["random_success"]
    if rs is not None:
        ax.axhline(rs, ls=":", color="grey", label=f"random control {rs:.0%}")
    ax.set_xlabel("NLL increase (nat/token, unsteered model)")
    ax.set_ylabel(f"success (steered concept in top {rep['config']['top']})")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title("Operating points (filled) and best cells of concepts without one (hollow)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def _offtarget(rep: dict[str, Any], groups: dict[str, list[str]]) -> bytes:
    import matplotlib.pyplot as plt

    read = rep["read_concepts"]
    steered = [n for members in groups.values() for n in members if n in rep["off_target"]]
    cols = [n for members in groups.values() for n in members] + [n for n in read if n not in rep["concepts"]]
    idx = [read.index(n) for n in cols]
    m = np.array([[rep["off_target"][n][j] for j in idx] for n in steered]) if steered else np.zeros((1, len(idx)))
    vmax = float(np.nanmax(np.abs(m))) or 1.0
    fig, ax = plt.subplots(figsize=(max(6.0, 2.5 + 0.16 * len(cols)), max(4.0, 2.0 + 0.16 * len(steered))))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    for i, n in enumerate(steered):
        ax.add_patch(plt.Rectangle((cols.index(n) - 0.5, i - 0.5), 1, 1, fill=False, lw=0.8, ec="black"))
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=6)
    ax.set_yticks(range(len(steered)), steered, fontsize=6)
    ax.set_xlabel("read concept")
    ax.set_ylabel("steered concept (at its operating point)")
    fig.colorbar(im, ax=ax, shrink=0.6, label="mean score change vs unsteered")
    ax.set_title("Off-target matrix (boxed: the steered concept itself)", fontsize=9)
    fig.tight_layout()
    return _png(fig)
