"""Run directories: where commands write, how the latest one is found.

Every command that writes a run folder finishes by writing `run.json` ({"kind": ..., "created":
...}); a folder without it is unfinished (or not ours) and is never picked as "the latest".
Runs live under ./runs by default ($STEERKIT_RUNS overrides).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from .errors import RunDirError, SteerkitError
from .io import atomic_write_bytes


def runs_root() -> Path:
    return Path(os.environ.get("STEERKIT_RUNS", "runs"))


def new_run_dir(*parts: str) -> Path:
    """runs/<YYYYmmdd-HHMMSS>-<parts...>, made unique with a counter."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    slug = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", p).strip("_") for p in parts if p)
    base = runs_root() / f"{stamp}-{slug}" if slug else runs_root() / stamp
    d, k = base, 1
    while d.exists():
        k += 1
        d = Path(f"{base}-{k}")
    return d


def read_run(d: Path) -> dict[str, Any] | None:
    """run.json of a finished run, or None if it is missing or breaks its schema (not a finished run)."""
    from .validate import RUN_SCHEMA, read_json

    try:
        data = read_json(d / "run.json", "run file", SteerkitError, RUN_SCHEMA)
    except SteerkitError:
        return None
    return data if isinstance(data, dict) else None


def prepare_out(out: Path, kind: str, create: bool = True) -> Path:
    """Accept a new or empty folder, or an existing run of the same kind (rerun/resume);
    refuse anything else so nothing the user made is overwritten. create=False only checks (the
    caller makes the folder when it has something to write, so a failed run leaves nothing)."""
    from .validate import check_out_dir

    check_out_dir(out, "--out", RunDirError)
    if out.exists():
        if not out.is_dir():
            raise RunDirError(f"--out {out} is a file, expected a folder; choose a new folder")
        if any(out.iterdir()):
            info = read_run(out)
            if info is None or info.get("kind") != kind:
                raise RunDirError(f"--out {out} exists and is not a steerkit {kind} run; choose a new folder")
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return out


def finish_run(d: Path, kind: str, **info: Any) -> None:
    data = {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "created_unix": time.time(), **info}
    atomic_write_bytes(d / "run.json", json.dumps(data, indent=2, default=str).encode())


def latest_run(kind: str, root: Path | None = None) -> Path | None:
    """The most recently finished run of `kind` under root (default runs_root())."""
    root = root or runs_root()
    if not root.is_dir():
        return None
    best: tuple[float, Path] | None = None
    for d in root.iterdir():
        info = read_run(d) if d.is_dir() else None
        if info and info.get("kind") == kind:
            t = float(info.get("created_unix", d.stat().st_mtime))
            if best is None or t > best[0]:
                best = (t, d)
    return best[1] if best else None
