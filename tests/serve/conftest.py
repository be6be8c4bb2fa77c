"""Fixtures for the server tests: a tiny random Llama checkpoint and a vectors run extracted from the
small fixture corpus (real extract, real files), shared by the module."""

from __future__ import annotations

import pytest
from tiny_runs import extract


@pytest.fixture(scope="session")
def serve_model_dir(tiny_dir_factory):
    return tiny_dir_factory("llama")


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory, serve_model_dir):
    return extract(serve_model_dir, tmp_path_factory.mktemp("serve-runs") / "run", "--no-cache")


@pytest.fixture(scope="session")
def serve_lm(serve_model_dir):
    from steerkit.models import load

    return load(str(serve_model_dir))


@pytest.fixture(scope="session")
def serve_vectors(serve_run):
    from steerkit.vectors import ConceptVectors

    return ConceptVectors.load(serve_run)
