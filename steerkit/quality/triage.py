"""Triage and notes of a quality report: which concepts are clean, fragmented, redundant,
outlier-heavy, poorly read or single-neuron at the best layer, and the caveats that change how
those buckets read. Pure functions of the quality.json dict.

"Fragmented", "poorly read" and "redundant" are calibrated against a null, so that they flag what is
unusual: fragmented = the concept's first-PC ratio is below the NULL_PERCENTILE (5th) percentile of
random text sets of the same size (`first_pc_null`); poorly read = its held-out top-3 hits are not
above chance at that level (one-sided binomial test against 3 / C, p >= 0.05); redundant = its
held-out texts are not read as itself significantly more often than as the one concept they are most
often mistaken for (one-sided sign test over those two outcomes, p >= 0.05): the readout cannot tell
the two apart. The ridge R^2 from the other vectors is reported with it (it is high for most
concepts of one affect space, so a fixed R^2 cut says little). Reports without `confused_with` (older
files) fall back to R^2 > REDUNDANT_R2."""

from __future__ import annotations

import math
from typing import Any

CLEAN, FRAGMENTED, REDUNDANT_R2, NEURON = 0.7, 0.4, 0.9, 0.6
NULL_PERCENTILE = 0.05  # a flag fires where the null puts the concept in its lowest 5%


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the chance of reading k or more of n texts by luck."""
    if k <= 0:
        return 1.0
    if p >= 1.0:
        return 1.0
    return float(sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1)))


def is_poorly_read(top3: float, n: int, n_concepts: int) -> bool:
    """Held-out top-3 not above chance at the 5% level: P(hits >= observed | chance 3 / C) >= 0.05.
    With C <= 3 (top-3 always right) nothing is poorly read."""
    chance = min(1.0, 3 / n_concepts)
    if chance >= 1.0 or n < 1:
        return False
    return binomial_tail(round(top3 * n), n, chance) >= NULL_PERCENTILE


def redundant_with(name: str, e: dict[str, Any]) -> dict[str, str] | None:
    """{why, suggestion} when concept `name` (entry e) is redundant (module docstring), else None."""
    held, r2 = e["heldout"], e["redundancy"]["r2"]
    if "confused_with" not in held:  # an older report: the fixed R^2 cut
        if r2 is None or r2 <= REDUNDANT_R2:
            return None
        other = e["redundancy"]["top"][0]
        return {"why": f"R^2 {r2:.2f} from the others (largest weight {other['concept']} {other['coef']:+.2f})",
                "suggestion": f"{name} vs {other['concept']}: R^2 {r2:.2f} - write stories that separate them"}  # fmt: skip
    conf = held.get("confused_with")
    n, top1 = int(held.get("n") or 0), held.get("top1")
    if not conf or not n or top1 is None:
        return None
    hits, k = round(top1 * n), int(conf["n"])
    p = binomial_tail(hits, hits + k, 0.5)  # as many hits or more, were the two equally likely
    if p < NULL_PERCENTILE:
        return None
    extra = "" if r2 is None else f"; R^2 {r2:.2f} from the other vectors"
    return {
        "why": f"held out, {hits} of {n} texts read as itself and {k} as {conf['concept']} (not told apart: "
        f"sign test p = {p:.2g}{extra})",
        "suggestion": f"{name} vs {conf['concept']}: write stories whose cues separate the two, or merge them",
    }


def notes(report: dict[str, Any]) -> list[str]:
    """Caveats that change how the triage reads (at best_layer)."""
    layer = report["layers"][str(report["best_layer"])]["concepts"]
    nulls = [e["first_pc_null"] for e in layer.values() if e.get("first_pc_null")]
    out: list[str] = []
    if nulls:
        med = sorted(n["median"] for n in nulls)[len(nulls) // 2]
        above = sorted(c for c, e in layer.items() if (e.get("first_pc_null") or {}).get("percentile", 0) >= 0.95)
        out.append(
            f"'fragmented' is judged against random sets of as many texts from this corpus (their first-PC ratio: "
            f"median {med:.0%}), not a fixed cut: a concept is flagged when its ratio lies below "
            f"{NULL_PERCENTILE:.0%} of them (chance alone flags about {NULL_PERCENTILE * len(nulls):.1f} of "
            f"{len(nulls)}); concepts whose positives are more one-directional than 95% of random sets: "
            f"{', '.join(above) if above else 'none'}"
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
        ratio = e["first_pc_variance_ratio"]
        top3 = e["heldout"]["top3"]
        if ratio is not None and ratio > CLEAN:
            out["clean"].append(
                {"concept": name, "why": f"first PC holds {ratio:.0%} of the variance", "suggestion": "none"}
            )
        nl = e.get("first_pc_null")
        if ratio is not None and nl and nl.get("percentile") is not None and nl["percentile"] < NULL_PERCENTILE:
            vs = f"random sets of {e['n_positives']} texts: median {nl['median']:.0%}, {nl['percentile']:.0%} below it"
            out["fragmented"].append(
                {
                    "concept": name,
                    "why": f"first PC holds {ratio:.0%} (effective rank {e['effective_rank']}; {vs})",
                    "suggestion": f"{name}: its stories vary more in other ways than in this feeling; reread the least "
                    f"aligned ({', '.join(x['where'] for x in e['agreement']['lowest'])}) or add stories that share "
                    "the feeling but not the setting",
                }
            )
        red = redundant_with(name, e)
        if red is not None:
            out["redundant"].append({"concept": name, **red})
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
        n_held = int(e["heldout"].get("n") or 0)
        if top3 is not None and is_poorly_read(top3, n_held, n):
            near = e["nearest"][0]["concept"] if e["nearest"] else "?"
            p_luck = binomial_tail(round(top3 * n_held), n_held, min(1.0, 3 / n))
            out["poorly_read"].append(
                {
                    "concept": name,
                    "why": f"held-out top-3 {top3:.0%} of {n_held} (chance {min(1.0, 3 / n):.0%}; as good by luck: "
                    f"p = {p_luck:.2f})",
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
