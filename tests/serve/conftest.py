"""Fixtures for the server tests: a tiny random Llama checkpoint and a vectors run extracted from the
small fixture corpus (real extract, real files), shared by the module."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from steerkit.cli import main

FIXTURE = Path(__file__).parents[1] / "fixtures" / "corpus_small"


@pytest.fixture(scope="session")
def serve_model_dir(tiny_dir_factory):
    return tiny_dir_factory("llama")


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory, serve_model_dir):
    out = tmp_path_factory.mktemp("serve-runs") / "run"
    args = ["extract", "--stories", str(FIXTURE), "--model", str(serve_model_dir), "--layers", "1,3", "--out",
            str(out), "--allow-untrained", "--no-cache"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def serve_lm(serve_model_dir):
    from steerkit.models import load

    return load(str(serve_model_dir))


@pytest.fixture(scope="session")
def serve_vectors(serve_run):
    from steerkit.vectors import ConceptVectors

    return ConceptVectors.load(serve_run)
