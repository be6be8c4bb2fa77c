"""intervention.json, intervention.md and the PNGs (dose-response, washout) of `steerkit intervene`.

Every file is written atomically; run.json (kind "intervene") is written last and marks the
folder finished (steerkit.runs).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...io import atomic_write_bytes
from ...runs import finish_run
from .. import measures as M
from ..prompts import arm_seed
from .analysis import analyze_experiment, verdicts
from .config import applied_level
from .experiment import Results

KIND = "intervene"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    import torch
    import transformers

    from ...version import __version__ as sk

    return {"steerkit": str(sk), "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "python": platform.python_version()}  # fmt: skip


def build_report(res: Results, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole intervention.json content."""
    cfg = res.config
    exps = {name: analyze_experiment(d, cfg, res.layer) for name, d in res.experiments.items()}
    real = res.experiments.get("real")
    n, s = len(res.prompts), cfg.seeds
    seeds = {str(i): {"free" if a == 0 else f"R={cfg.levels[a - 1]:g}": [arm_seed(cfg.seed, i, a, j) for j in range(s)]
                      for a in range(1 + len(cfg.levels))} for i in range(n)}  # fmt: skip
    return {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "source": source or {},
        "layer": res.layer,
        "sampler": res.sampler,
        "settings": cfg.to_dict(),
        "levels_applied": [applied_level(r) for r in cfg.levels],
        "prompts": [
            {
                "prompt": p.text,
                "continuation": p.continuation,
                "n_prompt_tokens": len(p.prompt_ids),
                "n_continuation_tokens": len(p.cont_ids),
                "R_free": float(real.r_free[i]) if real is not None else None,
            }
            for i, p in enumerate(res.prompts)
        ],  # fmt: skip
        "probe": None if res.probe is None else {"layer": res.probe.layer, "concepts": res.probe.concepts},
        "seeds": {
            "base": cfg.seed,
            "rule": "numpy SeedSequence([seed, prompt, arm, draw]) -> uint64 >> 1",
            "per_prompt": seeds,
        },  # fmt: skip
        "experiments": exps,
        "verdicts": verdicts(exps, cfg, n) if "real" in exps else {},
        "versions": versions(),
        "seconds": round(res.seconds, 2),
    }


# ---- markdown ------------------------------------------------------------------------------------
def _f(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and (x == 0 or 1e-3 <= abs(x) < 1e4):
        return f"{x:.4g}"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _row(tests: list[dict[str, Any]], m: str, r: float) -> dict[str, Any] | None:
    return next((t for t in tests if t["measure"] == m and t["level"] == r), None)


def markdown(rep: dict[str, Any]) -> str:
    v, ex, st = rep["verdicts"], rep["experiments"], rep["settings"]
    src = rep.get("source", {})
    real, neg, pos = ex.get("real"), ex.get("negative"), ex.get("positive")
    lines = [
        "# Intervention: does R cause anything?",
        "",
        f"Phase run `{src.get('run', '-')}` (model `{src.get('model', '-')}`, coupling `{src.get('coupling', '-')}` "
        f"at block {rep['layer']}, trained alpha {_f(src.get('alpha'))}). R forced to "
        f"{', '.join(f'{r:g}' for r in st['levels'])} ({st['method']}); free-running mean R = "
        f"{_f(real['r_free_mean']) if real else '-'}. {len(rep['prompts'])} prompts, {st['seeds']} seeds per arm, "
        f"alpha = {st['alpha']} after Holm correction.",
        "",
        f"**{v.get('headline', '')}**",
        "",
        *[f"- {s}" for s in v.get("summary", [])],
        "",
        "## Verdicts",
        "",
        *[f"- {s}" for s in v.get("measures", {}).values()],
        "",
        "## Tests (paired sign-flip permutation test across prompts, Holm-corrected within each experiment)",
        "",
        "| measure | R | real effect [95% CI] | d_z | real Holm p | negative Holm p | positive effect | positive Holm p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if real:
        for t in real["tests"]:
            nt = _row(neg["tests"], t["measure"], t["level"]) if neg else None
            pt = _row(pos["tests"], t["measure"], t["level"]) if pos else None
            star = " **" if t["significant"] else ""
            lines.append(
                f"| {t['measure']} | {t['level']:g} | {_f(t['mean'])} [{_f(t['ci'][0])}, {_f(t['ci'][1])}] | "
                f"{_f(t['d_z'])} | {_f(t['p_holm'])}{star} | {_f(nt['p_holm']) if nt else '-'} | "
                f"{_f(pt['mean']) if pt else '-'} | {_f(pt['p_holm']) if pt else '-'} |"
            )
    lines += ["", "Measures:", ""]
    for m in dict.fromkeys(t["measure"] for t in (real or {"tests": []})["tests"]):
        alt, unit, what = M.measure_info(m)
        lines.append(f"- `{m}`: {what} ({unit}; {alt} test)")
    if real and real["trends"]:
        lines += ["", "## Dose-response trends (Spearman rho per prompt, sign-flip across prompts)", "",
                  "| measure | dose | mean rho | real Holm p | negative Holm p | positive Holm p |", "|---|---|---|---|---|---|"]  # fmt: skip
        for t in real["trends"]:
            nt = next((x for x in neg["trends"] if x["measure"] == t["measure"]), None) if neg else None
            pt = next((x for x in pos["trends"] if x["measure"] == t["measure"]), None) if pos else None
            lines.append(
                f"| {t['measure']} | {t['dose']} | {_f(t['rho'])} | {_f(t['p_holm'])} | "
                f"{_f(nt['p_holm']) if nt else '-'} | {_f(pt['p_holm']) if pt else '-'} |"
            )
    lines += _washout_md(rep)
    if real and real.get("examples"):
        lines += ["", "## Example generations (first prompt, first seed of each arm)", ""]
        names = ["free", *(f"R={r:g}" for r in st["levels"])]
        lines.append(f"Prompt: {rep['prompts'][0]['prompt']!r}")
        lines.append("")
        lines += [f"- {a}: {txt!r}" for a, txt in zip(names, real["examples"], strict=False)]
    lines += ["", "Files: intervention.json (all numbers, per-prompt effects, seeds, versions), dose_response.png, "
              "washout.png. Method: docs/intervene.md.", ""]  # fmt: skip
    return "\n".join(lines)


def _washout_md(rep: dict[str, Any]) -> list[str]:
    ex = rep["experiments"]
    real = ex.get("real")
    if not real or not real["washout"]:
        return []
    w = max(real["washout"], key=lambda x: x["summary"]["injected"] or 0.0)
    pos = next((x for x in ex.get("positive", {}).get("washout", []) if x["level"] == w["level"]), None)
    s = w["summary"]
    lines = ["", f"## Norm washout (R = {w['level']:g}: where the perturbation dies)", ""]
    if s["injected"] is not None:
        dies = s["dies_at"] or "nowhere (it reaches the logits)"
        lines.append(
            f"The coupling changes the residual at block {rep['layer']} by {_f(100 * s['injected'])}% of its norm "
            f"({_f(100 * s['injected_dir'])}% in direction); {_f(100 * (s['logits'] or 0.0))}% change reaches the "
            f"centred logits. It washes out (direction change below 1% of the injection, or 0.1%) at: {dies}."
        )
    lines += ["", "| site | real: residual change | real: direction change | survival | positive: direction change |",
              "|---|---|---|---|---|"]  # fmt: skip
    for site, val in w["profile"].items():
        pd = pos["profile"].get(site, {}).get("dir") if pos else None
        lines.append(
            f"| {site} | {_f(100 * val['raw'])}% | {_f(100 * val['dir'])}% | {_f(s['survival'].get(site))} | "
            f"{_f(100 * pd) + '%' if pd is not None else '-'} |"
        )
    return lines


# ---- plots ---------------------------------------------------------------------------------------
def plot_dose_response(rep: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex, levels = rep["experiments"], rep["settings"]["levels"]
    measures = list(dict.fromkeys(t["measure"] for t in ex["real"]["tests"]))[:12]
    cols = min(4, len(measures))
    rows = (len(measures) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    style = {"real": ("C0", "-o"), "negative": ("0.5", ":s"), "positive": ("C3", "--^")}
    for ax, m in zip(axes.flat, measures, strict=False):
        for name, e in ex.items():
            ts = [t for r in levels if (t := _row(e["tests"], m, r)) is not None]
            if len(ts) != len(levels):
                continue
            y = np.array([t["mean"] for t in ts])
            lo = y - np.array([t["ci"][0] for t in ts])
            hi = np.array([t["ci"][1] for t in ts]) - y
            c, fmt = style.get(name, ("k", "-"))
            ax.errorbar(levels, y, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], fmt=fmt, color=c, label=name, capsize=3)
        ax.axvline(ex["real"]["r_free_mean"], color="0.7", lw=0.8)
        ax.axhline(0, color="0.8", lw=0.8)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("forced R")
    for ax in list(axes.flat)[len(measures) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Effect of forcing R (mean over prompts, 95% bootstrap CI; grey line: free-running R)", fontsize=9)
    return _save(fig, path)


def plot_washout(rep: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    zero = []
    colors = {"real": "C0", "negative": "0.5", "positive": "C3"}
    for name, e in rep["experiments"].items():
        if not e["washout"]:
            continue
        w = max(e["washout"], key=lambda x: x["summary"]["injected"] or 0.0)
        sites = list(w["profile"])
        if all(v["raw"] == 0 for v in w["profile"].values()):
            zero.append(name)
            continue
        for key, ls in (("raw", ":"), ("dir", "-")):
            y = np.maximum([w["profile"][s][key] for s in sites], 1e-9)
            ax.plot(range(len(sites)), y, ls, marker="o", ms=3, color=colors.get(name, "k"),
                    label=f"{name} {key} (R={w['level']:g})")  # fmt: skip
        ax.set_xticks(range(len(sites)), [s.replace("block_", "") for s in sites], rotation=90, fontsize=7)
    if zero:
        ax.text(0.01, 0.02, f"exactly 0 everywhere: {', '.join(zero)}", transform=ax.transAxes, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("relative change (per token)")
    ax.set_title("Norm washout: change of the residual (raw) and of its direction after the coupled block", fontsize=9)
    ax.legend(fontsize=6)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_report(out: Path, rep: dict[str, Any]) -> dict[str, Path]:
    """All files into `out` (atomically each), then run.json."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "intervention.json", "md": out / "intervention.md"}
    atomic_write_bytes(paths["json"], json.dumps(_finite(rep), indent=2, default=_json_default).encode())
    atomic_write_bytes(paths["md"], markdown(rep).encode())
    if "real" in rep["experiments"]:
        paths["dose_response"] = plot_dose_response(rep, out / "dose_response.png")
        paths["washout"] = plot_washout(rep, out / "washout.png")
    finish_run(out, KIND, headline=rep["verdicts"].get("headline"), source=rep.get("source", {}).get("run"))
    return paths


def _finite(o: Any) -> Any:
    """Non-finite floats (e.g. d_z of identical non-zero effects) become null: strict JSON."""
    if isinstance(o, float):
        return o if np.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
