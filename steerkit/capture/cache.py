"""On-disk activation cache: safetensors shards + a JSON index, one folder per model fingerprint.

Key of one pooled activation: (text sha256, site, pooling, layer). Each computed batch is one
shard, written atomically, then the index is rewritten atomically; a run killed at any moment
leaves at worst an orphan shard that the index does not name. Every shard's sha256 is in the
index and is checked when the shard is read: a corrupt shard is dropped (and its entries
recomputed), never trusted.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..io import atomic_save_safetensors, atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)
INDEX_VERSION = 1


def key(text_sha: str, site: str, pooling: str, layer: int) -> str:
    return f"{text_sha}|{site}|{pooling}|{layer}"


class ActivationCache:
    """Cache folder for one model fingerprint: `<root>/<fingerprint>/`."""

    def __init__(self, root: str | Path, fingerprint: str) -> None:
        self.dir = Path(root) / fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index_path = self.dir / "index.json"
        self.shards: dict[str, dict[str, Any]] = {}
        self.where: dict[str, str] = {}  # key -> shard name
        self._loaded: dict[str, dict[str, torch.Tensor]] = {}
        self._read_index()

    def _read_index(self) -> None:
        if not self.index_path.exists():
            return
        try:
            data = json.loads(self.index_path.read_text())
            if data.get("version") != INDEX_VERSION:
                raise ValueError(f"index version {data.get('version')}")
            self.shards = dict(data["shards"])
        except (ValueError, KeyError, json.JSONDecodeError) as e:
            log.warning("activation cache index %s unreadable (%s); starting afresh", self.index_path, e)
            self.shards = {}
        for name, meta in self.shards.items():
            for k in meta["keys"]:  # type: ignore[union-attr]
                self.where[k] = name

    def _write_index(self) -> None:
        data = {"version": INDEX_VERSION, "shards": self.shards}
        atomic_write_bytes(self.index_path, json.dumps(data).encode())

    def has(self, k: str) -> bool:
        return k in self.where

    def get(self, k: str) -> torch.Tensor | None:
        """The cached tensor, or None if absent or its shard is corrupt (then dropped)."""
        name = self.where.get(k)
        if name is None:
            return None
        if name not in self._loaded:
            path = self.dir / name
            meta = self.shards[name]
            try:
                if sha256_file(path) != meta["sha256"]:
                    raise ValueError("checksum mismatch")
                self._loaded[name] = load_file(path)
            except Exception as e:  # missing, truncated, corrupt: recompute, never trust
                log.warning("activation cache shard %s is corrupt (%s); its entries will be recomputed", name, e)
                self._drop(name)
                return None
        return self._loaded[name].get(k)

    def _drop(self, name: str) -> None:
        meta = self.shards.pop(name, None)
        if meta:
            for k in meta["keys"]:  # type: ignore[union-attr]
                self.where.pop(k, None)
        self._write_index()
        try:
            (self.dir / name).unlink()
        except FileNotFoundError:
            pass

    def put_many(self, tensors: dict[str, torch.Tensor]) -> None:
        """Store a batch of entries as one new shard (atomic), then update the index (atomic)."""
        if not tensors:
            return
        name = f"shard-{uuid.uuid4().hex[:16]}.safetensors"
        path = self.dir / name
        atomic_save_safetensors(tensors, path)
        self.shards[name] = {"sha256": sha256_file(path), "keys": sorted(tensors)}
        for k in tensors:
            self.where[k] = name
        self._write_index()
