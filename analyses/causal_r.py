"""causal_r: does the order parameter R of a trained phase core causally change what the model outputs?

The full chain, for each coupling (additive, multiplicative, gate) at train-phase's default block:
(i) train the core with CE + U on the corpus stories; (ii) continue from it with DPO and with ORPO
on the valence preference pairs (corpora/preferences/valence.jsonl); (iii) `steerkit intervene` on
every run over the grid 0:1:0.1 with the negative (detached core) and positive (planted shift)
controls, the norm-washout profile and, for preference runs, the held-out preference-margin measure.
Everything goes through the CLI as a user would type it. The report lists every verdict with its
controls and the conclusion. `--quick`: a tiny random model saved to a temporary folder, 3 steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

COUPLINGS = ["additive", "multiplicative", "gate"]
FULL = {"ce_steps": 60, "pref_steps": 40, "seeds": 2, "grid": "0:1:0.1", "permutations": 2000}
QUICK = {"ce_steps": 2, "pref_steps": 2, "seeds": 1, "grid": "0:1:1", "permutations": 100}


def steerkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `steerkit ARGS` as a user would; raise with its last lines on failure."""
    exe = Path(sys.executable).with_name("steerkit")
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"steerkit {' '.join(args[:3])}... failed: {(proc.stderr or proc.stdout)[-800:]}")
    return proc


def main() -> None:
    args = common.parser(__doc__).parse_args()
    out = common.out_dir("causal_r", args)
    clock = common.Clock()
    p = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="causal_r-"))
    model = args.model
    base = ["--batch-size", "2", "--val-every", "2"] if args.quick else []
    pref_len = ["--seq-len", "384"] if args.quick else ["--seq-len", "160"]  # prompt + continuation of a pair
    if args.quick:
        lm = common.tiny_lm()
        model = str(work / "tiny-llama")
        lm.model.save_pretrained(model)
        lm.tokenizer.save_pretrained(model)
        base += ["--allow-untrained"] if _accepts(work, "train-phase", "--allow-untrained") else []
    text = str(common.corpus_for(args) / "stories")
    pairs = str(common.ROOT / "corpora" / "preferences" / "valence.jsonl")
    if args.quick:  # four training and two validation pairs are enough to run the chain
        rows = Path(pairs).read_text().splitlines()
        lines = [x for x in rows if '"validation"' not in x][:4] + [x for x in rows if '"validation"' in x][:2]
        (work / "pairs.jsonl").write_text("\n".join(lines) + "\n")
        pairs = str(work / "pairs.jsonl")
        prompts = (common.ROOT / "corpora" / "prompts" / "default.jsonl").read_text().splitlines()[:4]
        (work / "prompts.jsonl").write_text("\n".join(prompts) + "\n")
    runs = work / "runs"
    results: dict = {"settings": p, "model": args.model if not args.quick else "tiny-llama", "couplings": {}}
    for coupling in COUPLINGS if not args.quick else COUPLINGS[:1]:
        entry: dict = {}
        ce = f"{coupling}-ce"
        steerkit("train-phase", "--model", model, "--text", text, "--coupling", coupling, "--steps",
                 str(p["ce_steps"]), "--out", str(runs), "--name", ce, *base, *(["--seq-len", "32"] if args.quick else []),
                 cwd=work)  # fmt: skip
        names = [ce]
        for obj in ("dpo", "orpo") if not args.quick else ("dpo",):
            name = f"{coupling}-{obj}"
            steerkit("train-phase", "--model", model, "--objective", obj, "--pairs", pairs, "--from", str(runs / ce),
                     "--steps", str(p["pref_steps"]), "--out", str(runs), "--name", name, *base, *pref_len, cwd=work)  # fmt: skip
            names.append(name)
        for name in names if not args.quick else names[1:]:
            iv = work / f"iv-{name}"
            steerkit("intervene", "--run", str(runs / name), "--grid", p["grid"], "--seeds", str(p["seeds"]),
                     "--permutations", str(p["permutations"]), "--out", str(iv),
                     *(["--prompts", str(work / "prompts.jsonl"), "--max-new-tokens", "4"] if args.quick else []), cwd=work)  # fmt: skip
            rep = json.loads((iv / "intervention.json").read_text())
            entry[name] = {"verdicts": rep.get("verdicts", {}), "levels": rep.get("settings", {}).get("levels")}
            for png in iv.glob("*.png"):
                (out / f"{name}-{png.name}").write_bytes(png.read_bytes())
            print(f"{name}: {rep.get('verdicts', {}).get('headline')}", flush=True)
        results["couplings"][coupling] = entry
    results["seconds"] = clock.seconds
    results["environment"] = common.environment()
    common.write_results(out, results, _report(results))


def _accepts(cwd: Path, command: str, option: str) -> bool:
    exe = Path(sys.executable).with_name("steerkit")
    return option in subprocess.run([str(exe), command, "--help"], capture_output=True, text=True, cwd=cwd).stdout


def _report(results: dict) -> str:
    lines = ["# causal_r", "",
             f"Question: does R, once trained, causally change what the model outputs? Model {results['model']}; "
             f"settings {results['settings']}; runtime {results['seconds']:.0f} s.", ""]  # fmt: skip
    heads = []
    for coupling, runs in results["couplings"].items():
        lines += [f"## {coupling}", ""]
        for name, e in runs.items():
            v = e["verdicts"]
            lines.append(f"- **{name}**: {v.get('headline', 'no verdict')}")
            lines += [f"  - {s}" for s in (v.get("measures") or {}).values()]
            heads.append(f"{name}: {v.get('headline', '?')}")
        lines.append("")
    lines += ["## Headline", "", "; ".join(heads) or "no runs", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
