"""manifest.json: the concept list (docs/corpus.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .model import CheckReport, Concept

SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def parse_manifest(root: Path, rep: CheckReport) -> list[Concept]:
    path = root / "manifest.json"
    if not path.is_file():
        rep.errors.append(f"{path}: manifest.json is missing; see docs/corpus.md for its format")
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        rep.errors.append(f"{path}: malformed JSON ({e}); fix the file")
        return []
    entries = data.get("concepts") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        rep.errors.append(f"{path}: needs a non-empty 'concepts' list")
        return []
    concepts: list[Concept] = []
    for i, entry in enumerate(entries):
        where = f"{path} concept #{i + 1}"
        if not isinstance(entry, dict):
            rep.errors.append(f"{where}: must be an object")
            continue
        missing = [k for k in ("name", "cluster", "valence", "arousal", "description", "avoid") if k not in entry]
        if missing:
            rep.errors.append(f"{where}: missing field(s) {', '.join(missing)}")
            continue
        name = entry["name"]
        if not isinstance(name, str) or not SNAKE.match(name):
            rep.errors.append(f"{where}: name {name!r} must be snake_case")
            continue
        try:
            val, aro = float(entry["valence"]), float(entry["arousal"])
        except (TypeError, ValueError):
            rep.errors.append(f"{where} ({name}): valence and arousal must be numbers")
            continue
        if not -1 <= val <= 1 or not 0 <= aro <= 1:
            rep.errors.append(f"{where} ({name}): valence must lie in [-1, 1] and arousal in [0, 1]")
            continue
        if not isinstance(entry["avoid"], list) or not all(isinstance(w, str) for w in entry["avoid"]):
            rep.errors.append(f"{where} ({name}): avoid must be a list of strings")
            continue
        concepts.append(
            Concept(name, str(entry["cluster"]), val, aro, str(entry["description"]), tuple(entry["avoid"]))
        )
    return concepts
