"""The corpus data model: concepts, text sources, unique texts, the check report, the corpus."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

TextKind = Literal["story", "paired", "baseline", "neutral"]


@dataclass(frozen=True)
class Concept:
    name: str
    cluster: str
    valence: float
    arousal: float
    description: str
    avoid: tuple[str, ...]
    dominance: float | None = None  # absent from older manifests


@dataclass(frozen=True)
class Source:
    file: str  # path relative to the corpus root
    line: int  # 1-based line of the text's first line
    kind: TextKind
    concept: str | None
    scenario: str | None


@dataclass
class Text:
    """One unique text and every place it appears."""

    text: str
    sources: list[Source] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def where(self) -> str:
        s = self.sources[0]
        return f"{s.file}:{s.line}"

    @property
    def concepts(self) -> set[str]:
        return {s.concept for s in self.sources if s.concept}


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class Corpus:
    root: Path
    concepts: list[Concept]
    texts: list[Text]  # unique texts: stories, framings, baselines (not neutral)
    neutral: list[Text]
    scenarios: dict[str, dict[str, int]]  # scenario -> {"baseline" | concept: text index}
    report: CheckReport
    norms: dict[str, Any] = field(default_factory=dict)  # manifest "norms": source of valence/arousal/dominance

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def concept(self, name: str) -> Concept:
        for c in self.concepts:
            if c.name == name:
                return c
        raise KeyError(name)

    def positives(self, name: str) -> list[int]:
        """Indices into `texts` labelled with concept `name`."""
        return [i for i, t in enumerate(self.texts) if name in t.concepts]

    def negatives(self, name: str) -> list[int]:
        """Indices into `texts` of other concepts' positives and all baselines."""
        return [i for i, t in enumerate(self.texts) if name not in t.concepts]

    def sha256(self) -> str:
        """Content hash of the whole corpus (manifest + all texts), for provenance."""
        h = hashlib.sha256()
        concepts = [{k: v for k, v in c.__dict__.items() if v is not None} for c in self.concepts]
        h.update(json.dumps(concepts, sort_keys=True, default=list).encode())
        for t in self.texts + self.neutral:
            h.update(t.sha.encode())
            h.update(json.dumps([s.__dict__ for s in t.sources], sort_keys=True).encode())
        return h.hexdigest()

    def stats(self) -> list[dict[str, object]]:
        rows = []
        for c in self.concepts:
            pos = self.positives(c.name)
            words = [len(self.texts[i].text.split()) for i in pos]
            scen = sorted(s for s, m in self.scenarios.items() if c.name in m)
            rows.append(
                {
                    "concept": c.name,
                    "cluster": c.cluster,
                    "positives": len(pos),
                    "mean_words": round(sum(words) / len(words), 1) if words else 0.0,
                    "scenarios": scen,
                }
            )
        return rows
