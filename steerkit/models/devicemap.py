"""Models larger than one device: accelerate device maps, memory limits and CPU / disk offload.

`--device-map` is `auto`, `balanced`, `balanced_low_0`, `sequential` (accelerate plans the map, within
`--max-memory`, spilling to CPU RAM and then disk) or a JSON file {module name: device} with devices
0, "cuda:1", "mps", "cpu" (offloaded to CPU RAM, run on the main device) or "disk". Everything here
is checked before a weight is read, so a bad map is a one-line error that writes nothing.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
DeviceMap = str | dict[str, int | str]
MaxMemory = dict[int | str, int | str]


def parse_device_map(value: str | dict[str, Any]) -> DeviceMap:
    """A strategy name, or the {module: device} dict of a JSON file (or a dict given directly)."""
    if isinstance(value, dict):
        data: Any = value
        where = "the device map"
    elif value in STRATEGIES:
        return value
    else:
        p = Path(value)
        if p.suffix != ".json" or not p.is_file():
            raise ModelLoadError(
                f"--device-map {value!r}: give {', '.join(STRATEGIES)} or an existing FILE.json "
                '({"model.layers.0": 0, ..., "lm_head": "cpu"})'
            )
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"--device-map {p}: not valid JSON ({e}); write {{module name: device}}") from e
        where = str(p)
    if not isinstance(data, dict) or not data:
        raise ModelLoadError(f"{where}: a device map is a non-empty JSON object {{module name: device}}")
    out: dict[str, int | str] = {}
    for name, dev in data.items():
        if isinstance(dev, bool) or not isinstance(dev, int | str) or (isinstance(dev, int) and dev < 0):
            raise ModelLoadError(f"{where}: device {dev!r} of {name!r} is not a GPU index, 'cuda:N', 'cpu' or 'disk'")
        out[str(name)] = dev
    return out


_SIZE = re.compile(r"^\s*(\d+(\.\d+)?)\s*([KMGT]i?B)?\s*$", re.IGNORECASE)


def parse_max_memory(value: str) -> MaxMemory:
    """'0=20GiB,1=20GiB,cpu=60GiB' -> {0: '20GiB', 1: '20GiB', 'cpu': '60GiB'} (sizes as accelerate reads them)."""
    out: MaxMemory = {}
    for item in (s.strip() for s in value.split(",") if s.strip()):
        dev, sep, size = item.partition("=")
        dev, size = dev.strip(), size.strip()
        if not sep or not _SIZE.match(size):
            raise ModelLoadError(
                f"--max-memory {item!r}: use DEVICE=SIZE, e.g. 0=20GiB,1=20GiB,cpu=60GiB (sizes in B, KB, MB, GiB, ...)"
            )
        key: int | str = int(dev) if dev.isdigit() else dev
        if isinstance(key, str) and key not in ("cpu", "mps", "disk") and not re.fullmatch(r"cuda:\d+", key):
            raise ModelLoadError(f"--max-memory {item!r}: the device is a GPU index, 'cpu', 'mps' or 'disk'")
        if isinstance(key, str) and key.startswith("cuda:"):
            key = int(key.split(":")[1])
        out[key] = size if not size.isdigit() else int(size)
    if not out:
        raise ModelLoadError("--max-memory is empty; use e.g. 0=20GiB,cpu=60GiB")
    return out


def map_devices(device_map: DeviceMap) -> list[str]:
    """The torch devices a map names (GPU indices as cuda:N), without 'disk'; for a strategy: none."""
    if isinstance(device_map, str):
        return []
    devs = {f"cuda:{d}" if isinstance(d, int) else d for d in device_map.values()}
    return sorted(d for d in devs if d != "disk")


def check_modules(device_map: DeviceMap, model: Any, spec: str) -> None:
    """Every key names a module of `model` ('' = the whole model) and every parameter is placed.
    `model` may be a skeleton on the meta device (no weights)."""
    if isinstance(device_map, str):
        return
    modules = {name for name, _ in model.named_modules()}
    for key in device_map:
        if key not in modules:
            close = difflib.get_close_matches(key, sorted(modules - {""}), n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ModelLoadError(f"the device map names module {key!r}, which model {spec} does not have{hint}")
    for name, _ in model.named_parameters():
        parts = name.split(".")
        if not any(".".join(parts[:i]) in device_map for i in range(len(parts))):
            raise ModelLoadError(
                f"the device map places no module holding {name!r} (model {spec}); map it or one of its parents"
            )


def skeleton(where: Path | str, gguf_file: str | None, trust_remote_code: bool) -> Any:
    """The model's module tree on the meta device, from its config alone (no weights read)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(where, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
