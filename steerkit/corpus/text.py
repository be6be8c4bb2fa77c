"""Text helpers: story splitting, avoid-word matching, word shingles and their Jaccard similarity."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence

SEPARATOR = re.compile(r"^---\s*$")


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


def shingles(text: str, k: int = 4) -> set[tuple[str, ...]]:
    """The set of word k-grams of `text` (lower-cased words; a text shorter than k words is one shingle)."""
    w = _words(text)
    return {tuple(w[i : i + k]) for i in range(max(1, len(w) - k + 1))} if w else set()


def jaccard_shingles(a: str, b: str, k: int = 4) -> float:
    """|A & B| / |A | B| of the word k-gram sets of two texts (0 if either has no words)."""
    sa, sb = shingles(a, k), shingles(b, k)
    return len(sa & sb) / len(sa | sb) if sa and sb else 0.0


def near_duplicates(texts: Sequence[str], threshold: float = 0.3, k: int = 4) -> list[tuple[int, int, float]]:
    """(i, j, Jaccard) for every pair i < j whose word k-gram Jaccard exceeds `threshold`.
    An inverted index (shingle -> texts holding it) scores only pairs that share a shingle, so
    the cost is the sum over shingles of their posting-list sizes, not all N^2 pairs."""
    sets = [shingles(t, k) for t in texts]
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    out: list[tuple[int, int, float]] = []
    for j, sj in enumerate(sets):
        shared: Counter[int] = Counter()
        for g in sj:
            shared.update(index[g])  # earlier texts holding g
            index[g].append(j)
        for i, n in shared.items():
            jac = n / (len(sets[i]) + len(sj) - n)
            if jac > threshold:
                out.append((i, j, jac))
    return sorted(out)
