"""Triage and notes of a quality report: which concepts are clean, fragmented, redundant,
outlier-heavy, poorly read or single-neuron at the best layer, and the caveats that change how
those buckets read. Pure functions of the quality.json dict."""

from __future__ import annotations

from typing import Any

CLEAN, FRAGMENTED, REDUNDANT_R2, NEURON = 0.7, 0.4, 0.9, 0.6


def poorly_read_threshold(n_concepts: int) -> float:
    """Held-out top-3 below which a concept counts as poorly read: three times chance (3 / C), but
    at most halfway from chance to perfect, so that with few concepts (C <= 9, where 3x chance is
    100%) not every concept is flagged, and with C <= 3 (top-3 always right) none is."""
    chance = min(1.0, 3 / n_concepts)
    return min(3 * chance, (1 + chance) / 2)


def notes(report: dict[str, Any]) -> list[str]:
    """Caveats that change how the triage reads (at best_layer)."""
    layer = report["layers"][str(report["best_layer"])]["concepts"]
    nulls = [e["first_pc_null"] for e in layer.values() if e.get("first_pc_null")]
    out: list[str] = []
    if nulls:
        med = sorted(n["median"] for n in nulls)[len(nulls) // 2]
        if med < FRAGMENTED:
            above = sorted(c for c, e in layer.items() if (e.get("first_pc_null") or {}).get("percentile", 0) >= 0.95)
            out.append(
                f"random sets of texts from this corpus also have a first-PC ratio below {FRAGMENTED} (median "
                f"{med:.0%}), so 'fragmented' marks the norm here, not a defect; concepts whose positives are more "
                f"one-directional than 95% of random sets: {', '.join(above) if above else 'none'} (chance alone "
                f"would put about {0.05 * len(nulls):.1f} of {len(nulls)} there)"
            )
    return out


def triage(report: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """Buckets at best_layer, each entry {concept, why, suggestion}."""
    layer = report["layers"][str(report["best_layer"])]
    n = report["n_concepts"]
    out: dict[str, list[dict[str, str]]] = {
        k: [] for k in ("clean", "fragmented", "redundant", "outlier_heavy", "poorly_read", "single_neuron")
    }
    for name, e in layer["concepts"].items():
        ratio, r2 = e["first_pc_variance_ratio"], e["redundancy"]["r2"]
        top3 = e["heldout"]["top3"]
        if ratio is not None and ratio > CLEAN:
            out["clean"].append(
                {"concept": name, "why": f"first PC holds {ratio:.0%} of the variance", "suggestion": "none"}
            )
        if ratio is not None and ratio < FRAGMENTED:
            nl = e.get("first_pc_null")
            vs = f"; random sets of {e['n_positives']} texts: median {nl['median']:.0%}" if nl else ""
            out["fragmented"].append(
                {
                    "concept": name,
                    "why": f"first PC holds {ratio:.0%} (effective rank {e['effective_rank']}{vs})",
                    "suggestion": f"{name}: its stories vary more in other ways than in this feeling; reread the least "
                    f"aligned ({', '.join(x['where'] for x in e['agreement']['lowest'])}) or add stories that share "
                    "the feeling but not the setting",
                }
            )
        if r2 is not None and r2 > REDUNDANT_R2:
            other = e["redundancy"]["top"][0]
            out["redundant"].append(
                {
                    "concept": name,
                    "why": f"R^2 {r2:.2f} from the others (largest weight {other['concept']} {other['coef']:+.2f})",
                    "suggestion": f"{name} vs {other['concept']}: R^2 {r2:.2f} - write stories that separate them",
                }
            )
        k = e["agreement"]["n_below_0_1"]
        if e["n_positives"] and k / e["n_positives"] >= 0.25:
            where = ", ".join(x["where"] for x in e["agreement"]["lowest"])
            out["outlier_heavy"].append(
                {
                    "concept": name,
                    "why": f"{k} of {e['n_positives']} stories align below cos 0.1",
                    "suggestion": f"reread {where}: mislabelled or off-topic?",
                }
            )
        if top3 is not None and top3 < poorly_read_threshold(n):
            near = e["nearest"][0]["concept"] if e["nearest"] else "?"
            out["poorly_read"].append(
                {
                    "concept": name,
                    "why": f"held-out top-3 {top3:.0%} (chance {min(1.0, 3 / n):.0%})",
                    "suggestion": f"{name}: held-out stories are read as other concepts (nearest vector: {near}); "
                    "add stories with stronger, more specific cues",
                }
            )
        sn = e.get("single_neuron", {})
        if sn.get("abs_cos") is not None and sn["abs_cos"] > NEURON:
            out["single_neuron"].append(
                {
                    "concept": name,
                    "why": f"|cos| {sn['abs_cos']:.2f} with MLP neuron {sn['neuron']}",
                    "suggestion": "essentially one neuron: ablate it to test the concept causally",
                }
            )
    return out
