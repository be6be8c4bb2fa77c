"""Shared fixtures: offline mode, seeds, one tiny random model per family, the real models."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402
import tiny_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_RWKV = ROOT.parent / "shared" / "models" / "tiny-rwkv-4-660k"
FAMILIES = list(tiny_models.CONFIGS)

torch.set_num_threads(2)


def absent(msg: str) -> None:
    """Skip for something this machine lacks; under CI (CI set) fail instead: CI must provide it."""
    if os.environ.get("CI"):
        pytest.fail(msg + " (CI must provide it)")
    pytest.skip(msg)


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_tok():
    return tiny_tokenizer.build()


@pytest.fixture(scope="session")
def tiny_dir_factory(tmp_path_factory, tiny_tok):
    """(family, seed=0) -> a folder holding that tiny random model and the tiny tokenizer, as a user's
    local checkpoint would (saved once per session; tests must not write into it)."""
    cache: dict[tuple[str, int], Path] = {}

    def make(family: str, seed: int = 0) -> Path:
        if (family, seed) not in cache:
            d = tmp_path_factory.mktemp("models") / f"tiny-{family}-{seed}"
            tiny_models.build(family, seed=seed).save_pretrained(d)
            tiny_tok.save_pretrained(d)
            cache[(family, seed)] = d
        return cache[(family, seed)]

    return make


@pytest.fixture(scope="session")
def tiny_lm_factory(tiny_tok):
    """family -> LoadedModel wrapping a fresh tiny random model (cached per session)."""
    from steerkit.models import from_model

    cache: dict[str, object] = {}

    def make(family: str):
        if family not in cache:
            cache[family] = from_model(tiny_models.build(family), tiny_tok, spec=f"tiny-{family}")
        return cache[family]

    return make


@pytest.fixture(scope="session")
def smollm():
    """The real default model (pulled by `make test` before pytest runs)."""
    from steerkit.models import load, zoo

    if not zoo.is_present("smollm2-135m"):
        absent("smollm2-135m is not cached; run `steerkit models pull smollm2-135m`")
    return load("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():
    """The real Gemma 3 270M (pulled by `make test` before pytest runs, like smollm2-135m)."""
    from steerkit.models import load, zoo

    if not zoo.is_present("gemma3-270m"):
        absent("gemma3-270m is not cached; run `steerkit models pull gemma3-270m`")
    return load("gemma3-270m")


@pytest.fixture(scope="session")
def shared_rwkv():
    if not SHARED_RWKV.is_dir():
        absent("../shared/models/tiny-rwkv-4-660k is absent")
    from steerkit.models import load

    return load(str(SHARED_RWKV))
