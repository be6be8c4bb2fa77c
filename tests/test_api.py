"""The notebook API: the docs/api.md example runs as written (tiny model and smollm2-135m), and
the API's objects agree with the CLI's files and with hand computations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import steerkit as sk
from steerkit.vectors import methods

DOC = Path(__file__).parents[1] / "docs" / "api.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/api.md has no python example"
    return blocks[0]


def _run_example(model_spec: str, layers: list[int]) -> dict:
    code = _example().replace('"smollm2-135m"', repr(model_spec)).replace("layers=[10, 15]", f"layers={layers}")
    code = code.replace("layers=[15]", f"layers=[{layers[-1]}]")
    scope: dict = {}
    exec(compile(code, str(DOC), "exec"), scope)  # noqa: S102 - our own documentation
    return scope


def test_all_names_exported():
    assert set(sk.__all__) >= {"load", "extract_vectors", "quality_report", "steer", "read", "ConceptVectors"}
    for name in sk.__all__:
        assert getattr(sk, name) is not None
    with pytest.raises(AttributeError):
        sk.no_such_name  # noqa: B018


def test_doc_example_runs_on_a_tiny_model(tiny_dir_factory):
    scope = _run_example(str(tiny_dir_factory("llama")), [1, 3])
    vecs, report = scope["vecs"], scope["report"]
    assert vecs.concepts == ["calm", "anxious", "content"] and vecs.layers == [1, 3]
    assert isinstance(report, sk.QualityReport) and report.best_layer in (1, 3)
    assert set(report.best.concepts) == {"calm", "anxious", "content"}
    assert report.to_json()["layers"][str(report.best_layer)]["heldout"]["top3"] == report.best.heldout_top3
    assert isinstance(scope["out"], str)
    assert [c for c, _ in scope["reading"].top(3)] and len(scope["reading"].tokens) > 0
    diff = scope["calm_not_anxious"]
    for la in vecs.layers:  # arithmetic on raw vectors, operands untouched
        want = vecs.raw(la)[0] - vecs.raw(la)[1]
        torch.testing.assert_close(diff.raw(la)[0], want)
        torch.testing.assert_close(scope["half"].raw(la)[0], 0.5 * vecs.raw(la)[0])
        torch.testing.assert_close(scope["mixed"].raw(la)[0], 0.5 * vecs.raw(la)[0] + 0.5 * vecs.raw(la)[2])
    assert diff.concepts == ["calm-anxious"] and scope["mixed"].concepts == ["serene"]


@pytest.mark.real
def test_doc_example_runs_on_smollm(smollm, monkeypatch):
    import steerkit.models as models

    monkeypatch.setattr(models, "load", lambda spec, **kw: smollm)
    scope = _run_example("smollm2-135m", [10, 15])
    assert scope["vecs"].hidden_size == 576
    assert scope["report"].best_layer in (10, 15)
    assert len(scope["out"]) > 0


def test_extract_vectors_equals_capture_plus_method(tiny_lm_factory):
    lm = tiny_lm_factory("qwen2")
    texts = ["a calm lake", "a quiet room", "the alarm rang", "my heart raced", "a plain table"]
    labels = ["calm", "calm", "anxious", "anxious", None]
    vecs = sk.extract_vectors(lm, texts, labels, layers="1,-1", method="caa")
    from steerkit.capture import capture

    res = capture(lm, texts, [1, lm.adapter.n_blocks(lm.model) - 1], pooling=methods_pooling())
    pos = torch.tensor([[True, True, False, False, False], [False, False, True, True, False]])
    for la in vecs.layers:
        unit, norms = methods.caa(methods.MethodInputs(res.resid[la], pos, ~pos))
        torch.testing.assert_close(vecs.vectors[la], unit)
        torch.testing.assert_close(vecs.norms[la], norms)
        torch.testing.assert_close(vecs.centers[la], res.resid[la].mean(0))


def methods_pooling():
    from steerkit.vectors.extract import DEFAULT_POOLING

    return DEFAULT_POOLING


def test_extract_vectors_bad_input(tiny_lm_factory):
    lm = tiny_lm_factory("qwen2")
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        sk.extract_vectors(lm, ["a", "b"], ["x"])
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        sk.extract_vectors(lm, ["a", "b"], ["x", "x"])
    with pytest.raises(ValueError, match="unknown method"):
        sk.extract_vectors(lm, ["a", "b"], ["x", "y"], method="nope")
