"""quality.md and the PNG figures of a quality report (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..vectors.readout import ConceptVectors

TRIAGE_TITLES = {
    "clean": "Clean (one dominant direction)",
    "fragmented": "Fragmented (stories point different ways)",
    "redundant": "Redundant (predictable from other concepts)",
    "outlier_heavy": "Outlier-heavy (many stories disagree with the direction)",
    "poorly_read": "Poorly read (held-out stories not recognised)",
    "single_neuron": "Essentially one MLP neuron",
}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def markdown(report: dict[str, Any]) -> str:
    best = report["best_layer"]
    layer = report["layers"][str(best)]
    lines = [
        f"# Quality report: {report['run']}",
        "",
        f"Model `{report['model'].get('spec')}` ({report['model'].get('family')}), method `{report['method']}`, "
        f"pooling `{report['pooling']}`, {report['n_concepts']} concepts, {report['n_texts']} texts. "
        f"**Best layer: {best}** (held-out top-1 {_pct(layer['heldout']['top1'])}, top-3 "
        f"{_pct(layer['heldout']['top3'])}; chance {_pct(layer['heldout']['chance_top1'])} / "
        f"{_pct(layer['heldout']['chance_top3'])}).",
        "",
        "## Triage",
        "",
        *[f"Note: {n}." for n in report.get("notes", [])],
        *([""] if report.get("notes") else []),
    ]
    for key, title in TRIAGE_TITLES.items():
        items = report["triage"][key]
        lines.append(f"### {title}: {len(items)}")
        lines.append("")
        for it in items[:25]:
            lines.append(
                f"- **{it['concept']}**: {it['why']}. {it['suggestion'] if it['suggestion'] != 'none' else ''}"
            )
        if len(items) > 25:
            lines.append(f"- ... and {len(items) - 25} more (quality.json)")
        lines.append("")
    probe = any(e["heldout"].get("reader") == "probe" for e in report["layers"].values())
    how = (
        "a readout probe refitted on the training folds (C by grouped CV inside them), held-out stories read as its "
        "argmax; the vectors' own readout (argmax projection) beside it"
        if probe
        else "vectors from the training folds, held-out stories classified by the argmax projection"
    )
    lines += [
        "## Held-out readout by layer",
        "",
        f"{report['settings']['k_folds']}-fold over stories (seed {report['settings']['seed']}): {how}.",
        "",
        "| layer | top-1 | top-3 | vectors top-1 | vectors top-3 |" if probe else "| layer | top-1 | top-3 |",
        "|---|---|---|---|---|" if probe else "|---|---|---|",
    ]
    for la, e in report["layers"].items():
        mark = " (best)" if int(la) == best else ""
        h = e["heldout"]
        extra = f" {_pct(h.get('vectors_top1'))} | {_pct(h.get('vectors_top3'))} |" if probe else ""
        lines.append(f"| {la}{mark} | {_pct(h['top1'])} | {_pct(h['top3'])} |{extra}")
    lines += [
        "",
        f"## Concepts at layer {best}",
        "",
        "ratio = first-PC variance ratio of the centred positives (> 0.7 clean; fragmented when below the 5th "
        "percentile of 200 random sets of as many corpus texts; null = their median ratio); "
        "erank = effective rank; agree = mean / min cosine of (story - negatives' mean) with the direction; "
        "neuron = best |cos| with an MLP down-projection column; R^2 = ridge fit from the other concepts.",
        "",
        "| concept | n | ratio (null) | erank | agree (mean/min) | neuron | R^2 | nearest | held-out top-1/top-3 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in layer["concepts"].items():
        sn = e.get("single_neuron", {})
        neuron = f"{_num(sn.get('abs_cos'))} (#{sn['neuron']})" if "neuron" in sn else "skipped"
        near = ", ".join(f"{x['concept']} {x['cos']:.2f}" for x in e["nearest"][:3])
        null = f" ({_num(e['first_pc_null']['median'])})" if e.get("first_pc_null") else ""
        lines.append(
            f"| {name} | {e['n_positives']} | {_num(e['first_pc_variance_ratio'])}{null} | {_num(e['effective_rank'], '.1f')} | "
            f"{_num(e['agreement']['mean'])} / {_num(e['agreement']['min'])} | {neuron} | "
            f"{_num(e['redundancy']['r2'])} | {near} | {_pct(e['heldout']['top1'])} / {_pct(e['heldout']['top3'])} |"
        )
    lines += [
        "",
        "## Redundancy",
        "",
        f"Ridge regression of each concept vector on all the others (lambda {report['settings']['ridge_lambda']}, "
        "no intercept: directions have no meaningful offset). Large weights of opposite sign mean the concept "
        'is largely "what makes X different from Y" (e.g. +X -Y).',
        "",
    ]
    for name, e in sorted(layer["concepts"].items(), key=lambda kv: -(kv[1]["redundancy"]["r2"] or 0))[:12]:
        top = ", ".join(f"{x['concept']} {x['coef']:+.2f}" for x in e["redundancy"]["top"])
        lines.append(f"- {name}: R^2 {_num(e['redundancy']['r2'])} = {top}")
    lines += ["", "## Per-head decomposition", ""]
    with_heads = {n: e["heads"] for n, e in layer["concepts"].items() if "heads" in e}
    if with_heads:
        lines.append(
            "Diff-of-means per head of the mixer out-projection input; concentration = share of the total "
            "head norm in the top heads (> 0.5: a sparse head circuit); selectivity = norm / std over negatives."
        )
        lines.append("")
        for name, h in sorted(with_heads.items(), key=lambda kv: -(kv[1]["concentration"] or 0))[:15]:
            top = ", ".join(f"h{x['head']} ({x['norm']:.2f}, sel {x['selectivity']})" for x in h["top"][:3])
            lines.append(f"- {name}: concentration {_num(h['concentration'])}; top heads {top}")
    else:
        lines.append(f"Skipped: {layer.get('heads_skipped') or 'no per-head activations at this layer'}.")
    g = report["geometry"]
    lines += ["", f"## Geometry (layer {g.get('layer')})", ""]
    if "correlations" in g:
        evr = ", ".join(_pct(x) for x in g["explained_variance_ratio"])
        lines.append(
            f"PCA of the concept vectors: explained variance {evr}. {g['note']} "
            "(Anthropic reports r about 0.81 between PC1 and valence for 171 emotions.)"
        )
        lines += ["", "| PC | variable | Pearson r (p) | Spearman r (p) |", "|---|---|---|---|"]
        for c in g["correlations"]:
            lines.append(
                f"| {c['pc']} | {c['variable']} | {_num(c['pearson_r'])} ({_num(c['pearson_p'], '.1e')}) | "
                f"{_num(c['spearman_r'])} ({_num(c['spearman_p'], '.1e')}) |"
            )
    else:
        lines.append(f"Skipped: {g.get('skipped')}.")
    lines += ["", "## Lowest-agreement stories", "", "Candidates for mislabelling or off-topic writing:", ""]
    worst = sorted(
        (
            (e["agreement"]["lowest"][0]["cos"], n, e["agreement"]["lowest"][0]["where"])
            for n, e in layer["concepts"].items()
            if e["agreement"]["lowest"] and e["agreement"]["lowest"][0]["cos"] is not None
        )
    )[:10]
    for cos, name, where in worst:
        lines.append(f"- {name}: {where} (cos {cos:.2f})")
    lines += ["", "Figures: cosine_heatmap.png, pca_valence.png, heldout_by_layer.png, head_concentration.png.", ""]
    return "\n".join(lines)


def figures(report: dict[str, Any], vectors: ConceptVectors, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import leaves_list, linkage

    best = report["best_layer"]
    names = vectors.concepts
    paths = []
    # 1. clustered cosine heatmap
    v = vectors.vectors[best].float()
    cos = (v @ v.t()).numpy()
    order = (
        leaves_list(linkage(v.numpy(), method="average", metric="cosine"))
        if len(names) > 2
        else list(range(len(names)))
    )
    size = max(6.0, 0.18 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(cos[order][:, order], cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), [names[i] for i in order], rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), [names[i] for i in order], fontsize=7)
    ax.set_title(f"Concept-vector cosine, layer {best} (clustered)")
    fig.colorbar(im, ax=ax, shrink=0.7)
    fig.tight_layout()
    paths.append(_save(fig, out / "cosine_heatmap.png"))
    # 2. PC1/PC2 coloured by valence
    g = report["geometry"]
    if "scores" in g:
        val = [report_valence(report, n) for n in names]
        xy = torch.tensor([g["scores"][n] for n in names], dtype=torch.float32).nan_to_num()
        fig, ax = plt.subplots(figsize=(8, 7))
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=val, cmap="coolwarm", vmin=-1, vmax=1, s=40, edgecolors="k")
        for i, n in enumerate(names):
            ax.annotate(n, (float(xy[i, 0]), float(xy[i, 1])), fontsize=7, xytext=(3, 3), textcoords="offset points")
        r = next((c for c in g["correlations"] if c["pc"] == 1 and c["variable"] == "valence"), None)
        ax.set_title(
            f"Concept vectors, PCA at layer {best}" + (f" (PC1 vs valence r = {r['pearson_r']:.2f})" if r else "")
        )
        evr = g["explained_variance_ratio"]
        ax.set_xlabel(f"PC1 ({_pct(evr[0])})")
        ax.set_ylabel(f"PC2 ({_pct(evr[1]) if len(evr) > 1 else '-'})")
        fig.colorbar(sc, ax=ax, label="valence (manifest)")
        fig.tight_layout()
        paths.append(_save(fig, out / "pca_valence.png"))
    # 3. held-out accuracy by layer
    layers = [int(la) for la in report["layers"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, style in (("top1", "o-"), ("top3", "s-")):
        ax.plot(
            layers, [report["layers"][str(la)]["heldout"][key] or 0 for la in layers], style, label=f"held-out {key}"
        )
    first = report["layers"][str(layers[0])]["heldout"]
    ax.axhline(first["chance_top1"], color="grey", ls=":", label="chance top-1")
    ax.axhline(first["chance_top3"], color="grey", ls="--", label="chance top-3")
    ax.axvline(best, color="k", alpha=0.2)
    ax.set_xticks(layers)
    ax.set_ylim(0, 1)
    ax.set_xlabel("block")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Held-out readout ({report['settings']['k_folds']}-fold over stories)")
    ax.legend()
    fig.tight_layout()
    paths.append(_save(fig, out / "heldout_by_layer.png"))
    # 4. head concentration per concept
    layer = report["layers"][str(best)]["concepts"]
    conc = {n: e["heads"]["concentration"] for n, e in layer.items() if "heads" in e}
    fig, ax = plt.subplots(figsize=(max(7.0, 0.16 * len(names) + 2), 4.5))
    if conc:
        items = sorted(conc.items(), key=lambda kv: -(kv[1] or 0))
        ax.bar(range(len(items)), [c or 0 for _, c in items], color="tab:purple")
        ax.set_xticks(range(len(items)), [n for n, _ in items], rotation=90, fontsize=7)
        ax.axhline(0.5, color="k", ls="--", lw=1, label="sparse head circuit (> 0.5)")
        ax.set_ylim(0, 1.05)
        k = report["layers"][str(best)].get("top_heads_used", report["settings"]["top_heads"])
        ax.set_ylabel(f"share of head norm in the top {k} heads")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no per-head activations at this layer", ha="center", va="center")
    ax.set_title(f"Head concentration per concept, layer {best}")
    fig.tight_layout()
    paths.append(_save(fig, out / "head_concentration.png"))
    return paths


def report_valence(report: dict[str, Any], name: str) -> float:
    """Valence of a concept from the manifest copy in the report (0 if unknown)."""
    return float(report.get("valence", {}).get(name, 0.0) or 0.0)


def _save(fig: Any, path: Path) -> Path:
    import os
    import tempfile

    import matplotlib.pyplot as plt

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
