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

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

COUPLINGS = ["additive", "multiplicative", "gate"]
# Sized for the 45-minute budget on 2 cores (about 2.5 min per CE run, 3 per preference run, 1.5-2 per
# intervene). The preference runs use the recipe that learned on smollm2 (docs/preference.md: lr 0.05,
# whole pairs; held-out accuracy plateaus by step 10). 12 prompts are the fewest whose smallest
# two-sided p (2 / 2^12) clears Holm's first threshold over 5 levels x 8 measures.
# ORPO does not learn on the core alone (docs/preference.md: it has no reference, so its accuracy needs
# the base model's own preference reordered, which a rank-1 coupling cannot do in 20 steps); it gets
# the recipe that does learn: lambda (beta) 1 and rank-8 LoRA on the blocks from the coupled one on.
FULL = {"ce_steps": 40, "pref_steps": 20, "pref_lr": 0.05, "seeds": 1, "prompts": 12, "grid": "0:1:0.25",
        "permutations": 2000, "orpo": ["--beta", "1", "--lora-rank", "8", "--lora-lr", "1e-3"]}  # fmt: skip
QUICK = {"ce_steps": 2, "pref_steps": 2, "pref_lr": 0.05, "seeds": 1, "prompts": 4, "grid": "0:1:1",
         "permutations": 100, "orpo": ["--beta", "1", "--lora-rank", "2", "--lora-lr", "1e-3"]}  # fmt: skip


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--report-only", action="store_true", help="rebuild report.md from the results.json in --out")
    args = ap.parse_args()
    if args.report_only:  # the 80-minute chain need not rerun when only the report's wording changes
        out = common.out_dir("causal_r", args)
        results = json.loads((out / "results.json").read_text())
        results["conclusion"] = conclusion(results)
        common.write_results(out, results, _report(results))
        return
    with common.scratch("causal_r", args.keep) as work:
        chain(args, work)


def chain(args: argparse.Namespace, work: Path) -> None:
    """Train, continue and intervene in `work` (a scratch folder); write the results."""
    out = common.out_dir("causal_r", args)
    clock = common.Clock()
    p = QUICK if args.quick else FULL
    model = args.model
    base = ["--batch-size", "2", "--val-every", "2"] if args.quick else []
    pref_len = ["--seq-len", "384", "--lr", str(p["pref_lr"])] if args.quick else ["--lr", str(p["pref_lr"])]
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
    prompts = (common.ROOT / "corpora" / "prompts" / "default.jsonl").read_text().splitlines()[: p["prompts"]]
    (work / "prompts.jsonl").write_text("\n".join(prompts) + "\n")
    runs = work / "runs"
    results: dict = {"settings": p, "model": args.model if not args.quick else "tiny-llama", "couplings": {}}
    for coupling in COUPLINGS if not args.quick else COUPLINGS[:1]:
        entry: dict = {}
        ce = f"{coupling}-ce"
        common.steerkit("train-phase", "--model", model, "--text", text, "--coupling", coupling, "--steps",
                 str(p["ce_steps"]), "--out", str(runs), "--name", ce, *base, *(["--seq-len", "32"] if args.quick else []),
                 cwd=work)  # fmt: skip
        names = [ce]
        layer = json.loads((runs / ce / "config.json").read_text())["config"]["layer"]  # the coupled block
        for obj in ("dpo", "orpo") if not args.quick else ("dpo",):
            name = f"{coupling}-{obj}"
            extra = [*p["orpo"], "--lora-blocks", f"{layer}:-1"] if obj == "orpo" else []
            common.steerkit("train-phase", "--model", model, "--objective", obj, "--pairs", pairs, "--from", str(runs / ce),
                     "--steps", str(p["pref_steps"]), "--out", str(runs), "--name", name, *base, *pref_len, *extra,
                     cwd=work)  # fmt: skip
            names.append(name)
        for name in names if not args.quick else names[1:]:
            iv = work / f"iv-{name}"
            common.steerkit("intervene", "--run", str(runs / name), "--grid", p["grid"], "--seeds", str(p["seeds"]),
                     "--permutations", str(p["permutations"]), "--out", str(iv),
                     "--prompts", str(work / "prompts.jsonl"), *(["--max-new-tokens", "4"] if args.quick else []),
                     cwd=work)  # fmt: skip
            rep = json.loads((iv / "intervention.json").read_text())
            entry[name] = summarize_run(rep, runs / name)
            for png in iv.glob("*.png"):
                (out / f"{name}-{png.name}").write_bytes(png.read_bytes())
            print(f"{name}: {rep.get('verdicts', {}).get('headline')}", flush=True)
        results["couplings"][coupling] = entry
    results["seconds"] = clock.seconds
    results["environment"] = common.environment()
    results["conclusion"] = conclusion(results)
    common.write_results(out, results, _report(results))


def _accepts(cwd: Path, command: str, option: str) -> bool:
    exe = Path(sys.executable).with_name("steerkit")
    return option in subprocess.run([str(exe), command, "--help"], capture_output=True, text=True, cwd=cwd).stdout


def summarize_run(rep: dict, run: Path) -> dict:
    """What the conclusion needs from one intervention.json: verdicts, which measures R moved (with
    their largest effect), the controls, the washout at the strongest level and, for preference
    runs, the held-out accuracy the training reached."""
    ex = rep.get("experiments", {})
    real, neg, pos = ex.get("real", {}), ex.get("negative", {}), ex.get("positive", {})
    moved = {}
    for t in real.get("tests", []):
        if t["significant"] and abs(t["mean"]) > abs(moved.get(t["measure"], {}).get("mean", 0.0)):
            moved[t["measure"]] = {k: t[k] for k in ("level", "mean", "ci", "p_holm", "unit")}
    for t in real.get("trends", []):
        if t["significant"] and t["measure"] not in moved:
            moved[t["measure"]] = {"trend_rho": t.get("rho"), "p_holm": t["p_holm"]}
    wash = max(real.get("washout", []), key=lambda w: w["summary"]["injected"] or 0.0, default=None)
    out = {
        "verdicts": rep.get("verdicts", {}),
        "levels": rep.get("settings", {}).get("levels"),
        "r_free_mean": real.get("r_free_mean"),
        "moved": moved,
        "negative_clean": not any(t["significant"] for t in neg.get("tests", [])),
        "positive_detected": sorted({t["measure"] for t in pos.get("tests", []) if t["significant"]}),
        "positive_margin": _largest(pos, "pref_margin"),
        "washout": None if wash is None else {"level": wash["level"], **{k: wash["summary"].get(k) for k in
                                                                         ("injected", "dies_at", "logits")}},
        "alpha": rep.get("source", {}).get("alpha"),
        "seconds": rep.get("seconds"),
    }  # fmt: skip
    last_val = None
    if (run / "metrics.jsonl").is_file():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            d = json.loads(line)
            if "val/rewards/accuracies" in d:
                last_val = {"step": d["step"], "accuracy": d["val/rewards/accuracies"],
                            "ci": d.get("val/rewards/accuracies_ci"), "margin": d.get("val/rewards/margins")}  # fmt: skip
    out["heldout"] = last_val
    return out


def _largest(exp: dict, measure: str) -> dict | None:
    ts = [t for t in exp.get("tests", []) if t["measure"] == measure]
    if not ts:
        return None
    t = max(ts, key=lambda t: abs(t["mean"]))
    return {"level": t["level"], "mean": t["mean"], "p_holm": t["p_holm"], "significant": t["significant"]}


def conclusion(results: dict) -> str:
    """The plain-words answer, built from the verdicts (never written by hand)."""
    runs = [(c, n, e) for c, rs in results["couplings"].items() for n, e in rs.items()]
    if not runs:
        return "No runs."
    clean = [n for _, n, e in runs if e["negative_clean"]]
    effect = [(n, e) for _, n, e in runs if e["moved"]]
    parts = []
    if effect:
        parts.append(
            "Forcing R changed the outputs of "
            + "; ".join(f"`{n}` ({', '.join(_effect(m, v) for m, v in e['moved'].items())})" for n, e in effect)
            + f", {len(effect)} of {len(runs)} trained runs"
        )
    else:
        parts.append(f"Forcing R changed no measured output in any of the {len(runs)} trained runs")
    parts[-1] += (
        f"; the negative control (core detached) was clean in {len(clean)} of {len(runs)}"
        + ("" if len(clean) == len(runs) else f" (not in {', '.join(n for _, n, _ in runs if n not in clean)})")
        + "."
    )
    null = [(n, e) for _, n, e in runs if not e["moved"]]
    if null:
        seen = [n for n, e in null if e["positive_detected"]]
        names = ", ".join(n for n, _ in null)
        if len(seen) == len(null):
            tail = "so each of these nulls is informative: an effect of the control's size would have been seen"
        elif seen:
            tail = f"so only those nulls ({', '.join(seen)}) are informative; the others lacked power"
        else:
            tail = "so these nulls are uninformative: the test lacked the power to see even the planted effect"
        parts.append(
            f"Where R did nothing ({names}), the planted positive control was detected in {len(seen)} of {len(null)}, "
            + tail
            + "."
        )
    pref = [(n, e) for _, n, e in runs if "pref_margin" in (e["verdicts"].get("measures") or {})]
    if pref:
        hit = [n for n, e in pref if "pref_margin" in e["moved"]]
        learned = [n for n, e in pref if _learned(e)]
        parts.append(
            f"{len(learned)} of {len(pref)} preference runs learned a held-out preference (accuracy CI above 0.5"
            + (f": {', '.join(learned)}" if learned else "")
            + f"). Forcing R moved the held-out chosen-minus-rejected margin in {len(hit)} of the {len(pref)}"
            + (f" ({', '.join(hit)}): there the trained preference shift runs through R" if hit else "")
            + "."
        )
        seen = [n for n, e in pref if n not in hit and "pref_margin" in e["positive_detected"]]
        if seen:
            parts.append(
                f"Where the margin did not move and the positive control moved it ({', '.join(seen)}), "
                "what was learned does not run through R: the test could have seen an effect of the control's size."
            )
    mult = [(n, e) for c, n, e in runs if c == "multiplicative" and e["washout"]]
    if mult:
        w = mult[0][1]["washout"]
        parts.append(
            f"The seeds' multiplicative coupling before a norm: its perturbation at the coupled block "
            f"({_fmt(w['injected'])} of the residual) "
            + (f"is washed out from `{w['dies_at']}` on" if w["dies_at"] else "survives to the logits")
            + f" (logit change {_fmt(w['logits'])})."
        )
    return " ".join(parts)


def _learned(e: dict) -> bool:
    h = e.get("heldout") or {}
    return bool(h.get("ci")) and h["ci"][0] > 0.5


def _effect(m: str, v: dict) -> str:
    if "mean" in v:
        return f"{m} {_fmt(v['mean'])} {v['unit']} at R = {v['level']:g}, Holm p {_fmt(v['p_holm'])}"
    return f"{m} trend rho {_fmt(v['trend_rho'])}, Holm p {_fmt(v['p_holm'])}"


def _fmt(x: object) -> str:
    return "-" if x is None else f"{x:.3g}" if isinstance(x, float) else str(x)


def _report(results: dict) -> str:
    lines = ["# causal_r", "",
             f"Question: does R, once trained, causally change what the model outputs? Model {results['model']}; "
             f"settings {results['settings']}; runtime {results['seconds']:.0f} s.", "",
             "## Conclusion", "", conclusion(results), ""]  # fmt: skip
    heads = []
    for coupling, runs in results["couplings"].items():
        lines += [f"## {coupling}", ""]
        for name, e in runs.items():
            v = e["verdicts"]
            h = e.get("heldout")
            acc = (
                f" (held-out accuracy {h['accuracy']:.3f}, 95% CI [{h['ci'][0]:.3f}, {h['ci'][1]:.3f}], at step {h['step']})"
                if h and h["ci"]
                else ""
            )
            lines.append(f"- **{name}**{acc}: {v.get('headline', 'no verdict')}")
            lines += [f"  - {s}" for s in (v.get("measures") or {}).values()]
            lines += [f"  - {s}" for s in v.get("summary") or []]
            heads.append(f"{name}: {v.get('headline', '?')}")
        lines.append("")
    lines += ["## Headlines", "", "; ".join(heads) or "no runs", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
