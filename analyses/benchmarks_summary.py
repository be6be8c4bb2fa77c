"""benchmarks_summary: run benchmarks/*.py and collect their ratios in one table.

Each benchmark measures ratios within one run (capture vs the bare forward, steering vs plain
generate, a DPO step vs a CE step, ...), never wall-clock goals. This script runs the ones present,
keeps each one's JSON (or its printed lines) and writes one table. `--quick` runs only the
synthetic quality-metrics benchmark at toy sizes (seconds), to keep this script from rotting.
The peer-library comparison (steering-vectors 0.12.2, repeng 0.4.0) needs its own environment with
transformers < 5 (DESIGN.md); no script for it is committed, so it is reported as not run.
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
    args = common.parser(__doc__).parse_args()
    out = common.out_dir("benchmarks_summary", args)
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
        elif name == "phase_overhead":
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
    results["peers"] = {"status": "not run: no peer environment script is committed (see DESIGN.md for the figures)"}
    results["seconds"] = clock.seconds
    results["environment"] = common.environment()
    rows = [[n, e["status"], e.get("seconds", "-"), (e.get("output_tail") or ["-"])[-1][:90]]
            for n, e in results["benchmarks"].items()]  # fmt: skip
    md = "\n".join([
        "# benchmarks_summary",
        "",
        "Ratios measured within one run each; the machine is shared, so read ratios, not seconds "
        f"(load average at the end {results['environment']['load_average_1m']}). Runtime {results['seconds']:.0f} s.",
        "",
        common.table(rows, ["benchmark", "status", "seconds", "last line"]),
        "",
        "Full outputs: results.json and the per-benchmark JSON files beside it. Peers: "
        + results["peers"]["status"] + ".",
    ]) + "\n"  # fmt: skip
    common.write_results(out, results, md)


if __name__ == "__main__":
    main()
