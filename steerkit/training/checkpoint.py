"""Checkpoints: one folder per step holding state.safetensors + meta.json (no pickle).

state.safetensors: trainable tensors ("param.<name>"), optimizer tensors ("opt.<param id>.<key>"),
the torch RNG state ("rng.torch", "rng.cuda.<i>"). meta.json: step, metrics, optimizer scalars and
param groups, the lr controller state, python/numpy RNG states and the sha256 of state.safetensors.
A folder is written under a temporary name and renamed into place, so it is either complete or
absent; a checksum mismatch marks it corrupt and the previous checkpoint is used, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..io import sha256_file

log = logging.getLogger(__name__)
FORMAT = 1
STEP_DIR = re.compile(r"^step-(\d{8})$")


# ---- optimizer and RNG state <-> (tensors, JSON) -----------------------------------------------
def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state_dict -> (tensors "opt.<id>.<key>", JSON with scalars and param_groups)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in state["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for name, v in meta["scalars"].items():
        pid, k = name.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    v, st, gauss = random.getstate()
    np_state: Any = np.random.get_state()
    name, keys, pos, has_gauss, cached = np_state
    meta = {
        "python": [v, list(st), gauss],
        "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    v, st, gauss = meta["python"]
    random.setstate((v, tuple(st), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# ---- folders -----------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    path: Path
    step: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint folder under root, oldest first."""
    if not root.is_dir():
        return []
    out = [(int(m.group(1)), d) for d in root.iterdir() if d.is_dir() and (m := STEP_DIR.match(d.name))]
    return sorted(out)


def save_checkpoint(
    root: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any], keep_last: int
) -> Path:
    """Write checkpoints/step-<step>/ atomically and delete all but the newest keep_last."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
        full = {
            "format": FORMAT,
            "step": step,
            **meta,
            "sha256": {"state.safetensors": sha256_file(tmp / "state.safetensors")},
        }
        (tmp / "meta.json").write_text(json.dumps(full, indent=1, default=float))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in step_dirs(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path) -> Checkpoint:
    """Load one checkpoint folder; ValueError says why it is unusable."""
    from ..validate import CHECKPOINT_META_SCHEMA, schema_problem

    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise ValueError(f"meta.json unreadable ({type(e).__name__})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "sha256" not in meta:
        raise ValueError("meta.json is not a steerkit checkpoint of a known format")
    problem = schema_problem(meta, CHECKPOINT_META_SCHEMA)
    if problem is not None:
        raise ValueError(f"meta.json: {problem}")
    state = path / "state.safetensors"
    if not state.is_file():
        raise ValueError("state.safetensors is missing")
    if sha256_file(state) != meta["sha256"].get("state.safetensors"):
        raise ValueError("state.safetensors does not match its sha256 checksum")
    try:
        tensors = load_file(str(state))
    except Exception as e:  # garbage whose checksum was updated to match
        raise ValueError(f"state.safetensors is not a safetensors file ({type(e).__name__})") from e
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"state.safetensors holds non-finite values in {', '.join(sorted(bad)[:3])}")
    return Checkpoint(path, int(meta["step"]), tensors, meta)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    """The newest valid checkpoint under root; corrupt ones are skipped with a warning."""
    for step, d in reversed(step_dirs(root)):
        try:
            return read_checkpoint(d)
        except Exception as e:  # any unreadable file means: fall back to the previous one
            log.warning("checkpoint %s (step %d) is corrupt: %s; using the previous one", d, step, e)
    return None
