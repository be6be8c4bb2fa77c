"""torch.distributed plumbing, in one place: who am I, which share of the work is mine, gather to rank 0.

A command launched by `torchrun` (or `srun`, or anything that sets RANK / WORLD_SIZE / LOCAL_RANK and
MASTER_ADDR / MASTER_PORT) calls `init()` once; without those variables every function here answers
as a world of one process (rank 0, size 1, `shard` returns everything, `gather` returns `[obj]`), so a
plain run behaves exactly as before. Collectives run on gloo (CPU objects: pooled activations and
result rows are pickled on the CPU whatever the model's device); when CUDA is present the process
group also gets nccl for CUDA tensors. Every collective has a timeout (`STEERKIT_DIST_TIMEOUT`
seconds, default 1800), so a dead rank makes the others fail instead of hanging.

Ground floor: imports nothing from steerkit but `errors`; torch is imported lazily.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import SteerkitError

DEFAULT_TIMEOUT_S = 1800.0
_state: dict[str, Any] = {"initialised": False, "comm_seconds": 0.0}


@dataclass(frozen=True)
class World:
    """This process's place: rank in [0, size), size >= 1, local_rank (the GPU index on its node)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise SteerkitError(f"{name}={raw!r} is not an integer; launch with torchrun or set it right") from e


def launched() -> bool:
    """True when the environment describes a world of several processes (torchrun sets WORLD_SIZE)."""
    return _env_int("WORLD_SIZE", 1) > 1


def world() -> World:
    """This process's rank, the world size and its local rank (a world of one when not distributed)."""
    if not _state["initialised"]:
        return World()
    return World(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))


def active() -> bool:
    """True once `init()` joined a process group of more than one process."""
    return bool(_state["initialised"]) and world().size > 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes run folders and shows progress."""
    return world().rank == 0


def timeout_seconds() -> float:
    raw = os.environ.get("STEERKIT_DIST_TIMEOUT")
    try:
        t = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError as e:
        raise SteerkitError(f"STEERKIT_DIST_TIMEOUT={raw!r}: give seconds, e.g. 1800") from e
    if not t > 0:
        raise SteerkitError(f"STEERKIT_DIST_TIMEOUT={raw!r}: give a positive number of seconds")
    return t


def init() -> World:
    """Join the process group the environment describes (no-op for a world of one, or when done).
    Backend: gloo, plus nccl for CUDA tensors when CUDA is available."""
    if _state["initialised"] or not launched():
        return world()
    import datetime

    import torch
    import torch.distributed as dist

    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise SteerkitError(f"WORLD_SIZE is set but {name} is not; launch with torchrun (docs/scale.md)")
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0) % max(1, torch.cuda.device_count()))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_seconds()))
    _state["initialised"] = True
    return world()


def teardown() -> None:
    """Leave the process group (safe to call when not initialised)."""
    if not _state["initialised"]:
        return
    import torch.distributed as dist

    _state["initialised"] = False
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: str) -> str:
    """`cuda` -> `cuda:LOCAL_RANK` in a distributed run (each rank on its own GPU); anything else as is."""
    if active() and device == "cuda":
        return f"cuda:{world().local_rank}"
    return device


def shard(weights: Sequence[float], w: World | None = None) -> list[int]:
    """This rank's indices (ascending) of items with these weights (e.g. token counts), balanced by
    weight: heaviest first, each to the least-loaded rank (ties: the lowest rank). Deterministic, so
    every rank computes the same split without talking; each index goes to exactly one rank."""
    w = w or world()
    if w.size <= 1:
        return list(range(len(weights)))
    load = [0.0] * w.size
    owner = [0] * len(weights)
    for i in sorted(range(len(weights)), key=lambda j: (-float(weights[j]), j)):
        r = min(range(w.size), key=lambda k: (load[k], k))
        owner[i] = r
        load[r] += float(weights[i])
    return [i for i, r in enumerate(owner) if r == w.rank]


def gather(obj: Any) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank 0 (None on the other ranks); `[obj]` alone."""
    if not active():
        return [obj]
    import torch.distributed as dist

    t0 = time.perf_counter()
    out: list[Any] | None = [None] * world().size if is_main() else None
    try:
        dist.gather_object(obj, out, dst=0)
    finally:
        _state["comm_seconds"] += time.perf_counter() - t0
    return out


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (small things: index lists, flags)."""
    if not active():
        return [obj]
    import torch.distributed as dist

    t0 = time.perf_counter()
    out: list[Any] = [None] * world().size
    try:
        dist.all_gather_object(out, obj)
    finally:
        _state["comm_seconds"] += time.perf_counter() - t0
    return out


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if not active():
        return
    import torch.distributed as dist

    t0 = time.perf_counter()
    try:
        dist.barrier()
    finally:
        _state["comm_seconds"] += time.perf_counter() - t0


def comm_seconds() -> float:
    """Wall time this process spent inside collectives (gather, all_gather, barrier) so far."""
    return float(_state["comm_seconds"])


def scaled_progress(done_before: int, mine_total: int, todo_total: int) -> Any:
    """Map this rank's progress (rows done of its own `mine_total`) onto the whole job: rank 0's
    bar shows the job's total, assuming the ranks advance at the same pace (balanced shards)."""

    def scale(done_mine: int) -> int:
        if mine_total <= 0:
            return done_before + todo_total
        return done_before + min(todo_total, round(done_mine * todo_total / mine_total))

    return scale
