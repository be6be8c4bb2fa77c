"""Text helpers: story splitting, avoid-word matching, word shingles and their Jaccard similarity."""

from __future__ import annotations

import re

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


def jaccard_shingles(a: str, b: str, k: int = 3) -> float:
    sa = {tuple(x) for x in _shingles(_words(a), k)}
    sb = {tuple(x) for x in _shingles(_words(b), k)}
    return len(sa & sb) / len(sa | sb) if sa and sb else 0.0


def _shingles(words: list[str], k: int) -> list[list[str]]:
    return [words[i : i + k] for i in range(max(1, len(words) - k + 1))]
