"""emotion_geometry: do the concept vectors carry the valence/arousal geometry of human norms?

The Anthropic (2026) emotion-vector analysis on our model, with the controls that say whether a weak
result is the model's or the corpus's. At every block: concept vectors (steerkit's caa, and centered =
caa with the neutral corpus's top PCs projected out), unit-normalised (raw norms as a secondary row),
PCA over concepts, PC1 / PC2 (and the best of the first five PCs) against the NRC VAD lexicon's valence
and arousal (Mohammad 2018; corpora/manifest.json `norms`): Pearson and Spearman r, bootstrap CI over
concepts, permutation p; and a leave-one-out ridge from the vectors to the rating (is it linearly
present even where it is not PC1?). Baseline rows in every table: TF-IDF and LSA features of the same
texts (no model at all) through the same vector, PCA and correlation code (analyses/_geometry.py).
Second rows: the affect-only subset (without the engagement and cognitive clusters). Then what owns
PC1: PC1 scores of the concepts, and the stories' projections on PC1, against story length, first-person
share, dialogue share, paired scenario vs unpaired story and cluster. Anchor: r = 0.81 for PC1 vs
valence (Anthropic), 0.67-0.97 in replications on 1-70B models.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _geometry as geo  # noqa: E402
import common  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from steerkit.capture import capture  # noqa: E402
from steerkit.corpus import load as load_corpus  # noqa: E402
from steerkit.models.zoo import cache_root  # noqa: E402
from steerkit.vectors.extract import DEFAULT_POOLING, membership  # noqa: E402

METHOD_NAMES = ["caa", "centered"]  # centered = caa (unit) with the neutral corpus's top PCs projected out
NORMS = ["unit", "raw"]
LEXICAL = ["tfidf", "lsa-100", "lsa-300"]
# The affect-only subset: every concept except the manifest's `engagement` (curious, piqued, in_flow,
# determined, stuck, bored, restless, inspired) and `cognitive` (awed, surprised, confused) clusters,
# states of attention and appraisal rather than feelings; 38 of the 49 concepts remain.
NON_AFFECT_CLUSTERS = ("engagement", "cognitive")
N_PERM = 2000  # permutations (--quick: 100)
N_BOOT = 1000  # bootstrap resamples (--quick: 100)
PRIMARY = ("caa", "unit")  # the variant the per-block tables and PC1 owners use


def main() -> None:
    global N_PERM, N_BOOT
    args = common.parser(__doc__).parse_args()
    if args.quick:
        N_PERM, N_BOOT = 100, 100
    common.seed_all()
    out = common.out_dir("emotion_geometry", args)
    clock = common.Clock()
    lm = common.model_for(args)
    spec = lm.info.get("spec")
    corpus = load_corpus(common.corpus_for(args))
    concepts = {c.name: c for c in corpus.concepts}
    labels = geo.Labels(corpus.names, *membership(corpus))
    affect = [c.name for c in corpus.concepts if c.cluster not in NON_AFFECT_CLUSTERS]
    subsets = {"all": (labels, np.arange(len(corpus.texts)))}
    if len(affect) < len(labels.names):
        subsets["affect"] = labels.restrict(affect)
    texts, neutral = [t.text for t in corpus.texts], [t.text for t in corpus.neutral]
    n_blocks = lm.adapter.n_blocks(lm.model)
    blocks = list(range(n_blocks))
    res = capture(lm, texts + neutral, blocks, pooling=DEFAULT_POOLING,
                  cache_dir=None if args.quick else cache_root() / "activations")  # fmt: skip
    capture_s = clock.seconds
    print(f"captured {n_blocks} blocks x {len(texts) + len(neutral)} texts in {capture_s} s {res.stats}", flush=True)
    feature_sets: list[tuple[str, str, int | None, np.ndarray, np.ndarray]] = []  # (model, features, block, A, neutral)
    for kind in LEXICAL:
        x, xn = geo.lexical_features(texts, neutral, kind)
        feature_sets.append(("lexical", kind, None, x, xn))
    for b in blocks:
        a = res.resid[b].numpy()
        feature_sets.append((spec, "resid", b, a[: len(texts)], a[len(texts) :]))
    props = _properties(corpus, labels)
    rows, owners = [], []
    with threadpool_limits(1):  # small matrices: one BLAS thread is faster than several on shared cores
        _rows(feature_sets, subsets, concepts, props, rows, owners)
    results: dict = {
        "model": spec, "corpus": str(common.corpus_for(args)), "n_concepts": len(labels.names), "n_texts": len(texts),
        "n_neutral": len(neutral), "blocks": blocks, "pooling": DEFAULT_POOLING.name,
        "lexical": {"kinds": LEXICAL, "tfidf": "sklearn TfidfVectorizer(sublinear_tf=True, min_df=2) on the labelled "
                    "texts", "lsa": "TruncatedSVD(arpack) of that TF-IDF", "dims": {k: int(f[3].shape[1])
                    for k, f in zip(LEXICAL, feature_sets, strict=False)}},
        "affect_subset": {"dropped_clusters": list(NON_AFFECT_CLUSTERS), "concepts": affect},
        "rows": rows, "pc1_owners": owners,
    }  # fmt: skip
    model_rows = [
        r for r in rows if r["model"] != "lexical" and (r["method"], r["norm"], r["subset"]) == (*PRIMARY, "all")
    ]
    best = max(model_rows, key=lambda r: abs(r["valence"]["PC1"]["pearson_r"]))
    results["best_pc1_valence"] = {"model": spec, "method": best["method"], "layer": best["block"],
                                   **best["valence"]["PC1"]}  # fmt: skip
    results["capture_seconds"] = capture_s
    results["seconds"] = clock.seconds
    results["environment"] = common.environment()
    _figures(results, feature_sets, subsets, concepts, out)
    notes = out / "notes.md"
    common.write_results(out, results, _report(results, notes.read_text() if notes.exists() else None))
    print(f"done in {results['seconds']} s -> {out}", flush=True)


def _rows(feature_sets, subsets, concepts, props, rows, owners) -> None:  # type: ignore[no-untyped-def]
    """Every (features, subset, method, norm) row through the one path; for the primary variant on all concepts
    also PC1's owners, the split-half stability of PC1 and the RSA of the concept geometry with the lexical one."""
    vecs: dict = {}
    for model, feats, block, a, an in feature_sets:
        for subset, (lab, idx) in subsets.items():
            targets = {v: np.array([float(getattr(concepts[n], v)) for n in lab.names]) for v in ("valence", "arousal")}
            for method in METHOD_NAMES:
                for norm in NORMS:
                    entry, v, scores, comps = geo.concept_geometry(
                        a[idx], lab, targets, method=method, norm=norm, neutral=an, n_perm=N_PERM, n_boot=N_BOOT
                    )
                    rows.append({"model": model, "features": feats, "block": block, "method": method, "norm": norm,
                                 "subset": subset, **entry})  # fmt: skip
                    if (method, norm, subset) == (*PRIMARY, "all"):
                        owners.append({"model": model, "features": feats, "block": block,
                                       **_owners(scores[:, 0], geo.projections(a, comps[0]), props)})  # fmt: skip
                        rows[-1]["split_half"] = geo.split_half(a, lab, targets, method, norm, an)
                        vecs[(feats, block)] = v
        r = [x for x in rows if x["features"] == feats and x["block"] == block and x["norm"] == "unit"]
        print(f"{model} {feats} {'' if block is None else block}: |r(PC1, valence)| "
              + " ".join(f"{x['method']}/{x['subset']}={abs(x['valence']['PC1']['pearson_r']):.2f}" for x in r),
              flush=True)  # fmt: skip
    for r in rows:
        if (r["method"], r["norm"], r["subset"]) == (*PRIMARY, "all"):
            r["rsa"] = {k: round(geo.rsa(vecs[(r["features"], r["block"])], vecs[(k, None)]), 4) for k in LEXICAL}


def _properties(corpus, labels: geo.Labels) -> dict:  # type: ignore[no-untyped-def]
    """Story properties per text (N,) and per concept (C,): the candidates for what owns PC1."""
    per = [geo.story_properties(t.text) for t in corpus.texts]
    story = {k: np.array([p[k] for p in per]) for k in ("n_words", "first_person", "third_person", "dialogue")}
    story["paired"] = np.array([float(t.sources[0].kind != "story") for t in corpus.texts])  # scenario framing
    clusters = {c.name: c.cluster for c in corpus.concepts}
    concept_of = [next(iter(t.concepts)) if t.concepts else None for t in corpus.texts]
    for c in sorted(set(clusters.values())):
        story[f"cluster={c}"] = np.array([float(n is not None and clusters[n] == c) for n in concept_of])
    for v in ("valence", "arousal"):
        story[v] = np.array([np.nan if n is None else float(getattr(corpus.concept(n), v)) for n in concept_of])
    pos = labels.pos.numpy().astype(float)  # (C, N)
    per_concept = {
        k: pos @ story[k] / pos.sum(1) for k in ("n_words", "first_person", "third_person", "dialogue", "paired")
    }
    per_concept |= {f"cluster={c}": np.array([float(clusters[n] == c) for n in labels.names])
                    for c in sorted(set(clusters.values()))}  # fmt: skip
    per_concept |= {v: np.array([float(getattr(corpus.concept(n), v) or 0.0) for n in labels.names])
                    for v in ("valence", "arousal", "dominance")}  # fmt: skip
    return {"story": story, "concept": per_concept, "labelled": np.array([n is not None for n in concept_of]),
            "cluster": [clusters[n] for n in labels.names]}  # fmt: skip


def _owners(score, proj, props) -> dict:  # type: ignore[no-untyped-def]
    """What PC1 lines up with: the concepts' PC1 scores against per-concept properties (and cluster eta^2);
    the labelled stories' projections on PC1 against per-story properties (baselines left out)."""
    keep = props["labelled"]
    story = {k: v[keep] for k, v in props["story"].items()}
    return {"concept": geo.owners(score, props["concept"], N_PERM, N_BOOT),
            "concept_cluster_eta2": geo.eta_squared(score, props["cluster"], N_PERM),
            "story": geo.owners(proj[keep], story, N_PERM, N_BOOT)}  # fmt: skip


def _figures(results, feature_sets, subsets, concepts, out) -> None:  # type: ignore[no-untyped-def]
    rows = results["rows"]

    def series(feats, method, norm, subset, key):  # type: ignore[no-untyped-def]
        sel = [r for r in rows if (r["features"], r["method"], r["norm"], r["subset"]) == (feats, method, norm, subset)]
        return [r["block"] for r in sel], [key(r) for r in sel]

    panels = [("|r(PC1, valence)|", lambda r: abs(r["valence"]["PC1"]["pearson_r"])),
              ("ridge r (LOO) -> valence", lambda r: (r["valence"]["ridge"] or {}).get("r_cv", np.nan)),
              ("|r(PC2, arousal)|", lambda r: abs(r["arousal"]["PC2"]["pearson_r"]) if "PC2" in r["arousal"] else np.nan)]  # fmt: skip
    variants = [("caa", "unit", "all", "-"), ("caa", "unit", "affect", "--"), ("caa", "raw", "all", ":"),
                ("centered", "unit", "all", "-.")]  # fmt: skip
    with common.figure(out / "valence_by_layer.png", (14, 4.2)) as fig:
        for ax, (title, key) in zip(fig.subplots(1, 3), panels, strict=True):
            for i, (m, nm, s, ls) in enumerate(v for v in variants if v[2] in subsets):
                x, y = series("resid", m, nm, s, key)
                ax.plot(x, y, ls=ls, marker="o", ms=3, color=f"C{i}", label=f"{results['model']} {m}/{nm}/{s}")
            for j, kind in enumerate(LEXICAL):
                for s, ls in (("all", "-"), ("affect", "--")):
                    y = series(kind, "caa", "unit", s, key)[1]
                    if y:
                        ax.axhline(y[0], color=f"C{4 + j}", ls=ls, lw=1, label=f"{kind} caa/unit/{s}")
            if "PC1" in title:
                ax.axhline(0.81, color="grey", lw=0.8, label="Anthropic 0.81")
            ax.set(xlabel="block", title=title, ylim=(0, 1))
        ax.legend(fontsize=6, loc="upper right")
    lab, idx = subsets["all"]
    valence = np.array([concepts[n].valence for n in lab.names])
    best = results["best_pc1_valence"]
    chosen = [f for f in feature_sets if f[2] == best["layer"] or f[1] == "tfidf"]
    with common.figure(out / "pca_valence.png", (15, 6.5)) as fig:
        for ax, (model, feats, block, a, _an) in zip(fig.subplots(1, len(chosen)), chosen, strict=True):
            v = geo.concept_vectors(a, lab, *PRIMARY)
            scores, evr, _ = geo.pca(v)
            sc = ax.scatter(scores[:, 0], scores[:, 1], c=valence, cmap="coolwarm", s=40, vmin=-1, vmax=1)
            for i, name in enumerate(lab.names):
                ax.annotate(name, (scores[i, 0], scores[i, 1]), fontsize=7, xytext=(2, 2), textcoords="offset points")
            where = feats if block is None else f"{model} block {block}"
            ax.set(xlabel=f"PC1 ({evr[0]:.0%})", ylabel=f"PC2 ({evr[1]:.0%})", title=f"{where}: caa unit, by valence")
        fig.colorbar(sc, label="NRC VAD valence")
    owners = results["pc1_owners"]
    names = sorted({o["property"] for w in owners for o in w["story"]})
    grid = np.array([[next((o["pearson_r"] for o in w["story"] if o["property"] == p), np.nan) for w in owners]
                     for p in names])  # fmt: skip
    with common.figure(out / "pc1_owners.png", (12, 5)) as fig:
        ax = fig.subplots()
        im = ax.imshow(
            np.abs(grid), aspect="auto", cmap="viridis", vmin=0, vmax=max(0.5, float(np.nanmax(np.abs(grid))))
        )
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xticks(range(len(owners)), [w["features"] if w["block"] is None else str(w["block"]) for w in owners],
                      fontsize=6, rotation=90)  # fmt: skip
        ax.set(title="stories' projection on PC1 (caa unit, all concepts): |r| with story properties", xlabel="block")
        fig.colorbar(im, label="|r|")


def _sel(rows: list[dict], feats: str, method: str, norm: str, subset: str) -> list[dict]:
    return [r for r in rows if (r["features"], r["method"], r["norm"], r["subset"]) == (feats, method, norm, subset)]


def _pc(r: dict, var: str, pc: str) -> float:
    return abs(r[var][pc]["pearson_r"]) if pc in r[var] else float("nan")


def _span(vals: list[float]) -> str:
    return f"{min(vals):.2f}" if len(vals) == 1 else f"{min(vals):.2f}..{max(vals):.2f}"


def _ridge(r: dict, var: str = "valence") -> float:
    return (r[var]["ridge"] or {}).get("r_cv", float("nan"))


def _variant_rows(results: dict) -> list[list]:
    """One row per (features, method, norm, subset): ranges over blocks of |r(PC1, valence)|, the ridge r
    and |r(PC2, arousal)|."""
    out = []
    feats = [("resid", results["model"])] + [(k, "lexical") for k in LEXICAL]
    for method in METHOD_NAMES:
        for norm in NORMS:
            for subset in ("all", "affect"):
                for f, model in feats:
                    sel = _sel(results["rows"], f, method, norm, subset)
                    if not sel:
                        continue
                    top = max(sel, key=lambda r: _pc(r, "valence", "PC1"))
                    out.append([model, f, method, norm, subset, sel[0]["n_concepts"],
                                _span([_pc(r, "valence", "PC1") for r in sel]),
                                "-" if top["block"] is None else top["block"],
                                _span([_ridge(r) for r in sel]), _span([_pc(r, "arousal", "PC2") for r in sel]),
                                _span([_pc(r, "arousal", "PC1") for r in sel])])  # fmt: skip
    return out


def _block_rows(results: dict, subset: str) -> list[list]:
    rows = [r for f in LEXICAL for r in _sel(results["rows"], f, *PRIMARY, subset)]
    rows += _sel(results["rows"], "resid", *PRIMARY, subset)
    return [[r["model"], r["features"], "-" if r["block"] is None else r["block"], r["valence"]["PC1"]["pearson_r"],
             f"[{r['valence']['PC1']['ci95'][0]:+.2f}, {r['valence']['PC1']['ci95'][1]:+.2f}]",
             r["valence"]["PC1"]["perm_p"], f"PC{r['valence']['best_pc']['pc']} {r['valence']['best_pc']['abs_r']:.2f}",
             _ridge(r), r["arousal"]["PC2"]["pearson_r"] if "PC2" in r["arousal"] else "-",
             f"PC{r['arousal']['best_pc']['pc']} {r['arousal']['best_pc']['abs_r']:.2f}",
             r["explained_variance_ratio"][0], r["split_half"]["pc1_halves_abs_r"] if "split_half" in r else "-",
             r["rsa"]["tfidf"] if "rsa" in r else "-"] for r in rows]  # fmt: skip


def _top(owners: list[dict], n: int = 3, skip: tuple[str, ...] = ()) -> str:
    sel = [o for o in owners if o["property"] not in skip][:n]
    return "; ".join(f"{o['property']} {o['pearson_r']:+.2f} (p {o['perm_p']:.2g})" for o in sel)


NORM_NAMES = ("valence", "arousal", "dominance")  # ratings, listed apart from the story properties


def _owner_rows(results: dict) -> list[list]:
    return [[w["model"], w["features"], "-" if w["block"] is None else w["block"], _top(w["concept"], skip=NORM_NAMES),
             f"{w['concept_cluster_eta2']['eta2']:.2f} (p {w['concept_cluster_eta2']['perm_p']:.2g})",
             _top(w["story"], skip=NORM_NAMES)] for w in results["pc1_owners"]]  # fmt: skip


def _detail(w: dict) -> str:
    where = w["features"] if w["block"] is None else f"{w['model']} block {w['block']}"
    rows = [[lvl, o["property"], o["pearson_r"], f"[{o['ci95'][0]:+.2f}, {o['ci95'][1]:+.2f}]", o["perm_p"]]
            for lvl in ("concept", "story") for o in w[lvl]]  # fmt: skip
    return f"**{where}** (cluster eta^2 of the concepts' PC1 scores {w['concept_cluster_eta2']['eta2']:.2f}, " \
           f"p {w['concept_cluster_eta2']['perm_p']:.2g}):\n\n" + common.table(rows, ["level", "property", "r", "95% CI", "perm p"])  # fmt: skip


def _headline(results: dict) -> list[str]:
    rows = results["rows"]
    model = _sel(rows, "resid", *PRIMARY, "all")
    b = results["best_pc1_valence"]

    def rng(f: str, subset: str = "all", var: str = "valence", pc: str = "PC1", method: str = "caa",
            norm: str = "unit") -> str:  # fmt: skip
        sel = _sel(rows, f, method, norm, subset)
        return _span([_pc(r, var, pc) for r in sel]) if sel else "-"

    lex = ", ".join(f"{k} {rng(k)}" for k in LEXICAL)
    lines = [
        f"- **PC1 vs valence, all {results['n_concepts']} concepts (caa, unit vectors):** the model gives |r| "
        f"{rng('resid')} over its {len(model)} blocks (best r = {b['pearson_r']:+.2f}, 95% CI {b['ci95']}, "
        f"permutation p = {b['perm_p']}, at block {b['layer']}); the no-model control gives {lex}.",
        f"- **Raw norms** (secondary): model {rng('resid', norm='raw')}; tfidf {rng('tfidf', norm='raw')}. "
        f"**Denoised** (centered: neutral PCs projected out): model {rng('resid', method='centered')}; tfidf "
        f"{rng('tfidf', method='centered')}.",
        f"- **Arousal, PC2:** model |r| {rng('resid', var='arousal', pc='PC2')}; "
        + ", ".join(f"{k} {rng(k, var='arousal', pc='PC2')}" for k in LEXICAL) + ".",
        f"- **Valence by LOO ridge** (is it linearly present?): model r "
        f"{_span([_ridge(r) for r in model])}; " + ", ".join(
            f"{k} {_span([_ridge(r) for r in _sel(rows, k, *PRIMARY, 'all')])}" for k in LEXICAL) + ".",
    ]  # fmt: skip
    sh = [r["split_half"]["pc1_halves_abs_r"] for r in model]
    lines.append(f"- **Is PC1 a stable axis?** |r| between the PC1 scores of vectors from two disjoint halves of each "
                 f"concept's texts: model {_span(sh)}; " + ", ".join(f"{k} "
                 f"{_sel(rows, k, *PRIMARY, 'all')[0]['split_half']['pc1_halves_abs_r']:.2f}" for k in LEXICAL)
                 + f". **Model geometry vs lexical geometry** (RSA, Spearman r of the concept-cosine matrices): "
                 f"vs tfidf {_span([r['rsa']['tfidf'] for r in model])}, vs lsa-300 "
                 f"{_span([r['rsa']['lsa-300'] for r in model])}.")  # fmt: skip
    if _sel(rows, "resid", *PRIMARY, "affect"):
        n = _sel(rows, "resid", *PRIMARY, "affect")[0]["n_concepts"]
        lines.append(f"- **Affect-only ({n} concepts):** PC1 vs valence, model |r| {rng('resid', 'affect')}; "
                     + ", ".join(f"{k} {rng(k, 'affect')}" for k in LEXICAL) + f"; arousal on PC2, model "
                     f"{rng('resid', 'affect', 'arousal', 'PC2')}, tfidf {rng('tfidf', 'affect', 'arousal', 'PC2')}.")  # fmt: skip
    owners = results["pc1_owners"]
    mid = [w for w in owners if w["block"] is not None]
    mid = mid[len(mid) // 2] if mid else None
    for w in [o for o in owners if o["features"] == "tfidf"] + ([mid] if mid else []):
        where = w["features"] if w["block"] is None else f"block {w['block']}"
        lines.append(f"- **What owns PC1 ({where}):** concepts: {_top(w['concept'], skip=NORM_NAMES)}; stories: "
                     f"{_top(w['story'], skip=NORM_NAMES)}.")  # fmt: skip
    return lines


def _report(results: dict, notes: str | None) -> str:
    aff = results["affect_subset"]
    return "\n".join([
        "# emotion_geometry",
        "",
        f"Question: do the concept vectors carry human valence/arousal geometry, and if not, is the limit the model "
        f"or the concept set / corpus? Model {results['model']} ({len(results['blocks'])} blocks, all of them), "
        f"{results['n_concepts']} concepts, {results['n_texts']} texts + {results['n_neutral']} neutral, pooling "
        f"{results['pooling']}; norms from the NRC VAD lexicon (corpora/manifest.json `norms`). PC signs are "
        f"arbitrary: |r| matters. Runtime {results['seconds']:.0f} s (capture {results['capture_seconds']:.0f} s).",
        "",
        "Every row goes through one function (`_geometry.concept_geometry`): texts x features -> steerkit's "
        "concept-vector method -> unit (or raw) vectors -> PCA over concepts -> correlations. Rows with model "
        f"`lexical` use no model: {results['lexical']['tfidf']} (dims {results['lexical']['dims']}), LSA = "
        f"{results['lexical']['lsa']}. Methods: caa (mean of the concept's texts minus the mean of the others); "
        "centered (the same direction with the top PCs of the neutral texts, 50% of their variance, projected "
        "out: the denoised row). Affect-only subset: without the clusters "
        f"{', '.join(aff['dropped_clusters'])} (and their texts); kept: {', '.join(aff['concepts'])}.",
        "",
        "## Headline",
        "",
        *_headline(results),
        "",
        *(["## Interpretation", "", notes.strip(), ""] if notes else []),
        "## Every variant (ranges over blocks; lexical rows have one value)",
        "",
        common.table(_variant_rows(results), ["model", "features", "method", "norm", "subset", "concepts",
                     "\\|r(PC1, val)\\|", "best block", "ridge r (LOO)", "\\|r(PC2, aro)\\|", "\\|r(PC1, aro)\\|"]),
        "",
        *[s for subset in ("all", "affect") if _sel(results["rows"], "resid", *PRIMARY, subset) for s in (
            f"## Per block: caa, unit vectors, {subset} concepts", "",
            common.table(_block_rows(results, subset), ["model", "features", "block", "r(PC1, val)", "95% CI",
                         "perm p", "best PC val", "ridge r (LOO)", "r(PC2, aro)", "best PC aro", "EVR PC1",
                         "PC1 split-half \\|r\\|", "RSA vs tfidf"]), "")],
        "## What owns PC1 (caa, unit, all concepts)",
        "",
        "Concept level: the concepts' PC1 scores against the mean property of their texts (n_words, "
        "first_person / third_person = first- / third-person pronouns per narration word, dialogue = share of characters inside quotes, "
        "paired = share of scenario framings) and cluster indicators; story level: each labelled text's "
        "projection on PC1 against its own properties. Ratings (valence, arousal, dominance) are left out of "
        "these columns (they are in the detail tables). Permutation p uncorrected: many properties are tried.",
        "",
        common.table(_owner_rows(results), ["model", "features", "block", "concepts: top 3", "cluster eta^2",
                                            "stories: top 3"]),  # fmt: skip
        "",
        *[_detail(w) + "\n" for w in results["pc1_owners"]
          if w["features"] == "tfidf" or w["block"] == results["best_pc1_valence"]["layer"]],
        "Figures: valence_by_layer.png (|r(PC1, valence)|, ridge r and |r(PC2, arousal)| by block, lexical rows as "
        "horizontal lines), pca_valence.png (PC1 x PC2 at the headline block and for TF-IDF, coloured by "
        "valence), pc1_owners.png (story-level |r| of PC1 projections with each property, by block).",
    ]) + "\n"  # fmt: skip


if __name__ == "__main__":
    main()
