"""Walk a corpus folder, validate it and build the Corpus (docs/corpus.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CorpusError
from ..validate import MAX_STORY_CHARS, decode_utf8, expect_dir
from .manifest import parse_manifest
from .model import CheckReport, Concept, Corpus, Source, Text, TextKind
from .text import avoid_hits, near_duplicates, split_stories

KNOWN_ENTRIES = {"manifest.json", "stories", "paired", "neutral", "prompts", "preferences", "README.md"}


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
    try:
        return decode_utf8(path.read_bytes(), path, CorpusError)
    except CorpusError as e:
        rep.errors.append(str(e))
        return None


@dataclass
class _Scan:
    """What the loader collects while it walks a corpus folder."""

    root: Path
    rep: CheckReport
    by_name: dict[str, Concept]
    length_range: tuple[int, int]
    unique: dict[str, Text] = field(default_factory=dict)  # stories, framings, baselines
    neutral: dict[str, Text] = field(default_factory=dict)
    scenarios: dict[str, dict[str, str]] = field(default_factory=dict)  # scenario -> {"baseline" | concept: text}
    file_concepts: set[str] = field(default_factory=set)

    def rel(self, p: Path) -> str:
        return p.relative_to(self.root).as_posix()

    def add(self, store: dict[str, Text], text: str, src: Source) -> str:
        store.setdefault(text, Text(text)).sources.append(src)
        return text

    def check_text(self, p: Path, line: int, text: str, concept: str | None, kind: TextKind) -> bool:
        """Warn about an empty story (False: skip it), its length and its concept's avoid words."""
        where = f"{self.rel(p)}:{line}"
        if not text:
            self.rep.warnings.append(f"{where}: empty story skipped")
            return False
        if len(text) > MAX_STORY_CHARS:  # a paragraph, not a book (it would dominate the token budget)
            self.rep.errors.append(
                f"{where}: a story of {len(text):,} characters, over the limit of {MAX_STORY_CHARS:,} "
                "(docs/corpus.md); split it or cut it to a paragraph"
            )
            return False
        n = len(text.split())
        lo, hi = (30, 250) if kind == "neutral" else self.length_range
        if not lo <= n <= hi:
            self.rep.warnings.append(f"{where}: {n} words, outside {lo}-{hi}")
        if concept and concept in self.by_name:
            hits = avoid_hits(text, self.by_name[concept].avoid)
            if hits:
                self.rep.warnings.append(f"{where}: a {concept} story contains avoid word(s) {', '.join(hits)}")
        return True


def _check_names(concepts: list[Concept], rep: CheckReport) -> dict[str, str]:
    """Concept names that differ only by case are an error; returns lower-case name -> name."""
    lower: dict[str, str] = {}
    for c in concepts:
        if c.name.lower() in lower:
            rep.errors.append(f"concepts {lower[c.name.lower()]!r} and {c.name!r} differ only by case")
        lower[c.name.lower()] = c.name
    return lower


def _check_entries(root: Path, rep: CheckReport) -> None:
    """Unknown top-level entries are warnings, symlinked ones errors."""
    for entry in sorted(root.iterdir()):
        if entry.name not in KNOWN_ENTRIES and not entry.name.startswith("."):
            rep.warnings.append(f"{entry}: not part of the corpus format; ignored")
        if entry.is_symlink():
            rep.errors.append(f"{entry}: symlinks are not allowed in a corpus; copy the folder in")


def _scan_stories(s: _Scan) -> None:
    """stories/<concept>.txt: unpaired stories separated by ---."""
    for p in _safe_files(s.root, s.root / "stories", s.rep):
        s.file_concepts.add(p.stem)
        raw = _read(p, s.rep)
        if raw is None:
            continue
        for line, text in split_stories(raw):
            if s.check_text(p, line, text, p.stem, "story"):
                s.add(s.unique, text, Source(s.rel(p), line, "story", p.stem, None))


def _scan_scenario(s: _Scan, sdir: Path) -> None:
    """paired/<scenario>/: baseline.txt plus one framing per concept, one story per file."""
    if sdir.is_symlink():
        s.rep.errors.append(f"{sdir}: symlinks are not allowed in a corpus")
        return
    files = _safe_files(s.root, sdir, s.rep)
    scen: dict[str, str] = {}
    if not (sdir / "baseline.txt").is_file():
        s.rep.errors.append(f"{sdir}: paired scenario {sdir.name!r} has no baseline.txt; add the neutral telling")
    for p in files:
        raw = _read(p, s.rep)
        if raw is None:
            continue
        stories = [x for x in split_stories(raw) if x[1]]
        if len(stories) != 1:
            s.rep.errors.append(f"{s.rel(p)}: a paired file must hold exactly one story, found {len(stories)}")
            continue
        line, text = stories[0]
        if p.stem == "baseline":
            s.check_text(p, line, text, None, "baseline")
            scen["baseline"] = s.add(s.unique, text, Source(s.rel(p), line, "baseline", None, sdir.name))
        else:
            s.file_concepts.add(p.stem)
            s.check_text(p, line, text, p.stem, "paired")
            scen[p.stem] = s.add(s.unique, text, Source(s.rel(p), line, "paired", p.stem, sdir.name))
    s.scenarios[sdir.name] = scen


def _scan_neutral(s: _Scan) -> None:
    """neutral/*.txt: neutral paragraphs separated by ---."""
    for p in _safe_files(s.root, s.root / "neutral", s.rep):
        raw = _read(p, s.rep)
        if raw is None:
            continue
        for line, text in split_stories(raw):
            if s.check_text(p, line, text, None, "neutral"):
                s.add(s.neutral, text, Source(s.rel(p), line, "neutral", None, None))


def _check_membership(s: _Scan, concepts: list[Concept], lower: dict[str, str], allow_missing: bool) -> None:
    """Every concept with files is in the manifest and every manifest concept has files."""
    for name in sorted(s.file_concepts):
        if name.lower() in lower and lower[name.lower()] != name:
            s.rep.errors.append(
                f"file concept {name!r} and manifest concept {lower[name.lower()]!r} differ only by case"
            )
        elif name not in s.by_name:
            msg = f"concept {name!r} has story files but is not in manifest.json; add it to the manifest"
            (s.rep.warnings if allow_missing else s.rep.errors).append(msg)
    for c in concepts:
        if c.name not in s.file_concepts:
            msg = f"concept {c.name!r} is in manifest.json but has no stories or framings"
            (s.rep.warnings if allow_missing else s.rep.errors).append(msg)


def load(
    path: str | Path,
    *,
    min_positives: int = 3,
    allow_missing: bool = False,
    length_range: tuple[int, int] = (60, 200),
    near_duplicate: float = 0.3,
    strict: bool = True,
) -> Corpus:
    """Load and validate a corpus folder. With strict=True any error raises CorpusError
    (its message: the first error and how many more); the full list is in `corpus.report`."""
    root = Path(path)
    rep = CheckReport()
    expect_dir(root, "corpus folder", CorpusError, "pass the folder holding manifest.json")
    concepts, norms = parse_manifest(root, rep)
    lower = _check_names(concepts, rep)
    _check_entries(root, rep)
    s = _Scan(root, rep, {c.name: c for c in concepts}, length_range)
    if (root / "stories").is_dir():
        _scan_stories(s)
    if (root / "paired").is_dir():
        for sdir in sorted(d for d in (root / "paired").iterdir() if d.is_dir() or d.is_symlink()):
            _scan_scenario(s, sdir)
    if (root / "neutral").is_dir():
        _scan_neutral(s)
    _check_membership(s, concepts, lower, allow_missing)

    texts = list(s.unique.values())
    index = {t.text: i for i, t in enumerate(texts)}
    kept = [c for c in concepts if c.name in s.file_concepts]
    for c in kept:
        n = sum(1 for t in texts if c.name in t.concepts)
        if n < min_positives:
            rep.errors.append(f"concept {c.name!r} has {n} positives, fewer than --min-positives {min_positives}")
    _duplicates(texts + list(s.neutral.values()), rep)
    _near_duplicate_warnings(texts + list(s.neutral.values()), near_duplicate, rep)
    corpus = Corpus(
        root=root,
        concepts=kept,
        texts=texts,
        neutral=list(s.neutral.values()),
        scenarios={name: {k: index[v] for k, v in m.items()} for name, m in s.scenarios.items()},
        report=rep,
        norms=norms,
    )
    if strict and rep.errors:
        more = f" ({len(rep.errors) - 1} more; run `steerkit corpus check {root}`)" if len(rep.errors) > 1 else ""
        raise CorpusError(rep.errors[0] + more)
    return corpus


def _duplicates(texts: list[Text], rep: CheckReport) -> None:
    """A text stored under two labels (two concepts, or a concept and a baseline) is an error: extract
    would make it a positive of both. The same text twice under one label is a warning."""
    for t in texts:
        if len(t.sources) < 2:
            continue
        labels = sorted(t.concepts) + sorted(
            {f"the baseline of {s.scenario}" for s in t.sources if s.kind == "baseline"}
        )
        places = [f"{s.file}:{s.line}" for s in t.sources]
        if len(labels) > 1:
            rep.errors.append(
                f"{' and '.join(places)} hold the same text, labelled {' and '.join(labels)}; "
                "a text can belong to one concept only: rewrite or delete all but one"
            )
        else:
            rep.warnings.append(f"{places[0]}: exact duplicate also at {', '.join(places[1:])}")


def _near_duplicate_warnings(texts: list[Text], threshold: float, rep: CheckReport) -> None:
    """Warn about pairs of texts (neutral ones included) whose word 4-gram Jaccard exceeds threshold.
    The tellings of one paired scenario share its events by design and are not compared."""
    scen = [{s.scenario for s in t.sources if s.scenario} for t in texts]
    for i, j, jac in near_duplicates([t.text for t in texts], threshold, k=4):
        if not scen[i] & scen[j]:
            rep.warnings.append(
                f"{texts[i].where} and {texts[j].where}: near duplicates (word 4-gram Jaccard {jac:.2f} > "
                f"{threshold}); rewrite one so they share less text"
            )
