"""steering_methods: which vector method steers the most concepts (the steering default, by evidence)?

For each method (default caa, centered, logistic) it runs `steerkit extract --method M` on the same
corpus and model (the activation cache makes every capture after the first free), then the same
reduced `steerkit steer-eval` grid on every concept. The judge is the same for all methods: steer-eval
re-reads each continuation with the run's readout probe (fitted on the same activations whatever the
method), so only the steering direction differs between the columns. A concept is steerable when it
has an operating point (beats random directions after Holm, success >= 50%, NLL increase <= 1
nat/token). The method with the most steerable concepts (ties: lower median NLL increase) is the
evidence for `extract`'s default. `--quick`: a tiny random model, the first two methods, two concepts,
one layer, greedy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--methods", default="caa,centered,logistic", help="vector methods to compare")
    ap.add_argument("--layers", default="20", help="steered blocks (run layers of the default extract)")
    ap.add_argument("--alphas", default="0,4,8", help="steering strengths (in --scale units)")
    ap.add_argument("--scale", default="absolute", choices=["absolute", "equal", "relative"],
                    help="what alpha multiplies (steerkit steer --scale)")  # fmt: skip
    ap.add_argument("--prompts", type=int, default=8, help="neutral prompts (the first N of the default set)")
    ap.add_argument("--seeds", type=int, default=2, help="sampled continuations per prompt")
    ap.add_argument(
        "--random-draws", type=int, default=32, help="random directions per layer (power: docs/steer-eval.md)"
    )
    ap.add_argument("--max-new-tokens", type=int, default=24, help="tokens per continuation")
    ap.add_argument("--work", default=None, help="working folder to keep and resume (default: temporary)")
    args = ap.parse_args()
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        run(args, Path(args.work))
    else:
        with common.scratch("steering_methods", args.keep) as work:
            run(args, work)


def run(args: argparse.Namespace, work: Path) -> None:
    out = common.out_dir("steering_methods", args)
    clock = common.Clock()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.quick:
        methods = methods[:2]  # two methods show the comparison works; the full run compares all
        lm = common.tiny_lm()
        model = str(work / "tiny-llama")
        lm.model.save_pretrained(model)
        lm.tokenizer.save_pretrained(model)
        corpus = common.QUICK_CORPUS
        extract_extra = ["--no-preflight", "--no-cache", "--layers", "1,3"]
        grid = ["--concepts", "calm,sad", "--layers", "1", "--alphas", "0,4", "--greedy", "--max-new-tokens", "6",
                "--random-draws", "2", "--prompts", common.neutral_prompts(work, 3)]  # fmt: skip
    else:
        model, corpus, extract_extra = args.model, common.corpus_for(args), []
        grid = ["--layers", args.layers, "--alphas", args.alphas, "--scale", args.scale, "--seeds", str(args.seeds),
                "--random-draws", str(args.random_draws), "--max-new-tokens", str(args.max_new_tokens),
                "--prompts", common.neutral_prompts(work, args.prompts)]  # fmt: skip
    per: dict[str, dict] = {}
    for m in methods:
        run_dir = work / f"run-{m}"
        if not (run_dir / "readout.safetensors").is_file():
            common.steerkit("extract", "--stories", str(corpus), "--model", model, "--method", m, "--out", str(run_dir),
                     *extract_extra)  # fmt: skip
        common.steerkit("steer-eval", "--vectors", str(run_dir), "--out", str(work / f"eval-{m}"), *grid)
        rep = json.loads((work / f"eval-{m}" / "steer_eval.json").read_text())
        per[m] = {"summary": rep["summary"], "operating_points": rep["operating_points"],
                  "reader": rep["source"].get("reader"), "readout_layer": rep["source"].get("readout_layer"),
                  "probe_kind": rep["source"].get("probe_kind"), "held_out": rep.get("held_out")}  # fmt: skip
        layers, alphas, n_units = rep["layers"], rep["alphas"], rep["n_units"]
        draws = rep["config"]["random_draws"]
        tokens = rep["config"].get("max_new_tokens")
        scale = rep["config"].get("scale", "absolute")
    ranking = sorted(methods, key=lambda m: (-per[m]["summary"]["n_steerable"], _median(per[m])))
    results = {"methods": per, "ranking": ranking, "best": ranking[0], "layers": layers, "alphas": alphas,
               "n_units": n_units, "random_draws": draws, "max_new_tokens": tokens, "scale": scale, "model": "tiny-llama" if args.quick else args.model}  # fmt: skip
    results["seconds"] = clock.seconds
    results["environment"] = common.environment()
    common.write_results(out, results, _report(results))


def _median(entry: dict) -> float:
    m = entry["summary"].get("median_nll_increase")
    return float("inf") if m is None else float(m)


def _headline(per: dict, ranked: list[str]) -> str:
    """Who steers the most concepts, naming a tie on that count (the NLL cost then orders them)."""
    top = per[ranked[0]]["summary"]
    tied = [m for m in ranked if per[m]["summary"]["n_steerable"] == top["n_steerable"]]
    share = f"{top['n_steerable']} of {top['n_concepts']} ({_pct(top.get('share_steerable'))})"
    if len(ranked) == 1:
        return f"`{ranked[0]}` steers {share} of the concepts"
    if len(tied) == 1:
        return f"`{ranked[0]}` steers the most concepts: {share}"
    costs = ", ".join(f"`{m}` {_median(per[m]):.2f}" for m in tied)
    return (f"{' and '.join(f'`{m}`' for m in tied)} tie at {share} steerable concepts (median NLL increase at "
            f"their operating points: {costs} nat/token)")  # fmt: skip


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.0%}"


def _report(results: dict) -> str:
    per, methods = results["methods"], results["ranking"]
    concepts = list(per[methods[0]]["operating_points"])
    head = "| | " + " | ".join(methods) + " |"
    rule = "|---" * (len(methods) + 1) + "|"
    rows = []
    for label, key, fmt in [("steerable concepts", "n_steerable", str), ("share", "share_steerable", _pct),
                            ("of them held on held-out prompts", "n_held_out", lambda x: "—" if x is None else str(x)),
                            ("median NLL increase at the operating points", "median_nll_increase",
                             lambda x: "—" if x is None else f"{x:.2f}"),
                            ("median success at the operating points", "median_success", _pct),
                            ("random-direction success", "random_success", _pct)]:  # fmt: skip
        rows.append(f"| {label} | " + " | ".join(fmt(per[m]["summary"].get(key)) for m in methods) + " |")
    table = ["| concept | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for c in concepts:
        cells = []
        for m in methods:
            op = per[m]["operating_points"].get(c)
            held = (per[m].get("held_out") or {}).get(c)
            kept = "" if held is None else f"; held out {held['success']:.0%}" + ("" if held["held"] else ", not held")
            cells.append("—" if not op else f"{op['success']:.0%} (L{op['layer']}, a={op['alpha']:g}{kept})")
        table.append(f"| {c} | " + " | ".join(cells) + " |")
    best = results["best"]
    s = per[best]["summary"]
    reader = per[best].get("reader")
    if per[best].get("probe_kind"):
        reader = f"{reader} ({per[best]['probe_kind']})"
    return "\n".join([
        "# steering_methods",
        "",
        f"Question: which vector method steers the most concepts? Model {results['model']}; the same reduced steer-eval "
        f"grid for every method: layers {results['layers']}, alphas {results['alphas']} ({results.get('scale', 'absolute')} scale), {results['n_units']} prompt x "
        f"seed units per arm, {results.get('max_new_tokens') or '?'} tokens per continuation, "
        f"{results.get('random_draws', '?')} random directions per layer and alpha (the control); "
        f"every continuation judged by the run's {reader} at block {per[best].get('readout_layer')} "
        f"(the same reader whatever the method). Runtime {results['seconds']:.0f} s.",
        "",
        f"**Headline:** {_headline(per, methods)}; ranking {' > '.join(f'`{m}`' for m in methods)} "
        f"({', '.join(str(per[m]['summary']['n_steerable']) for m in methods)} of {s.get('n_concepts')}).",
        "",
        head,
        rule,
        *rows,
        "",
        "Operating point per concept (success, layer, alpha; held out: chosen on half the prompts, measured on the "
        "other half, both ways, docs/steer-eval.md):",
        "",
        *table,
    ]) + "\n"  # fmt: skip


if __name__ == "__main__":
    main()
