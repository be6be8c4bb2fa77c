"""The story corpus: format, loader and checks (docs/corpus.md).

Layout of a corpus folder:
    manifest.json                       concepts with cluster, valence, arousal, description, avoid
    stories/<concept>.txt               unpaired stories separated by a line holding only ---
    paired/<scenario>/baseline.txt      one setting told neutrally (a shared negative)
    paired/<scenario>/<concept>.txt     the same setting framed by one concept
    neutral/*.txt                       neutral paragraphs separated by ---
    prompts/                            prompt sets for experiments (ignored here)

Positives of a concept: its unpaired stories plus its framings in every scenario.
Negatives: the positives of all other concepts plus all baselines (texts that are also a
positive of the concept are never its negatives). Identical texts are stored once.
All validation happens here, before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import CorpusError

TextKind = Literal["story", "paired", "baseline", "neutral"]
SEPARATOR = re.compile(r"^---\s*$")
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
KNOWN_ENTRIES = {"manifest.json", "stories", "paired", "neutral", "prompts", "README.md"}


@dataclass(frozen=True)
class Concept:
    name: str
    cluster: str
    valence: float
    arousal: float
    description: str
    avoid: tuple[str, ...]


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

    def labels(self) -> list[list[str]]:
        """Concept names of each text (empty for baselines)."""
        return [sorted(t.concepts) for t in self.texts]

    def sha256(self) -> str:
        """Content hash of the whole corpus (manifest + all texts), for provenance."""
        h = hashlib.sha256()
        h.update(json.dumps([c.__dict__ for c in self.concepts], sort_keys=True, default=list).encode())
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


# ---------------------------------------------------------------------------------------------
def split_stories(raw: str) -> list[tuple[int, str]]:
    """Split a file's text on lines holding only --- into (first line number, story) pairs.
    Whitespace-only stories are returned as '' so callers can warn about them."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 1
    for n, line in enumerate(raw.splitlines(), start=1):
        if SEPARATOR.match(line):
            out.append((start, "\n".join(buf).strip()))
            buf, start = [], n + 1
        else:
            if not buf and not line.strip():
                start = n + 1
                continue
            buf.append(line)
    out.append((start, "\n".join(buf).strip()))
    if len(out) == 1 and not out[0][1] and not raw.strip():
        return [(1, "")]
    return out


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def avoid_hits(text: str, avoid: tuple[str, ...] | list[str]) -> list[str]:
    """Avoid-list entries found in `text` as whole words or phrases (case-insensitive)."""
    return [w for w in avoid if re.search(r"\b" + re.escape(w) + r"\b", text, re.I)]


def jaccard_shingles(a: str, b: str, k: int = 3) -> float:
    sa = {tuple(x) for x in _shingles(_words(a), k)}
    sb = {tuple(x) for x in _shingles(_words(b), k)}
    return len(sa & sb) / len(sa | sb) if sa and sb else 0.0


def _shingles(words: list[str], k: int) -> list[list[str]]:
    return [words[i : i + k] for i in range(max(1, len(words) - k + 1))]


# ---------------------------------------------------------------------------------------------
def _parse_manifest(root: Path, rep: CheckReport) -> list[Concept]:
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


def _safe_files(root: Path, folder: Path, rep: CheckReport) -> list[Path]:
    """*.txt below folder, refusing symlinks and paths that leave the corpus root."""
    out = []
    real_root = root.resolve()
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            rep.errors.append(f"{p}: symlinks are not allowed in a corpus; copy the file in")
            continue
        if not p.resolve().is_relative_to(real_root):
            rep.errors.append(f"{p}: path leaves the corpus folder")
            continue
        if p.is_file() and p.suffix == ".txt":
            out.append(p)
    return out


def _read(path: Path, rep: CheckReport) -> str | None:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        rep.errors.append(f"{path}: not UTF-8 (invalid byte at offset {e.start}); re-save it as UTF-8")
        return None


def load(
    path: str | Path,
    *,
    min_positives: int = 3,
    allow_missing: bool = False,
    length_range: tuple[int, int] = (60, 200),
    near_duplicate: float = 0.8,
    strict: bool = True,
) -> Corpus:
    """Load and validate a corpus folder. With strict=True any error raises CorpusError
    (its message: the first error and how many more); the full list is in `corpus.report`."""
    root = Path(path)
    rep = CheckReport()
    if not root.is_dir():
        raise CorpusError(f"corpus folder {root} does not exist; pass the folder holding manifest.json")
    concepts = _parse_manifest(root, rep)
    by_name = {c.name: c for c in concepts}
    lower: dict[str, str] = {}
    for c in concepts:
        if c.name.lower() in lower:
            rep.errors.append(f"concepts {lower[c.name.lower()]!r} and {c.name!r} differ only by case")
        lower[c.name.lower()] = c.name

    for entry in sorted(root.iterdir()):
        if entry.name not in KNOWN_ENTRIES and not entry.name.startswith("."):
            rep.warnings.append(f"{entry}: not part of the corpus format; ignored")
        if entry.is_symlink():
            rep.errors.append(f"{entry}: symlinks are not allowed in a corpus; copy the folder in")

    unique: dict[str, Text] = {}
    neutral: dict[str, Text] = {}
    scenarios: dict[str, dict[str, str]] = {}
    file_concepts: set[str] = set()

    def add(store: dict[str, Text], text: str, src: Source) -> str:
        t = store.setdefault(text, Text(text))
        t.sources.append(src)
        return text

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    def check_text(p: Path, line: int, text: str, concept: str | None, kind: TextKind) -> bool:
        if not text:
            rep.warnings.append(f"{rel(p)}:{line}: empty story skipped")
            return False
        n = len(text.split())
        lo, hi = (30, 250) if kind == "neutral" else length_range
        if not lo <= n <= hi:
            rep.warnings.append(f"{rel(p)}:{line}: {n} words, outside {lo}-{hi}")
        if concept and concept in by_name:
            hits = avoid_hits(text, by_name[concept].avoid)
            if hits:
                rep.warnings.append(f"{rel(p)}:{line}: a {concept} story contains avoid word(s) {', '.join(hits)}")
        return True

    if (root / "stories").is_dir():
        for p in _safe_files(root, root / "stories", rep):
            concept = p.stem
            file_concepts.add(concept)
            raw = _read(p, rep)
            if raw is None:
                continue
            for line, text in split_stories(raw):
                if check_text(p, line, text, concept, "story"):
                    add(unique, text, Source(rel(p), line, "story", concept, None))
    if (root / "paired").is_dir():
        for sdir in sorted(d for d in (root / "paired").iterdir() if d.is_dir() or d.is_symlink()):
            files = _safe_files(root, sdir, rep) if not sdir.is_symlink() else []
            if sdir.is_symlink():
                rep.errors.append(f"{sdir}: symlinks are not allowed in a corpus")
                continue
            scen: dict[str, str] = {}
            if not (sdir / "baseline.txt").is_file():
                rep.errors.append(f"{sdir}: paired scenario {sdir.name!r} has no baseline.txt; add the neutral telling")
            for p in files:
                raw = _read(p, rep)
                if raw is None:
                    continue
                stories = [s for s in split_stories(raw) if s[1]]
                if len(stories) != 1:
                    rep.errors.append(f"{rel(p)}: a paired file must hold exactly one story, found {len(stories)}")
                    continue
                line, text = stories[0]
                if p.stem == "baseline":
                    check_text(p, line, text, None, "baseline")
                    scen["baseline"] = add(unique, text, Source(rel(p), line, "baseline", None, sdir.name))
                else:
                    file_concepts.add(p.stem)
                    check_text(p, line, text, p.stem, "paired")
                    scen[p.stem] = add(unique, text, Source(rel(p), line, "paired", p.stem, sdir.name))
            scenarios[sdir.name] = scen
    if (root / "neutral").is_dir():
        for p in _safe_files(root, root / "neutral", rep):
            raw = _read(p, rep)
            if raw is None:
                continue
            for line, text in split_stories(raw):
                if check_text(p, line, text, None, "neutral"):
                    add(neutral, text, Source(rel(p), line, "neutral", None, None))

    for name in sorted(file_concepts):
        if name.lower() in lower and lower[name.lower()] != name:
            rep.errors.append(f"file concept {name!r} and manifest concept {lower[name.lower()]!r} differ only by case")
        elif name not in by_name:
            msg = f"concept {name!r} has story files but is not in manifest.json; add it to the manifest"
            (rep.warnings if allow_missing else rep.errors).append(msg)
    for c in concepts:
        if c.name not in file_concepts:
            msg = f"concept {c.name!r} is in manifest.json but has no stories or framings"
            (rep.warnings if allow_missing else rep.errors).append(msg)

    texts = list(unique.values())
    index = {t.text: i for i, t in enumerate(texts)}
    kept = [c for c in concepts if c.name in file_concepts]
    for c in kept:
        n = sum(1 for t in texts if c.name in t.concepts)
        if n < min_positives:
            rep.errors.append(f"concept {c.name!r} has {n} positives, fewer than --min-positives {min_positives}")
    _near_duplicates(texts, near_duplicate, rep)
    corpus = Corpus(
        root=root,
        concepts=kept,
        texts=texts,
        neutral=list(neutral.values()),
        scenarios={s: {k: index[v] for k, v in m.items()} for s, m in scenarios.items()},
        report=rep,
    )
    if strict and rep.errors:
        more = f" ({len(rep.errors) - 1} more; run `steerkit corpus check {root}`)" if len(rep.errors) > 1 else ""
        raise CorpusError(rep.errors[0] + more)
    return corpus


def _near_duplicates(texts: list[Text], threshold: float, rep: CheckReport) -> None:
    """Warn about pairs of texts whose 3-word-shingle Jaccard similarity exceeds threshold.
    Identical texts were merged already (and are reported when they carry different labels)."""
    for t in texts:
        if len(t.sources) > 1:
            rep.warnings.append(
                f"{t.where}: exact duplicate also at {', '.join(f'{s.file}:{s.line}' for s in t.sources[1:])}"
            )
    sets = [{tuple(x) for x in _shingles(_words(t.text), 3)} for t in texts]
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            a, b = sets[i], sets[j]
            if not a or not b or min(len(a), len(b)) / max(len(a), len(b)) < threshold:
                continue  # Jaccard <= |small| / |large|: cannot exceed the threshold
            jac = len(a & b) / len(a | b)
            if jac > threshold:
                rep.warnings.append(f"{texts[i].where} and {texts[j].where}: near duplicates (Jaccard {jac:.2f})")
