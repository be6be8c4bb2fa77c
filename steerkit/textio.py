"""Reading user text files: .txt (blocks separated by lines holding only ---, else one text per
non-empty line), .jsonl (a "text" field per line), or a folder of those."""

from __future__ import annotations

import json
from pathlib import Path

from .corpus import SEPARATOR, split_stories
from .errors import SteerkitError
from .validate import check_text_size, decode_utf8


def read_texts(path: str | Path) -> list[tuple[str, str]]:
    """[(text, 'file:line')] from a file or folder; errors name the file (and line) and what to do.
    One text may hold at most validate.MAX_TEXT_CHARS characters."""
    p = Path(path)
    if not p.exists():
        raise SteerkitError(f"text path {p} does not exist; pass a .txt/.jsonl file or a folder of them")
    files = sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".jsonl") and f.is_file()) if p.is_dir() else [p]
    out: list[tuple[str, str]] = []
    for f in files:
        try:
            raw = decode_utf8(f.read_bytes(), f)
        except OSError as e:
            raise SteerkitError(f"{f} is unreadable ({e.strerror or type(e).__name__})") from e
        if f.suffix == ".jsonl":
            for n, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    text = obj["text"] if isinstance(obj, dict) else obj
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise SteerkitError(f'{f}:{n}: each line must be JSON with a "text" field') from e
                if isinstance(text, str) and text.strip():
                    out.append((text.strip(), f"{f}:{n}"))
        elif any(SEPARATOR.match(line) for line in raw.splitlines()):
            out.extend((t, f"{f}:{n}") for n, t in split_stories(raw) if t)
        else:
            out.extend((line.strip(), f"{f}:{n}") for n, line in enumerate(raw.splitlines(), 1) if line.strip())
    if not out:
        raise SteerkitError(f"no texts found in {p}; it needs non-empty .txt or .jsonl content")
    for text, where in out:
        check_text_size(text, where)
    return out
