"""pooling_and_layers: which pooling, layer and vector method read held-out stories best?

The table behind `DEFAULT_POOLING` and extract's default method: 5-fold held-out readout (top-1 /
top-3 over all concepts, folds stratified over single-concept texts with each paired scenario's texts
in one fold, as the quality report folds them, the vectors rebuilt from the
training folds only with each method) per pooling (last, mean, mean_after:1) x layer x method
(caa, paired, centered, pca, logistic) on the story corpus, and beside the vector methods the two
readout probes `extract` can fit (`probe:lda`, the default, and `probe:logistic`), refitted inside
each fold as the quality report does. `--model` runs another model (results/by_model/<model>/);
`--methods` restricts the method comparison (the pooling comparison always runs caa, paired, centered).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

from steerkit.capture import capture, default_spread, parse_pooling  # noqa: E402
from steerkit.corpus import load as load_corpus  # noqa: E402
from steerkit.models.zoo import cache_root  # noqa: E402
from steerkit.quality.heldout import held_out_readout  # noqa: E402
from steerkit.vectors.extract import DEFAULT_POOLING, membership  # noqa: E402
from steerkit.vectors.methods import METHODS, MethodInputs  # noqa: E402
from steerkit.vectors.probe import fit_readout_probe, story_groups  # noqa: E402

POOLINGS = ["last", "mean", "mean_after:1"]
SUBSET_PER_CONCEPT = 8  # pooling comparison: unpaired stories per concept (+ all paired texts), to fit 2 cores
PROBES = ["probe:lda", "probe:logistic"]  # the readout probes (`extract --probe lda|logistic`)
SLOW = {"logistic", "probe:logistic"}  # iterative fits per fold: only at a few layers in the full run
FOLDS = "stratified, scenario-grouped"  # the quality report's folds (held_out_readout with groups)


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--per-concept", type=int, default=SUBSET_PER_CONCEPT, help="pooling subset: stories per concept")
    ap.add_argument("--methods", default=",".join([*METHODS, *PROBES]), help="vector methods and probes to compare")
    ap.add_argument(
        "--carry",
        default="",
        help="methods whose rows are copied from the results folder's existing "
        "results.json (same model, texts and folds) instead of recomputed; marked as carried in the report",
    )
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    carry = [m.strip() for m in args.carry.split(",") if m.strip()]
    unknown = [m for m in methods + carry if m not in METHODS and m not in PROBES]
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join([*METHODS, *PROBES])}")
    common.seed_all()
    out = common.out_dir("pooling_and_layers", args)
    if carry and not (out / "results.json").is_file():  # before an hour of work, not after
        raise SystemExit(f"--carry: {out / 'results.json'} does not exist; run without --carry first")
    clock = common.Clock()
    lm = common.model_for(args)
    corpus = load_corpus(common.corpus_for(args))
    n_blocks = lm.adapter.n_blocks(lm.model)
    layers = default_spread(n_blocks) if not args.quick else [1, n_blocks - 1]
    texts = [t.text for t in corpus.texts]
    neutral = [t.text for t in corpus.neutral]
    pos, neg, scenario = membership(corpus)
    names = corpus.names
    labels = torch.tensor([names.index(next(iter(t.concepts))) if len(t.concepts) == 1 else -1 for t in corpus.texts])
    k = 5 if not args.quick else 3
    slow_layers = layers[len(layers) // 2 - 1 : len(layers) // 2 + 2] if not args.quick else layers
    subset = _subset(corpus, args.per_concept if not args.quick else 10**6)
    groups = story_groups(texts, scenario)
    results: dict = {"per_concept": args.per_concept, "layers": layers, "k_folds": k, "folds": FOLDS,
                     "n_texts": len(texts), "n_subset": int(subset.sum()),
                     "n_concepts": len(names), "table": {}, "methods": {}}  # fmt: skip
    cache = None if args.quick else cache_root() / "activations"
    idx = subset.nonzero().squeeze(1)
    for pname in POOLINGS:  # the pooling comparison: caa, paired, centered on the same subset of texts
        sub_texts = [texts[i] for i in idx.tolist()]
        res = capture(lm, sub_texts + neutral, layers, pooling=parse_pooling(pname), cache_dir=cache)
        results["table"][pname] = {
            m: _readout(
                res,
                len(sub_texts),
                pos[:, idx],
                neg[:, idx],
                scenario[idx],
                labels[idx],
                names,
                k,
                m,
                layers,
                groups[idx],
            )
            for m in ("caa", "paired", "centered")
        }
    res = capture(lm, texts + neutral, layers, pooling=DEFAULT_POOLING, cache_dir=cache)
    for mname in methods:  # the method comparison: each method and probe on the whole corpus, the default pooling
        use = layers if mname not in SLOW else slow_layers
        results["methods"][mname] = _readout(res, len(texts), pos, neg, scenario, labels, names, k, mname, use, groups)
    results["model"] = lm.info.get("spec")
    results["carried"] = _carry(out / "results.json", carry, results) if carry else {}
    results["seconds"] = clock.seconds
    results["environment"] = common.environment()
    best = max(((m, la, v) for m, r in results["methods"].items() for la, v in r.items()),
               key=lambda t: (t[2]["top3"], t[2]["top1"]))  # fmt: skip
    results["best"] = {"pooling": DEFAULT_POOLING.name, "method": best[0], "layer": int(best[1]), **best[2]}
    bp = max(((p, la, v) for p, ms in results["table"].items() for la, v in ms["caa"].items()),
             key=lambda t: (t[2]["top3"], t[2]["top1"]))  # fmt: skip
    results["best_pooling_caa"] = {"pooling": bp[0], "layer": int(bp[1]), **bp[2]}
    _figure(results, out)
    common.write_results(out, results, _report(results, args))


def _carry(path: Path, carry: list[str], results: dict) -> dict[str, str]:
    """Copy the rows of methods `carry` from an earlier results.json of the same model, texts and
    folds into results["methods"] (in place); returns {method: where its rows came from}.
    Exits with a message when the earlier results do not exist or do not match."""
    if not path.is_file():
        raise SystemExit(f"--carry: {path} does not exist; run without --carry first")
    old = json.loads(path.read_text())
    same = all(old.get(k) == results[k] for k in ("model", "n_texts", "k_folds", "folds", "n_concepts"))
    missing = [m for m in carry if m not in old.get("methods", {})]
    if not same or missing:
        raise SystemExit(
            f"--carry: {path} is another model / corpus / fold count or kind, or lacks {missing}; recompute instead"
        )
    for m in carry:
        results["methods"][m] = old["methods"][m]
    return {m: f"an earlier run of this analysis ({old.get('seconds', 0):.0f} s)" for m in carry}


def _subset(corpus: object, per_concept: int) -> torch.Tensor:
    """(N,) bool: the first `per_concept` unpaired stories of each concept and every paired text."""
    seen: dict[str, int] = {}
    keep = []
    for t in corpus.texts:  # type: ignore[attr-defined]
        story = all(s.kind == "story" for s in t.sources)
        if story:
            c = next(iter(t.concepts))
            seen[c] = seen.get(c, 0) + 1
        keep.append(not story or seen[c] <= per_concept)
    return torch.tensor(keep)


def _readout(res, n, pos, neg, scenario, labels, names, k, mname, layers, groups) -> dict:  # type: ignore[no-untyped-def]
    """Held-out top-1 / top-3 per layer of method `mname` (vectors rebuilt from the training folds), or
    of a readout probe `probe:<kind>` (refitted on the training folds, as the quality report does);
    the texts of one group (paired scenario) share a fold."""
    row = {}
    for layer in layers:
        acts = res.resid[layer]
        x = MethodInputs(acts[:n], pos, neg, scenario, acts[n:])
        fn = scorer = None
        if mname in PROBES:
            scorer = _probe_scorer(x.a, pos, groups, mname.split(":")[1])
        elif mname != "caa":
            fn = lambda train, m=METHODS[mname], x=x: m.fn(x.subset(train))[0]  # noqa: E731
        h = held_out_readout(x.a, labels, n_concepts=len(names), k_folds=k, seed=0, vector_fn=fn, scorer_fn=scorer,
                             groups=groups)  # fmt: skip
        hit = h.predicted == labels  # (N,) top-1 hits; unlabelled texts are never hits and never counted
        framing = (scenario >= 0) & (labels >= 0)  # the paired framings: one scenario told for several concepts
        story = (scenario < 0) & (labels >= 0)
        row[str(layer)] = {"top1": round(h.top1_overall, 4), "top3": round(h.top3_overall, 4),
                           "top1_paired": round(float(hit[framing].double().mean()), 4) if framing.any() else None,
                           "top1_unpaired": round(float(hit[story].double().mean()), 4) if story.any() else None}  # fmt: skip
    print(f"{mname:>9} ({n} texts): " + " ".join(f"{la}:{v['top3']:.2f}" for la, v in row.items()), flush=True)
    return row


def _probe_scorer(a: torch.Tensor, pos: torch.Tensor, groups: torch.Tensor, kind: str):  # type: ignore[no-untyped-def]
    """For held_out_readout: the training mask (N,) -> the probe of `kind` fitted on those texts' (N, H) rows."""
    return lambda train: fit_readout_probe(a[train], pos[:, train], groups[train], kind, calibrate=False).log_probs


def _figure(results: dict, out: Path) -> None:
    with common.figure(out / "heldout_top3.png", (11, 4.5)) as fig:
        ax1, ax2 = fig.subplots(1, 2, sharey=True)
        for p, ms in results["table"].items():
            r = ms["caa"]
            ax1.plot([int(la) for la in r], [v["top3"] for v in r.values()], marker="o", label=p)
        ax1.set(title="caa: pooling x layer", xlabel="block", ylabel="held-out top-3")
        ax1.legend()
        for m, r in results["methods"].items():
            ax2.plot([int(la) for la in r], [v["top3"] for v in r.values()], marker="o", label=m)
        ax2.set(title=f"{DEFAULT_POOLING.name}: method x layer", xlabel="block")
        ax2.axhline(min(1.0, 3 / results["n_concepts"]), color="grey", ls=":", label="chance")
        ax2.legend()


def _report(results: dict, args: object) -> str:
    b, bp = results["best"], results["best_pooling_caa"]
    skipped = [m for m in [*METHODS, *PROBES] if m not in results["methods"]]
    rows, mrows = [], []
    for p, ms in results["table"].items():
        for m, r in ms.items():
            la, v = max(r.items(), key=lambda kv: (kv[1]["top3"], kv[1]["top1"]))
            rows.append([results["model"], p, m, int(la), v["top1"], v["top3"]])
    for m, r in results["methods"].items():
        la, v = max(r.items(), key=lambda kv: (kv[1]["top3"], kv[1]["top1"]))
        mrows.append([results["model"], m, int(la), v["top1"], v["top3"], v.get("top1_unpaired"), v.get("top1_paired")])
    chance = f"chance {1 / results['n_concepts']:.1%} / {min(1.0, 3 / results['n_concepts']):.1%}"
    return "\n".join([
        "# pooling_and_layers",
        "",
        f"Question: which pooling, layer and method read held-out stories best? Model {results['model']}, "
        f"{results['n_texts']} texts, {results['n_concepts']} concepts, {results['k_folds']}-fold held-out readout "
        f"(folds {results.get('folds', 'stratified')}; vectors rebuilt from the training folds with each method; {chance}). Runtime {results['seconds']:.0f} s "
        f"(load average {results['environment']['load_average_1m']}).",
        "",
        f"**Headline:** on the whole corpus with {b['pooling']} pooling the best method is {b['method']} at block "
        f"{b['layer']}: top-1 {b['top1']:.1%}, top-3 {b['top3']:.1%}. Across poolings (caa, {results['n_subset']} texts) "
        f"the best is {bp['pooling']} at block {bp['layer']}: top-3 {bp['top3']:.1%}.",
        "",
        f"Methods, whole corpus ({results['n_texts']} texts), {b['pooling']} pooling, best layer each:",
        "",
        common.table(mrows, ["model", "method", "best block", "top-1", "top-3", "top-1 unpaired stories",
                             "top-1 paired framings"]),
        "",
        f"Poolings, on a subset ({results['n_subset']} texts: {results['per_concept']} unpaired stories per concept and "
        "every paired text, the same texts for each pooling), best layer each:",
        "",
        common.table(rows, ["model", "pooling", "method", "best block", "top-1", "top-3"]),
        "",
        *([f"Not run (`--methods`): {', '.join(f'`{m}`' for m in skipped)}.", ""] if skipped else []),
        *([f"Carried, not recomputed in this run (same model, texts and folds): "
           f"{', '.join(f'`{m}` from {w}' for m, w in results['carried'].items())}.", ""] if results.get("carried") else []),
        "Every layer: results.json (`table[pooling][method][block]`); figure: heldout_top3.png. "
        "`logistic` and `probe:logistic` are fitted at three middle blocks only in the full run (iterative fits "
        "per fold); `probe:*` rows are the readout probes `extract` fits (`read` uses `probe:lda` by default).",
    ]) + "\n"  # fmt: skip


if __name__ == "__main__":
    main()
