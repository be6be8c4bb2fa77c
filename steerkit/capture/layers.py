"""Layer specifications: ints, negative ints, fractions of depth, ranges, `all`."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import LayerSpecError


def parse_layers(spec: str | int | float | Iterable[int | float | str] | None, n_blocks: int) -> list[int]:
    """Resolve a layer spec to sorted unique block indices in [0, n_blocks).

    Accepted items (comma-separated in a string): `7` (block 7), `-1` (last block), `0.5` (a
    fraction of depth in (0, 1): round(0.5 * (n_blocks - 1))), `4:10` or `4:10:2` (Python-style
    half-open range, negative ends allowed), `all`.
    """
    if spec is None:
        raise LayerSpecError("no layers given; use e.g. --layers 12, --layers 0.5, --layers 4:10 or --layers all")
    items: list[int | float | str]
    if isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    elif isinstance(spec, int | float):
        items = [spec]
    else:
        items = list(spec)
    if not items:
        raise LayerSpecError("empty layer specification")
    out: set[int] = set()
    for item in items:
        out.update(_one(item, n_blocks))
    return sorted(out)


def _check(i: int, n: int, raw: object) -> int:
    j = i + n if i < 0 else i
    if not 0 <= j < n:
        raise LayerSpecError(f"layer {raw} out of range: the model has {n} blocks (0..{n - 1})")
    return j


def _one(item: int | float | str, n: int) -> list[int]:
    if isinstance(item, bool):
        raise LayerSpecError(f"invalid layer {item!r}")
    if isinstance(item, int):
        return [_check(item, n, item)]
    if isinstance(item, float):
        return [_fraction(item, n, item)]
    s = item.strip().lower()
    if s == "all":
        return list(range(n))
    if ":" in s:
        parts = s.split(":")
        if len(parts) not in (2, 3):
            raise LayerSpecError(f"invalid layer range {item!r}; use start:stop or start:stop:step")
        try:
            nums = [int(p) if p else None for p in parts]
        except ValueError as e:
            raise LayerSpecError(f"invalid layer range {item!r}; use integers like 4:10") from e
        start, stop = nums[0], nums[1]
        step = nums[2] if len(nums) == 3 else None
        for v in (start, stop):
            if v is not None and not -n <= v <= n:
                raise LayerSpecError(f"layer {v} out of range: the model has {n} blocks (0..{n - 1})")
        idx = list(range(n))[slice(start, stop, step)]
        if not idx:
            raise LayerSpecError(f"layer range {item!r} selects no block of {n}")
        return idx
    try:
        if any(c in s for c in ".e") and not s.lstrip("-").isdigit():
            return [_fraction(float(s), n, item)]
        return [_check(int(s), n, item)]
    except ValueError as e:
        raise LayerSpecError(f"invalid layer {item!r}; use an int, a fraction like 0.5, a range 4:10 or all") from e


def _fraction(f: float, n: int, raw: object) -> int:
    if not 0.0 <= f <= 1.0:
        raise LayerSpecError(f"layer fraction {raw} must lie in [0, 1] (fraction of depth)")
    return round(f * (n - 1))


def default_spread(n_blocks: int, lo: float = 0.25, hi: float = 0.85, count: int = 6) -> list[int]:
    """`count` blocks evenly spread from lo to hi of the depth (the extract default)."""
    if n_blocks <= count:
        return list(range(n_blocks))
    return sorted({round((lo + (hi - lo) * k / (count - 1)) * (n_blocks - 1)) for k in range(count)})


def depth_label(layer: int, n_blocks: int) -> str:
    """'layer 20 (67%)': the relative depth of a block, for logs."""
    pct = round(100 * layer / max(1, n_blocks - 1))
    return f"layer {layer} ({pct}%)"
