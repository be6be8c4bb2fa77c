"""On-disk activation cache: safetensors shards + a JSON index, one folder per model fingerprint.

Key of one pooled activation: (text sha256, site, pooling, layer). A shard holds one tensor per
entry `site|pooling|layer`, stacked over its texts (row i = the shard's i-th text), so a shard
of thousands of activations is a handful of tensors and the index names texts, not activations.

New rows are buffered and written as one shard at most every `flush_seconds` (and on `flush()`,
which the engine calls when a capture ends or is interrupted), atomically, then the index is
rewritten atomically: a run killed at any moment loses at most the last `flush_seconds` of work
and leaves at worst an orphan shard that the index does not name. Every shard's sha256 is in the
index and is checked when the shard is read: a corrupt shard is dropped (and its rows
recomputed), never trusted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..io import atomic_save_safetensors, atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)
INDEX_VERSION = 2


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (POSIX flock; no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def entry(site: str, pooling: str, layer: int) -> str:
    """Name of one captured quantity inside a shard."""
    return f"{site}|{pooling}|{layer}"


def key(text_sha: str, site: str, pooling: str, layer: int) -> str:
    """Address of one pooled activation: a text's quantity."""
    return f"{text_sha}|{entry(site, pooling, layer)}"


class ActivationCache:
    """Cache folder for one model fingerprint: `<root>/<fingerprint>/`."""

    def __init__(self, root: str | Path, fingerprint: str, flush_seconds: float = 1.0) -> None:
        """flush_seconds: write buffered rows once this long has passed since the last write
        (0 = a shard per `put_rows`). Batching writes keeps small models' captures at the speed of
        their forward pass; a killed run loses at most this much work."""
        self.flush_seconds = flush_seconds
        self._pending: list[tuple[list[str], dict[str, torch.Tensor]]] = []
        self._pending_rows: dict[str, torch.Tensor] = {}  # key -> row, for reads before a flush
        self._last_flush = time.perf_counter()
        from ..errors import SteerkitError
        from ..validate import check_out_dir

        self.dir = check_out_dir(Path(root) / fingerprint, "activation cache folder", SteerkitError)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index_path = self.dir / "index.json"
        self.shards: dict[str, dict[str, Any]] = {}  # name -> {"sha256", "texts", "entries"}
        self.where: dict[str, tuple[str, int]] = {}  # key -> (shard name, row)
        self._loaded: dict[str, dict[str, torch.Tensor]] = {}
        self._read_index()

    def _read_index(self) -> None:
        self.shards = self._shards_on_disk(warn=True)
        for name, meta in self.shards.items():
            self._index_shard(name, meta)

    def _shards_on_disk(self, warn: bool = False) -> dict[str, dict[str, Any]]:
        """The shards the index file names ({} if absent, unreadable or of another version)."""
        if not self.index_path.exists():
            return {}
        try:
            data = json.loads(self.index_path.read_text())
            if data.get("version") != INDEX_VERSION:
                if warn:  # on open only: the shards of an older format can never be read again
                    self._remove_old_shards(data)
                raise ValueError(f"index version {data.get('version')}, this steerkit writes {INDEX_VERSION}")
            shards = dict(data["shards"])
            for meta in shards.values():
                if not isinstance(meta["texts"], list) or not isinstance(meta["entries"], list):
                    raise TypeError("texts/entries must be lists")
            return shards
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            if warn:
                log.warning("activation cache index %s unreadable (%s); starting afresh", self.index_path, e)
            return {}

    def _remove_old_shards(self, data: dict[str, Any]) -> None:
        """An index of another format version: its shards can never be read again, so free them."""
        for name in data.get("shards") or {}:
            if isinstance(name, str) and name.startswith("shard-") and "/" not in name:
                (self.dir / name).unlink(missing_ok=True)

    def _index_shard(self, name: str, meta: dict[str, Any]) -> None:
        for row, sha in enumerate(meta["texts"]):
            for e in meta["entries"]:
                self.where[f"{sha}|{e}"] = (name, row)

    def _write_index(self) -> None:
        """Rewrite the index under an exclusive lock, first adopting the shards that other processes
        sharing this folder indexed since we read it (so concurrent captures lose nothing)."""
        with _locked(self.dir / "index.lock"):
            for name in [n for n in self.shards if not (self.dir / n).exists()]:  # deleted by another process
                self._forget(name)
            for name, meta in self._shards_on_disk().items():
                if name not in self.shards and (self.dir / name).exists():
                    self.shards[name] = meta
                    self._index_shard(name, meta)
            data = {"version": INDEX_VERSION, "shards": self.shards}
            atomic_write_bytes(self.index_path, json.dumps(data).encode())

    def has(self, k: str) -> bool:
        return k in self.where or k in self._pending_rows

    def get(self, k: str) -> torch.Tensor | None:
        """The cached tensor, or None if absent or its shard is corrupt (then dropped)."""
        if k in self._pending_rows:
            return self._pending_rows[k]
        hit = self.where.get(k)
        if hit is None:
            return None
        name, row = hit
        if name not in self._loaded:
            path = self.dir / name
            try:
                if sha256_file(path) != self.shards[name]["sha256"]:
                    raise ValueError("checksum mismatch")
                self._loaded[name] = load_file(path)
            except Exception as e:  # missing, truncated, corrupt: recompute, never trust
                log.warning("activation cache shard %s is corrupt (%s); its rows will be recomputed", name, e)
                self._drop(name)
                return None
        return self._loaded[name][k.split("|", 1)[1]][row]

    def _forget(self, name: str) -> None:
        meta = self.shards.pop(name, None)
        self._loaded.pop(name, None)
        if meta:
            for row, sha in enumerate(meta["texts"]):
                for e in meta["entries"]:
                    if self.where.get(f"{sha}|{e}") == (name, row):
                        del self.where[f"{sha}|{e}"]

    def _drop(self, name: str) -> None:
        self._forget(name)
        (self.dir / name).unlink(missing_ok=True)  # before the index, which adopts shards on disk
        self._write_index()

    def put_rows(self, text_shas: list[str], tensors: dict[str, torch.Tensor]) -> None:
        """Add rows: `tensors` maps entry names (see `entry`) to (len(text_shas), ...) tensors.
        They are written (see `flush`) once `flush_seconds` have passed since the last write."""
        if not text_shas or not tensors:
            return
        self._pending.append((list(text_shas), tensors))
        for e, t in tensors.items():
            for row, sha in enumerate(text_shas):
                self._pending_rows[f"{sha}|{e}"] = t[row]
        if time.perf_counter() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows (one shard per set of entries, atomic), then the index (atomic)."""
        self._last_flush = time.perf_counter()
        pending, self._pending = self._pending, []
        groups: dict[tuple[str, ...], list[tuple[list[str], dict[str, torch.Tensor]]]] = {}
        for shas, tensors in pending:
            groups.setdefault(tuple(sorted(tensors)), []).append((shas, tensors))
        for entries, parts in groups.items():
            texts = [sha for shas, _ in parts for sha in shas]
            stacked = {e: torch.cat([t[e] for _, t in parts]).contiguous() for e in entries}
            name = f"shard-{uuid.uuid4().hex[:16]}.safetensors"
            path = self.dir / name
            atomic_save_safetensors(stacked, path)
            meta = {"sha256": sha256_file(path), "texts": texts, "entries": list(entries)}
            self.shards[name] = meta
            self._index_shard(name, meta)
        if groups:
            self._write_index()
        self._pending_rows = {}
