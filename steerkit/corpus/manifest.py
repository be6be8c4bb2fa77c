"""manifest.json: the concept list (docs/corpus.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .model import CheckReport, Concept

SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
REQUIRED = ("name", "cluster", "valence", "arousal", "description", "avoid")  # dominance is optional


def parse_manifest(root: Path, rep: CheckReport) -> tuple[list[Concept], dict[str, Any]]:
    """The concepts and the `norms` block (where valence, arousal, dominance come from) of
    root/manifest.json; every problem is appended to rep.errors."""
    path = root / "manifest.json"
    if not path.is_file():
        rep.errors.append(f"{path}: manifest.json is missing; see docs/corpus.md for its format")
        return [], {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        rep.errors.append(f"{path}: malformed JSON ({e}); fix the file")
        return [], {}
    entries = data.get("concepts") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        rep.errors.append(f"{path}: needs a non-empty 'concepts' list")
        return [], {}
    concepts = [c for i, e in enumerate(entries) if (c := _parse_concept(e, f"{path} concept #{i + 1}", rep))]
    return concepts, _parse_norms(data.get("norms", {}), {c.name for c in concepts}, path, rep)


def _parse_concept(entry: object, where: str, rep: CheckReport) -> Concept | None:
    if not isinstance(entry, dict):
        rep.errors.append(f"{where}: must be an object")
        return None
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        rep.errors.append(f"{where}: missing field(s) {', '.join(missing)}")
        return None
    name = entry["name"]
    if not isinstance(name, str) or not SNAKE.match(name):
        rep.errors.append(f"{where}: name {name!r} must be snake_case")
        return None
    try:
        val, aro = float(entry["valence"]), float(entry["arousal"])
        dom = float(entry["dominance"]) if "dominance" in entry else None
    except (TypeError, ValueError):
        rep.errors.append(f"{where} ({name}): valence, arousal and dominance must be numbers")
        return None
    if not -1 <= val <= 1 or not 0 <= aro <= 1 or (dom is not None and not 0 <= dom <= 1):
        rep.errors.append(f"{where} ({name}): valence must lie in [-1, 1], arousal and dominance in [0, 1]")
        return None
    if not isinstance(entry["avoid"], list) or not all(isinstance(w, str) for w in entry["avoid"]):
        rep.errors.append(f"{where} ({name}): avoid must be a list of strings")
        return None
    return Concept(name, str(entry["cluster"]), val, aro, str(entry["description"]), tuple(entry["avoid"]), dom)


def _parse_norms(norms: object, names: set[str], path: Path, rep: CheckReport) -> dict[str, Any]:
    """`norms`: free-form provenance (source, version, scale), checked only where code relies on it:
    `stand_ins` maps concept names to the lexicon word used for them."""
    if not isinstance(norms, dict):
        rep.errors.append(f"{path}: 'norms' must be an object (source, version, scale, stand_ins)")
        return {}
    stand = norms.get("stand_ins", {})
    if not isinstance(stand, dict) or not all(isinstance(w, str) for w in stand.values()):
        rep.errors.append(f"{path}: norms.stand_ins must map concept names to lexicon words")
        return {}
    unknown = sorted(set(stand) - names)
    if unknown:
        rep.errors.append(f"{path}: norms.stand_ins names {', '.join(map(repr, unknown))}, not in 'concepts'")
    return norms
