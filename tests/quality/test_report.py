"""quality-report end to end on a tiny model run: files, schema, sections, figures, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from steerkit.cli import main
from steerkit.quality.schema import SCHEMA

FIXTURE = Path(__file__).parents[1] / "fixtures" / "corpus_small"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_dir_factory):
    root = tmp_path_factory.mktemp("q")
    model = tiny_dir_factory("qwen3_5")
    out = root / "runs" / "r"
    res = CliRunner().invoke(
        main,
        [
            "extract",
            "--stories",
            str(FIXTURE),
            "--model",
            str(model),
            "--layers",
            "all",
            "--out",
            str(out),
            "--no-preflight",
            "--no-cache",
        ],
    )
    assert res.exit_code == 0, res.output
    return out


def test_report_files_schema_sections(run):
    res = CliRunner().invoke(main, ["quality-report", str(run), "--folds", "3"])
    assert res.exit_code == 0, res.output
    assert "best layer" in res.output
    report = json.loads((run / "quality.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["settings"]["k_folds"] == 3 and report["best_layer"] in (0, 1, 2, 3)
    # hybrid: Gated DeltaNet blocks 0-2 and the attention block 3 all carry per-head results
    for layer in ("0", "3"):
        e = report["layers"][layer]["concepts"]["calm"]
        assert report["layers"][layer]["top_heads_used"] == 1  # a quarter of 4 heads
        assert len(e["heads"]["top"]) == 1 and 0 < e["heads"]["concentration"] <= 1
        assert e["single_neuron"]["neuron"] >= 0
        null = e["first_pc_null"]
        assert 0 < null["median"] <= null["p95"] < 1 and 0 <= null["percentile"] <= 1
    assert isinstance(report["notes"], list)
    md = (run / "quality.md").read_text()
    for section in (
        "## Triage",
        "## Held-out readout by layer",
        "## Concepts at layer",
        "## Redundancy",
        "## Per-head decomposition",
        "## Geometry",
        "## Lowest-agreement stories",
        "what makes X different from Y",
    ):
        assert section in md, section
    for png in ("cosine_heatmap.png", "pca_valence.png", "heldout_by_layer.png", "head_concentration.png"):
        assert (run / png).stat().st_size > 5000


def test_latest_run_is_default(run, monkeypatch):
    monkeypatch.setenv("STEERKIT_RUNS", str(run.parent))
    res = CliRunner().invoke(main, ["quality-report", "--folds", "3"])
    assert res.exit_code == 0, res.output
    assert str(run) in res.output


def _one_line_error(res, needle):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.output


def _copy_run(run, dest):
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("quality.*", "*.png"))


def test_bad_inputs(run, tmp_path, monkeypatch):
    _one_line_error(CliRunner().invoke(main, ["quality-report", str(tmp_path)]), "is not a run folder")
    no_acts = tmp_path / "no_acts"
    _copy_run(run, no_acts)
    (no_acts / "activations.safetensors").unlink()
    _one_line_error(CliRunner().invoke(main, ["quality-report", str(no_acts)]), "pass --model")
    version = tmp_path / "version"
    _copy_run(run, version)
    meta = json.loads((version / "readout.json").read_text())
    meta["format_version"] = 7
    (version / "readout.json").write_text(json.dumps(meta))
    _one_line_error(CliRunner().invoke(main, ["quality-report", str(version)]), "format_version")
    monkeypatch.setenv("STEERKIT_RUNS", str(tmp_path / "empty"))
    _one_line_error(CliRunner().invoke(main, ["quality-report"]), "steerkit extract --stories corpora/")
    assert not (no_acts / "quality.json").exists() and not (version / "quality.json").exists()


def test_missing_activations_recomputed_with_model(run, tmp_path, tiny_dir_factory):
    copy = tmp_path / "recap"
    _copy_run(run, copy)
    before = load_file(copy / "activations.safetensors")
    (copy / "activations.safetensors").unlink()
    model = tiny_dir_factory("qwen3_5")
    res = CliRunner().invoke(main, ["quality-report", str(copy), "--model", str(model), "--folds", "3"])
    assert res.exit_code == 0, res.output
    after = load_file(copy / "activations.safetensors")
    assert before.keys() == after.keys()
    for k in before:
        assert (before[k] - after[k]).abs().max() < 1e-5, k
    assert (copy / "quality.json").is_file()


def test_too_many_folds_and_a_foreign_model_are_one_line_errors(run, tmp_path, tiny_dir_factory):
    """--folds beyond the labelled texts, and recapturing with a model that is not the run's."""
    import shutil

    _one_line_error(CliRunner().invoke(main, ["quality-report", str(run), "--folds", "1000"]), "use --folds <=")
    texts = json.loads((run / "texts.json").read_text())
    texts = texts["texts"] if isinstance(texts, dict) else texts
    single = [t for t in texts if len(t["concepts"]) == 1]
    scen = {next((s["scenario"] for s in t["sources"] if s.get("scenario")), None) for t in single} - {None}
    n_groups = sum(1 for t in single if not any(s.get("scenario") for s in t["sources"])) + len(scen)
    assert n_groups < len(single)  # paired scenarios: fewer groups than texts
    res = CliRunner().invoke(main, ["quality-report", str(run), "--folds", str(n_groups + 1)])
    _one_line_error(res, f"use --folds <= {n_groups}")  # folds deal whole scenarios
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "activations.safetensors").unlink()
    (copy / "quality.json").unlink(missing_ok=True)
    other = tiny_dir_factory("llama", seed=1)
    res = CliRunner().invoke(main, ["quality-report", str(copy), "--model", str(other)])
    _one_line_error(res, "is not the model this run was extracted with")
    assert not (copy / "activations.safetensors").exists() and not (copy / "quality.json").exists()


def test_recaptured_centered_run_keeps_its_neutral_activations(tmp_path, tiny_dir_factory):
    """A recaptured `centered` run used to lose its neutral activations, so its held-out readout
    silently fell back to CAA; now the recomputed report equals the original one."""
    model = tiny_dir_factory("llama")
    out = tmp_path / "centered"
    args = ["extract", "--stories", str(FIXTURE), "--model", str(model), "--layers", "1,3", "--method", "centered",
            "--out", str(out), "--no-preflight", "--no-cache"]  # fmt: skip
    assert CliRunner().invoke(main, args).exit_code == 0
    assert CliRunner().invoke(main, ["quality-report", str(out), "--folds", "3"]).exit_code == 0
    first = json.loads((out / "quality.json").read_text())
    before = load_file(out / "activations.safetensors")
    assert any(k.startswith("neutral.") for k in before)
    (out / "activations.safetensors").unlink()
    res = CliRunner().invoke(main, ["quality-report", str(out), "--model", str(model), "--folds", "3"])
    assert res.exit_code == 0, res.output
    after = load_file(out / "activations.safetensors")
    assert before.keys() == after.keys()
    second = json.loads((out / "quality.json").read_text())
    for la in ("1", "3"):
        assert second["layers"][la]["heldout"] == first["layers"][la]["heldout"]


def test_heldout_keeps_paired_scenarios_in_one_fold(run):
    """The report's held-out readout (vectors and probe) equals held_out_readout recomputed here with
    folds that keep each paired scenario's texts together, grouped from texts.json independently."""
    from steerkit.quality.heldout import held_out_readout, stratified_folds
    from steerkit.quality.report import load_run
    from steerkit.vectors.probe import fit_readout_probe

    res = CliRunner().invoke(main, ["quality-report", str(run), "--folds", "3"])
    assert res.exit_code == 0, res.output
    report = json.loads((run / "quality.json").read_text())
    assert report["settings"]["fold_groups"] == "paired scenario"
    data = load_run(run)
    names = data.vectors.concepts
    labels = torch.tensor([names.index(t["concepts"][0]) if len(t["concepts"]) == 1 else -1 for t in data.texts])
    pos = torch.tensor([[c in t["concepts"] for t in data.texts] for c in names])
    scen = [next((s["scenario"] for s in t["sources"] if s.get("scenario")), None) for t in data.texts]
    groups = torch.tensor([hash(s) if s else i + 10**6 for i, s in enumerate(scen)])
    assert len({s for s in scen if s}) >= 2  # the fixture has paired scenarios: the grouping matters
    fold = stratified_folds(labels, 3, seed=0, groups=groups)
    for s in {s for s in scen if s}:
        f = {int(fold[i]) for i, x in enumerate(scen) if x == s and labels[i] >= 0}
        assert len(f) == 1  # a scenario is never split
    for la in (1, 3):
        acts = data.resid[la]
        vec = held_out_readout(acts, labels, len(names), 3, seed=0, groups=groups)
        probe = held_out_readout(acts, labels, len(names), 3, seed=0, groups=groups,
                                 scorer_fn=lambda tr, a=acts: fit_readout_probe(a[tr], pos[:, tr], groups[tr],
                                                                                calibrate=False).log_probs)  # fmt: skip
        h = report["layers"][str(la)]["heldout"]
        assert h["reader"] == "probe"
        assert h["top1"] == pytest.approx(probe.top1_overall, abs=1e-4)
        assert h["vectors_top1"] == pytest.approx(vec.top1_overall, abs=1e-4)
        assert h["vectors_top3"] == pytest.approx(vec.top3_overall, abs=1e-4)
