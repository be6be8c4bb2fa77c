"""Block specifications: the one parser of `--layers`, `--unfreeze`, `--lora-blocks`, `--layer`.

A spec is parsed once (its syntax checked before any model loads) into a `BlockSpec`, then resolved
against a model's depth into sorted unique block indices. Items (comma-separated in a string):
`7` (block 7), `-1` (last block), `0.5` (a fraction of depth in [0, 1]: round(0.5 * (n_blocks - 1))),
`4:10` or `4:10:2` (Python-style half-open range, negative ends allowed: `10:-1` is blocks 10 up to
but not including the last), `all`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import LayerSpecError

Item = int | float | str | tuple[int | None, int | None, int | None]


@dataclass(frozen=True)
class BlockSpec:
    """A parsed block spec; `resolve(n_blocks)` gives the indices. `text` is what the user wrote."""

    items: tuple[Item, ...]
    text: str = ""

    @classmethod
    def parse(cls, spec: str | int | float | Iterable[int | float | str] | BlockSpec) -> BlockSpec:
        if isinstance(spec, BlockSpec):
            return spec
        raw: list[int | float | str]
        if isinstance(spec, bool):
            raise LayerSpecError(f"invalid layer {spec!r}")
        if isinstance(spec, str):
            raw = [s.strip() for s in spec.split(",") if s.strip()]
        elif isinstance(spec, int | float):
            raw = [spec]
        else:
            raw = list(spec)
        if not raw:
            raise LayerSpecError("empty layer specification; use e.g. 12, -1, 0.5, 4:10 or all")
        return cls(tuple(_parse_item(x) for x in raw), spec if isinstance(spec, str) else ",".join(map(str, raw)))

    def resolve(self, n_blocks: int) -> list[int]:
        """Sorted unique block indices in [0, n_blocks); LayerSpecError when out of range."""
        out: set[int] = set()
        for item in self.items:
            out.update(_resolve_item(item, n_blocks))
        return sorted(out)


def parse_layers(spec: str | int | float | Iterable[int | float | str] | BlockSpec | None, n_blocks: int) -> list[int]:
    """Parse and resolve a block spec against a model with `n_blocks` blocks."""
    if spec is None:
        raise LayerSpecError("no layers given; use e.g. --layers 12, --layers 0.5, --layers 4:10 or --layers all")
    return BlockSpec.parse(spec).resolve(n_blocks)


def check_blocks(blocks: Sequence[int], n_blocks: int) -> list[int]:
    """Already-parsed block indices (negative count from the end) -> sorted unique, range-checked."""
    if isinstance(blocks, str | BlockSpec) or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks):
        raise TypeError(f"blocks must be a sequence of ints (use parse_layers for specs), got {blocks!r}")
    if not blocks:
        raise LayerSpecError("no layers given")
    return sorted({_check(b, n_blocks, b) for b in blocks})


def _parse_item(item: int | float | str) -> Item:
    """Syntax only: an int, a fraction, 'all' or a (start, stop, step) range."""
    if isinstance(item, bool):
        raise LayerSpecError(f"invalid layer {item!r}")
    if isinstance(item, int):
        return item
    if isinstance(item, float):
        return _fraction_ok(item, item)
    s = item.strip().lower()
    if s == "all":
        return "all"
    if ":" in s:
        parts = s.split(":")
        if len(parts) not in (2, 3):
            raise LayerSpecError(f"invalid layer range {item!r}; use start:stop or start:stop:step")
        try:
            nums = [int(p) if p.strip() else None for p in parts]
        except ValueError as e:
            raise LayerSpecError(f"invalid layer range {item!r}; use integers like 4:10 or 10:-1") from e
        if len(nums) == 3 and nums[2] is not None and nums[2] <= 0:
            raise LayerSpecError(f"invalid layer range {item!r}: the step must be positive")
        return (nums[0], nums[1], nums[2] if len(nums) == 3 else None)
    try:
        if any(c in s for c in ".e") and not s.lstrip("-").isdigit():
            return _fraction_ok(float(s), item)
        return int(s)
    except ValueError as e:
        raise LayerSpecError(f"invalid layer {item!r}; use an int, a fraction like 0.5, a range 4:10 or all") from e


def _fraction_ok(f: float, raw: object) -> float:
    if not 0.0 <= f <= 1.0:  # also rejects nan
        raise LayerSpecError(f"layer fraction {raw} must lie in [0, 1] (fraction of depth)")
    return f


def _check(i: int, n: int, raw: object) -> int:
    j = i + n if i < 0 else i
    if not 0 <= j < n:
        raise LayerSpecError(f"layer {raw} out of range: the model has {n} blocks (0..{n - 1})")
    return j


def _resolve_item(item: Item, n: int) -> list[int]:
    if isinstance(item, int):
        return [_check(item, n, item)]
    if isinstance(item, float):
        return [round(item * (n - 1))]
    if item == "all":
        return list(range(n))
    assert isinstance(item, tuple)
    start, stop, step = item
    for v in (start, stop):
        if v is not None and not -n <= v <= n:
            raise LayerSpecError(f"layer {v} out of range: the model has {n} blocks (0..{n - 1})")
    idx = list(range(n))[slice(start, stop, step)]
    if not idx:
        text = ":".join("" if v is None else str(v) for v in (start, stop)) + (f":{step}" if step else "")
        raise LayerSpecError(f"layer range {text} selects no block of {n}")
    return idx


def default_spread(n_blocks: int, lo: float = 0.25, hi: float = 0.85, count: int = 8) -> list[int]:
    """`count` blocks evenly spread from lo to hi of the depth (extract's default: 8)."""
    if n_blocks <= count:
        return list(range(n_blocks))
    return sorted({round((lo + (hi - lo) * k / (count - 1)) * (n_blocks - 1)) for k in range(count)})


def depth_label(layer: int, n_blocks: int) -> str:
    """'layer 20 (67%)': the relative depth of a block, for logs."""
    pct = round(100 * layer / max(1, n_blocks - 1))
    return f"layer {layer} ({pct}%)"
