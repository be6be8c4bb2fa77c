"""steering: do the concept vectors steer, at what fluency cost, and do near concepts bleed?

Runs `steerkit steer-eval` (the default grid: every concept x 3 layers x alphas 0,3,4,6,8, 16 neutral
prompts x 2 seeds, a random-direction control) on an extract run, then summarises: the share of
concepts with an operating point (success = the steered concept among the 3 read best, NLL
increase < 1 nat/token, beating random directions after Holm), the success-vs-fluency frontier,
and the off-target matrix compared with the readout geometry: does steering `calm` raise the
concepts whose vectors lie near `calm` (Pearson r between cosine similarity and score change over
concept pairs)? `--quick`: a tiny random model, two concepts, one layer, greedy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--vectors", default=None, help="extract run (default: make one in a temporary folder)")
    ap.add_argument("--layers", default=None, help="blocks to steer, e.g. 15,20 (default: steer-eval's auto, 10,15,20)")
    args = ap.parse_args()
    with common.scratch("steering", args.keep) as work:
        run(args, work)


def run(args: argparse.Namespace, work: Path) -> None:
    """The steer-eval grid (and, without --vectors, the extract it needs) in `work`; the results."""
    out = common.out_dir("steering", args)
    clock = common.Clock()
    vectors = args.vectors
    if args.quick:
        lm = common.tiny_lm()
        model = str(work / "tiny-llama")
        lm.model.save_pretrained(model)
        lm.tokenizer.save_pretrained(model)
        vectors = str(work / "run")
        common.steerkit("extract", "--stories", str(common.QUICK_CORPUS), "--model", model, "--out", vectors,
                 "--no-preflight", "--no-cache", "--layers", "1,3")  # fmt: skip
        grid = ["--concepts", "calm,sad", "--layers", "1", "--alphas", "0,4", "--greedy", "--max-new-tokens", "6",
                "--random-draws", "2", "--prompts", common.neutral_prompts(work, 3)]  # fmt: skip
    else:
        if vectors is None:
            vectors = str(work / "run")
            common.steerkit(
                "extract", "--stories", str(common.corpus_for(args)), "--model", args.model, "--out", vectors
            )
        grid = [] if args.layers is None else ["--layers", args.layers]
    common.steerkit("steer-eval", "--vectors", vectors, "--out", str(work / "eval"), *grid)
    rep = json.loads((work / "eval" / "steer_eval.json").read_text())
    for f in [*(work / "eval").glob("*.png"), work / "eval" / "steer_eval.md"]:  # the figures and the full table
        (out / f.name).write_bytes(f.read_bytes())
    cfg = rep["config"]
    results = {"summary": rep["summary"], "operating_points": rep["operating_points"], "layers": rep["layers"],
               "alphas": rep["alphas"], "n_units": rep["n_units"], "geometry": _geometry(rep, Path(vectors)),
               "held_out": rep.get("held_out"), "by_layer": _by_layer(rep), "rows": rep.get("stats"),
               "grid": {k: cfg.get(k) for k in ("scale", "max_new_tokens", "random_draws", "seeds", "greedy")},
               "model": "tiny-llama" if args.quick else rep["source"].get("model") or args.model,
               "reader": _reader(rep["source"])}  # fmt: skip
    _frontier(rep, out)
    results["seconds"] = clock.seconds
    results["environment"] = common.environment()
    common.write_results(out, results, _report(results))


def _geometry(rep: dict, run: Path) -> dict:
    """Pearson r over (steered, other) concept pairs between the readout cosine of their vectors
    (at the readout layer) and the other concept's score change at the steered one's operating point."""
    from steerkit.vectors import ConceptVectors

    cv = ConceptVectors.load(run)
    layer = rep.get("config", {}).get("readout_layer") or cv.layers[len(cv.layers) // 2]
    layer = layer if layer in cv.layers else cv.layers[len(cv.layers) // 2]
    u = cv.vectors[layer].double().numpy()
    cos = u @ u.T
    xs, ys = [], []
    for name, row in rep["off_target"].items():
        i = cv.concepts.index(name)
        for j, change in enumerate(row):
            if j != i and np.isfinite(change):
                xs.append(cos[i, j])
                ys.append(change)
    if len(xs) < 3:
        return {"n_pairs": len(xs), "pearson_r": None}
    r = float(np.corrcoef(xs, ys)[0, 1])
    return {"n_pairs": len(xs), "pearson_r": round(r, 4), "readout_layer": int(layer)}


def _reader(source: dict) -> str:
    """Who judged the continuations, in words: 'shrinkage_lda probe at block 17'."""
    who = f"{source['probe_kind']} probe" if source.get("reader") == "probe" else str(source.get("reader"))
    return f"{who} at block {source.get('readout_layer')}"


def _rows(stats: dict | None) -> str:
    """The generations behind the runtime: how many came from steer-eval's row cache (an earlier run)."""
    if not stats:
        return ""
    return f" ({stats['rows']} generations, {stats['cached']} of them from the row cache of earlier runs)"


def _by_layer(rep: dict) -> dict[str, int]:
    """How many operating points each steered block holds (a concept's point is its best cell)."""
    out = {str(layer): 0 for layer in rep["layers"]}
    for op in rep["operating_points"].values():
        if op and op.get("layer") is not None:
            out[str(op["layer"])] += 1  # a point off the steered blocks would be a steer-eval bug: KeyError
    return out


def _frontier(rep: dict, out: Path) -> None:
    with common.figure(out / "frontier.png", (7, 5)) as fig:
        ax = fig.subplots()
        cells = [c for c in rep["cells"] if c.get("nll_increase") is not None]
        ax.scatter(
            [c["nll_increase"] for c in cells], [c["success"] for c in cells], s=10, alpha=0.5, label="concept cells"
        )
        rnd = [r for r in rep["random"] if r.get("nll_increase") is not None]
        if rnd:
            ax.scatter([r["nll_increase"] for r in rnd], [rep["summary"].get("random_success") or 0] * len(rnd),
                       marker="x", color="grey", label="random directions (mean success)")  # fmt: skip
        ax.axvline(1.0, color="red", ls=":", label="1 nat/token")
        ax.set(
            xlabel="NLL increase (nat/token)", ylabel="success (steered concept in top 3)", title="success vs fluency"
        )
        ax.legend(fontsize=8)


def _report(results: dict) -> str:
    s, g = results["summary"], results["geometry"]
    best = ", ".join(f"{b['concept']} ({b.get('success', 0):.0%})" for b in s.get("best", []))
    worst = ", ".join(f"{b['concept']} ({(b.get('success') or 0):.0%})" for b in s.get("worst", []))
    med = s.get("median_nll_increase")
    rnd = s.get("random_success")
    grid = results.get("grid") or {}
    decoding = "greedy" if grid.get("greedy") else "sampled"
    held = s.get("n_held_out")
    layers = ", ".join(f"block {k}: {v}" for k, v in (results.get("by_layer") or {}).items())
    return "\n".join([
        "# steering",
        "",
        f"Question: do the vectors steer, at what fluency cost? Model {results.get('model')}, layers {results['layers']}, "
        f"alphas {results['alphas']} ({grid.get('scale')}), {results['n_units']} prompt x seed units per arm "
        f"({decoding}, {grid.get('max_new_tokens')} tokens), {grid.get('random_draws')} random directions per layer "
        f"and alpha, continuations judged by the run's {results.get('reader')}. Runtime {results['seconds']:.0f} s"
        + _rows(results.get("rows")) + ".",
        "",
        f"**Headline:** {s.get('n_steerable')} of {s.get('n_concepts')} concepts ({s.get('share_steerable', 0):.0%}) have an "
        f"operating point (a claim against random directions after Holm over the grid, success >= 50%, NLL increase "
        f"<= 1 nat/token); median NLL increase there {'n/a' if med is None else f'{med:.2f}'} nat/token; random-direction "
        f"success {'n/a' if rnd is None else f'{rnd:.0%}'}. "
        + ("" if held is None else f"{held} of the {s.get('n_steerable')} keep success >= 50% within the budget on the "
           "prompts that did not choose their cell (held out, steer_eval.md). ")
        + (f"Operating points per block: {layers}." if layers else ""),
        "",
        f"- best steered: {best or 'none'}",
        f"- worst steered: {worst or 'none'}",
        f"- geometry: r(cosine of vectors, off-target score change) = {g.get('pearson_r')} over {g.get('n_pairs')} "
        "concept pairs (positive: near concepts bleed into each other when steered)",
        "",
        "Figures: frontier.png (success vs NLL increase per cell) and steer-eval's curves, operating points and "
        "off-target matrix (steer_eval_*.png).",
    ]) + "\n"  # fmt: skip


if __name__ == "__main__":
    main()
