"""steerkit.validate: its JSON Schema subset agrees with jsonschema (the oracle) on valid files and
on random mutations of them; decoding errors name the file and line; path kinds; check_finite."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steerkit import validate as v
from steerkit.errors import SteerkitError

VALID = {
    "readout.json": {
        "format_version": 1, "concepts": ["calm", "sad"], "layers": [1, 3], "hidden_size": 32, "dtype": "float32",
        "model": {"spec": "tiny", "n_blocks": 4}, "method": "caa", "pooling": "mean_after:1", "corpus": {"n_texts": 9},
    },
    "run.json": {"kind": "extract", "created": "2026-01-01T00:00:00", "created_unix": 1.5, "stats": {"n": 3}},
    "metrics.jsonl": {"step": 3, "loss": 2.25, "R": 0.5, "events": ["lr_reduced"]},
    "checkpoint meta.json": {
        "format": 1, "step": 4, "sha256": {"state.safetensors": "ab"}, "metrics": {}, "controller": {},
        "rng": {"python": [3, [1], None], "numpy": ["MT19937", [1], 0, 0, 0.0]}, "scalars": {},
    },
    "phase_core.json": {"kind": "train-phase", "sha256": "ab", "tensors": ["phase.core.w"], "step": 4},
    "train-phase config.json": {"kind": "train-phase", "config": {"lr": 0.5}, "resolved": {}},
    "prompts.jsonl": {"prompt": "Once", "continuation": None},
    "quality.json": {"best_layer": 3, "layers": {}},
    "texts.json": [{"sha256": "ab", "concepts": ["calm"], "sources": [{"file": "a.txt", "line": 1}]}],
}  # fmt: skip

# JSON values without NaN and without integral floats (jsonschema counts 1.0 as an integer, steerkit does not)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-5, 40)
    | st.text(max_size=4)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer())
)
JSON = st.recursive(
    _SCALARS,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=3), kids, max_size=3),
    max_leaves=8,
)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, x in doc.items():
            yield from _paths(x, (*prefix, k))
    elif isinstance(doc, list):
        for i, x in enumerate(doc):
            yield from _paths(x, (*prefix, i))


def test_every_schema_is_a_valid_json_schema_and_accepts_what_steerkit_writes():
    assert set(VALID) == set(v.SCHEMAS)
    for name, schema in v.SCHEMAS.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert v.schema_problem(VALID[name], schema) is None, name
        jsonschema.validate(VALID[name], schema)


@pytest.mark.parametrize("name", sorted(VALID))
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_subset_agrees_with_jsonschema_on_mutations(name, data):
    doc = copy.deepcopy(VALID[name])
    path = data.draw(st.sampled_from(list(_paths(doc))))
    how = data.draw(st.sampled_from(["replace", "delete"]))
    if not path:
        doc = data.draw(JSON)
    else:
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if how == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(JSON)
    ours = v.schema_problem(doc, v.SCHEMAS[name]) is None
    theirs = jsonschema.Draft202012Validator(v.SCHEMAS[name]).is_valid(doc)
    assert ours == theirs, (doc, v.schema_problem(doc, v.SCHEMAS[name]))


def test_numbers_are_finite_and_integers_are_not_booleans():
    schema = {"type": "object", "properties": {"x": {"type": "number"}, "n": {"type": "integer"}}}
    assert "finite number" in (v.schema_problem({"x": float("nan")}, schema) or "")
    assert "finite number" in (v.schema_problem({"x": float("inf")}, schema) or "")
    assert "integer" in (v.schema_problem({"n": True}, schema) or "")
    assert v.schema_problem({"x": 1, "n": 2}, schema) is None


def test_decode_errors_name_file_and_line(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": \xff}\n')
    with pytest.raises(SteerkitError, match=r"f.jsonl:3: not UTF-8 \(invalid byte at offset 24\)"):
        v.read_jsonl(p)
    p.write_bytes(b'{"a": 1}\n{"a": }\n{"a": 3}\n')
    with pytest.raises(SteerkitError, match=r"f.jsonl:2: not valid JSON \(Expecting value at column 7\)"):
        v.read_jsonl(p)
    p.write_bytes(b'{"a": 1}\n{"a": 2')  # cut by a crash: skipped; not when partial_last=False
    assert [o for _, o in v.read_jsonl(p)] == [{"a": 1}]
    with pytest.raises(SteerkitError, match="f.jsonl:2"):
        v.read_jsonl(p, partial_last=False)
    j = tmp_path / "f.json"
    j.write_text('{\n  "a": 1,\n  "b": [1, 2,]\n}')
    with pytest.raises(SteerkitError, match=r"f.json:3: not valid JSON"):
        v.read_json(j)
    j.write_text("[" * 100_000)
    with pytest.raises(SteerkitError, match="f.json"):
        v.read_json(j)


def test_path_kinds(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SteerkitError, match="thing .*/f is a file, expected a folder; hint"):
        v.expect_dir(tmp_path / "f", "thing", hint="hint")
    with pytest.raises(SteerkitError, match="is a folder, expected a file"):
        v.expect_file(tmp_path, "thing")
    with pytest.raises(SteerkitError, match="does not exist"):
        v.expect_dir(tmp_path / "missing", "thing")
    with pytest.raises(SteerkitError, match=r"its parent .*/f is a file"):
        v.check_out_dir(tmp_path / "f" / "a" / "b", "--out")
    assert v.check_out_dir(tmp_path / "new" / "a", "--out") == tmp_path / "new" / "a"


def test_check_finite_counts_and_names():
    t = torch.zeros(3, 4)
    t[0, 1], t[2, 2] = float("nan"), float("-inf")
    with pytest.raises(SteerkitError, match=r"x.safetensors: w holds 2 non-finite value\(s\)"):
        v.check_finite(t, "w", "x.safetensors")
    assert v.check_finite(torch.arange(3), "ints") is not None  # integer tensors are always finite


def test_text_size_limit():
    v.check_text_size("a" * v.MAX_TEXT_CHARS, "x")
    with pytest.raises(SteerkitError, match="x:3: a text of 1,000,001 characters"):
        v.check_text_size("a" * (v.MAX_TEXT_CHARS + 1), "x:3")


def test_nonfinite_fields_walks_nested_dataclasses():
    from steerkit.phase import CouplingConfig, PhaseConfig
    from steerkit.training import TrainConfig

    cfg = TrainConfig.__new__(TrainConfig)  # bypass __post_init__ to inspect the walker alone
    for f in TrainConfig.__dataclass_fields__.values():
        object.__setattr__(cfg, f.name, getattr(TrainConfig(), f.name))
    object.__setattr__(cfg, "phase", PhaseConfig.__new__(PhaseConfig))
    for f in PhaseConfig.__dataclass_fields__.values():
        object.__setattr__(cfg.phase, f.name, getattr(PhaseConfig(), f.name))
    object.__setattr__(cfg.phase, "K", float("inf"))
    object.__setattr__(cfg, "r_band", (0.8, float("nan")))
    object.__setattr__(cfg, "coupling", CouplingConfig())
    assert v.nonfinite_fields(cfg) == ["phase.K", "r_band"]
    assert json.dumps(v.nonfinite_fields(TrainConfig())) == "[]"
