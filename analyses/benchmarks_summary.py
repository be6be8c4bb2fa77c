"""benchmarks_summary: run benchmarks/*.py and collect their ratios in one table.

Each benchmark measures ratios within one run (capture vs the bare forward, steering vs plain
generate, a DPO step vs a CE step, ...), never wall-clock goals. This script runs the ones present,
keeps each one's JSON (or its printed lines) and writes one table. `--quick` runs only the
synthetic quality-metrics benchmark at toy sizes (seconds), to keep this script from rotting.
The peer-library comparison (benchmarks/peers.py: steering-vectors 0.12.2, repeng 0.4.0) needs
transformers < 5 and numpy < 2; that script makes its own environment on first use
($STEERKIT_CACHE/peer-venv, a few minutes of pip), never in the project's dependencies.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

BENCH = common.ROOT / "benchmarks"
FULL = {
    "capture": ["--n", "100", "--also-tiny"],
    "phase_overhead": [],
    "quality_metrics": [],
    "preference": [],
    "steer_eval": [],
    "peers": [],
}
QUICK = {
    "quality_metrics": [
        "--concepts",
        "6",
        "--positives",
        "4",
        "--layers",
        "1",
        "--hidden",
        "32",
        "--intermediate",
        "64",
        "--heads",
        "4",
        "--head-dim",
        "8",
        "--folds",
        "2",
    ],  # fmt: skip
}


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--report-only", action="store_true", help="rebuild report.md from the results.json in --out")
    args = ap.parse_args()
    out = common.out_dir("benchmarks_summary", args)
    if args.report_only:
        results = json.loads((out / "results.json").read_text())
        common.write_results(out, results, _report(results))
        return
    clock = common.Clock()
    plan = QUICK if args.quick else FULL
    results: dict = {"benchmarks": {}}
    for name, extra in plan.items():
        script = BENCH / f"{name}.py"
        if not script.is_file():
            results["benchmarks"][name] = {"status": "absent"}
            continue
        jpath = out / f"{name}.json"
        cmd = [sys.executable, str(script), *extra]
        if name in ("capture",):
            cmd += ["--out", str(jpath)]
        elif name in ("phase_overhead", "peers"):
            cmd += ["--json", str(jpath)]
        t = common.Clock()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.ROOT)
        entry = {"status": "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})", "seconds": t.seconds,
                 "command": " ".join(["python", f"benchmarks/{name}.py", *extra]),
                 "output_tail": proc.stdout.strip().splitlines()[-12:]}  # fmt: skip
        if proc.returncode != 0:
            entry["stderr_tail"] = proc.stderr.strip().splitlines()[-5:]
        if jpath.is_file():
            entry["json"] = json.loads(jpath.read_text())
        results["benchmarks"][name] = entry
        print(f"{name}: {entry['status']} in {entry['seconds']} s", flush=True)
    peers = results["benchmarks"].get("peers", {})
    results["peers"] = {"status": "not run (quick mode)" if args.quick else peers.get("status", "absent")}
    results["seconds"] = clock.seconds
    results["environment"] = common.environment()
    common.write_results(out, results, _report(results))


# The lines of each benchmark's output that carry its ratios (others: the last line).
HEADLINE = {
    "capture": ("c/a=",),
    "preference": ("dpo_over_ce", "reference_s_per_pair"),
    "steer_eval": ("batched_speedup", "same_tokens", "rowsteer_overhead", "steer_overhead"),
    "quality_metrics": ("TOTAL",),
}


def _headline(name: str, lines: list[str]) -> str:
    if name == "peers":
        return "the Peers table below"
    keys = HEADLINE.get(name)
    picked = [ln.strip().strip(",") for ln in lines if keys and any(k in ln for k in keys)]
    text = "; ".join(" ".join(x.split()) for x in picked) if picked else (lines or ["-"])[-1]
    return text[:240].replace("|", "\\|")  # a pipe would split the markdown cell


def _report(results: dict) -> str:
    peers = results["benchmarks"].get("peers", {})
    rows = [[n, e["status"], e.get("seconds", "-"), _headline(n, e.get("output_tail") or [])]
            for n, e in results["benchmarks"].items()]  # fmt: skip
    return "\n".join([
        "# benchmarks_summary",
        "",
        "Ratios measured within one run each; the machine is shared, so read ratios, not seconds "
        f"(load average at the end {results['environment']['load_average_1m']}). Runtime {results['seconds']:.0f} s.",
        "",
        common.table(rows, ["benchmark", "status", "seconds", "headline (its ratios)"]),
        "",
        "Full outputs: results.json and the per-benchmark JSON files beside it. Peers: "
        + results["peers"]["status"] + ".",
        *_peer_table(peers.get("json")),
    ]) + "\n"  # fmt: skip


def _peer_table(p: dict | None) -> list[str]:
    """Markdown lines: extract time and held-out top-3 per library (benchmarks/peers.py's JSON)."""
    if not p:
        return []
    pools = list(next(iter(p["readout"].values())))
    rows = [[lib, f"{p['extract_ratio_vs_steerkit'][lib]:.2f}", p["forwards"][lib],
             *(f"{r[q]['top3']:.3f} / {r[q]['top1']:.3f} (block {r[q]['best_layer']})" for q in pools)]
            for lib, r in p["readout"].items()]  # fmt: skip
    head = ["library", "extract time / steerkit", "forwards", *(f"held-out top-3 / top-1, {q} pooling" for q in pools)]
    return [
        "",
        f"## Peers ({p['model']}, {p['n_texts']} stories, {p['n_concepts']} concepts, {p['k_folds']}-fold)",
        "",
        common.table(rows, head),
        "",
        f"Peer environment: {p['peer_versions']}; its logits on a test sentence differ from steerkit's by "
        f"{p['peer_check']['max_abs_logit_diff']:.1e} at most (same token ids: {p['peer_check']['same_ids']}).",
    ]


if __name__ == "__main__":
    main()
