"""`steerkit steer-eval` end to end on a tiny model: the files, the latest extract run as default,
resume from the row cache with the same numbers, bad input (one line, exit 2, nothing written),
and `steerkit steer --concept NAME` taking the run's operating point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from steerkit.cli import main

FIXTURE = Path(__file__).parents[2] / "fixtures" / "corpus_small"
FAST = ["--alphas", "0,4", "--layers", "1,2", "--seeds", "2", "--max-new-tokens", "6", "--random-draws", "3"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_dir_factory):
    root = tmp_path_factory.mktemp("se")
    model = tiny_dir_factory("llama")
    run = root / "runs" / "r1"
    args = ["extract", "--stories", str(FIXTURE), "--model", str(model), "--layers", "1,2,3", "--out", str(run),
            "--allow-untrained", "--no-cache"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    prompts = root / "prompts.txt"
    prompts.write_text("The cat sat on the mat and\nShe made tea for her friend while\nHe opened the letter at\n")
    return {"root": root, "model": model, "run": run, "prompts": prompts}


def _listing(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in sorted(d.rglob("*"))}


def test_run_files_default_vectors_and_resume(env, tmp_path, monkeypatch):
    monkeypatch.setenv("STEERKIT_RUNS", str(env["root"] / "runs"))
    monkeypatch.setenv("STEERKIT_CACHE", str(tmp_path / "cache"))
    args = ["steer-eval", "--prompts", str(env["prompts"]), *FAST]
    res = CliRunner().invoke(main, args)  # no --vectors: the latest extract run
    assert res.exit_code == 0, res.output
    assert "steerable:" in res.output and "report:" in res.output
    run = env["run"]
    rep = json.loads((run / "steer_eval.json").read_text())
    for f in ("steer_eval.md", "steer_eval_curves.png", "steer_eval_operating.png", "steer_eval_offtarget.png"):
        assert (run / f).stat().st_size > 0, f
    assert rep["layers"] == [1, 2] and rep["alphas"] == [4.0] and rep["n_units"] == 6
    assert len(rep["cells"]) == 4 * 2 and rep["stats"]["cached"] == 0
    assert rep["stats"]["rows"] == 6 * (1 + 2 * (4 + 3))  # baseline + per layer 4 concepts + 3 random draws
    assert rep["source"]["readout_layer"] in (1, 2, 3) and rep["sampler"] in ("batched", "generate")
    # the same command again: every row from the cache, the same numbers
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    again = json.loads((run / "steer_eval.json").read_text())
    assert again["stats"]["cached"] == again["stats"]["rows"] and again["sampler"] == "cached"
    assert again["cells"] == rep["cells"] and again["operating_points"] == rep["operating_points"]
    # --out: a separate folder, a finished run of its own
    out = tmp_path / "se_out"
    res = CliRunner().invoke(main, [*args, "--vectors", str(run), "--out", str(out), "--greedy"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "run.json").read_text())["kind"] == "steer-eval"
    assert json.loads((out / "steer_eval.json").read_text())["n_units"] == 3  # greedy: one unit per prompt


def _one_line_error(res, needle: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output


@pytest.mark.parametrize(
    "extra, prompts, needle",
    [
        (["--concepts", "calmm"], None, "did you mean calm"),
        (["--layers", "0"], None, "layer 0 is not in the readout"),
        (["--alphas", "0,nan"], None, "finite"),
        (["--alphas", "0,inf"], None, "finite"),
        (["--alphas", "0"], None, "other than 0"),
        (["--seeds", "0"], None, "--seeds must be an integer >= 1"),
        (["--max-new-tokens", "0"], None, "--max-new-tokens must be an integer >= 1"),
        (["--random-draws", "1"], None, "--random-draws must be an integer >= 2"),
        (["--temperature", "nan"], None, "--temperature must be a finite number > 0"),
        (["--significance", "1"], None, "--significance must be a number in (0, 1)"),
        ([], "empty", "holds no prompts"),
        ([], "latin1", "not UTF-8"),
        ([], "missing", "does not exist"),
        (["--model", "OTHER"], None, "the vectors were made with"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(
    env, tmp_path, monkeypatch, tiny_dir_factory, extra, prompts, needle
):
    monkeypatch.setenv("STEERKIT_CACHE", str(tmp_path / "cache"))
    p = env["prompts"]
    if prompts == "empty":
        p = tmp_path / "empty.txt"
        p.write_text("\n# only a comment\n")
    elif prompts == "latin1":
        p = tmp_path / "latin1.txt"
        p.write_bytes("Le caf\xe9 ouvre \xe0 huit heures\n".encode("latin-1"))
    elif prompts == "missing":
        p = tmp_path / "nope.jsonl"
    extra = [str(tiny_dir_factory("llama", seed=1)) if x == "OTHER" else x for x in extra]
    before = _listing(env["run"])
    res = CliRunner().invoke(main, ["steer-eval", "--vectors", str(env["run"]), "--prompts", str(p), *FAST, *extra])
    _one_line_error(res, needle)
    assert _listing(env["run"]) == before
    assert not (tmp_path / "cache").exists()


def test_no_extract_run_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERKIT_RUNS", str(tmp_path / "runs"))
    _one_line_error(CliRunner().invoke(main, ["steer-eval"]), "steerkit extract")


def test_steer_without_strength_uses_the_operating_point(env, tmp_path):
    import shutil

    from steerkit.io import sha256_file

    run = tmp_path / "run"
    shutil.copytree(env["run"], run)
    (run / "steer_eval.json").unlink(missing_ok=True)  # left by an earlier test
    base = ["steer", "--vectors", str(run), "--prompt", "The cat sat on", "--max-new-tokens", "5"]
    res = CliRunner().invoke(main, [*base, "--concept", "calm"])  # no steer-eval: alpha 1, as before
    assert res.exit_code == 0 and "calm=1 " in res.output, res.output
    sha = sha256_file(run / "readout.safetensors")
    op = {"layer": 2, "alpha": 3.5, "scale": "relative", "success": 0.9, "nll_increase": 0.2}
    rep = {"operating_points": {"calm": op, "angry": None}, "source": {"readout_sha256": sha}}
    (run / "steer_eval.json").write_text(json.dumps(rep))
    got = CliRunner().invoke(main, [*base, "--concept", "calm"])
    want = CliRunner().invoke(main, [*base, "--concept", "calm=3.5", "--scale", "relative", "--layer", "2"])
    assert got.exit_code == 0 and "calm=3.5 (relative, layer 2)" in got.output, got.output
    assert got.output == want.output
    _one_line_error(CliRunner().invoke(main, [*base, "--concept", "angry"]), "no operating point")
    rep["source"]["readout_sha256"] = "0" * 64
    (run / "steer_eval.json").write_text(json.dumps(rep))
    _one_line_error(CliRunner().invoke(main, [*base, "--concept", "calm"]), "other vectors")


def test_check_model_compares_fingerprints_only_for_a_named_model_of_the_same_dtype(tiny_lm_factory):
    from steerkit.errors import ReadoutError
    from steerkit.experiments.steer_eval.inputs import check_model
    from steerkit.vectors import ConceptVectors

    lm = tiny_lm_factory("llama")
    import torch

    cv = ConceptVectors(["a"], [1], {1: torch.ones(1, 32)}, {1: torch.ones(1)}, {"model": {"spec": lm.info["spec"],
                        "fingerprint": "other"}})  # fmt: skip
    check_model(cv, lm, explicit=False)  # the run's own spec, loaded by us: only the shapes must fit
    with pytest.raises(ReadoutError, match="made with"):
        check_model(cv, lm, explicit=True)
    check_model(cv, lm, explicit=True, same_dtype=False)  # another dtype: the same spec is enough
    wide = ConceptVectors(["a"], [1], {1: torch.ones(1, 64)}, {1: torch.ones(1)}, {"model": {"spec": "x"}})
    with pytest.raises(ReadoutError, match="made with"):
        check_model(wide, lm, explicit=False)


def test_cli_defaults_are_the_config_defaults():
    """The CLI options mirror SteerEvalConfig's fields: every option that names a field has its default
    (one default per setting, whichever way steer-eval is called)."""
    import dataclasses

    from steerkit.experiments.steer_eval import SteerEvalConfig

    cmd = main.commands["steer-eval"]
    fields = {f.name: f.default for f in dataclasses.fields(SteerEvalConfig)}
    checked = 0
    for p in cmd.params:
        flag = getattr(p, "is_flag", False)  # a flag's default is "not given" (False)
        if p.name in fields and not isinstance(fields[p.name], tuple) and p.name != "layers" and not flag:
            assert p.default == fields[p.name], p.name
            checked += 1
    assert checked >= 10 and fields["max_new_tokens"] == 64
    alphas = next(p for p in cmd.params if p.name == "alphas").default  # a tuple field, given as text
    assert tuple(float(a) for a in alphas.split(",")) == fields["alphas"] == (0.0, 3.0, 4.0, 6.0, 8.0)


def test_every_scale_is_offered_wherever_a_scale_is_chosen():
    """One list of scales (`steering.SCALES`): the steer and steer-eval options, steer-eval's config and
    the generation room accept exactly these; a name outside it is refused."""
    from steerkit.experiments.steer_eval.config import SCALE_NAMES, SteerEvalConfig
    from steerkit.generation import RowEdit
    from steerkit.steering import SCALES

    assert SCALE_NAMES == SCALES
    for name in ("steer", "steer-eval"):
        opt = next(p for p in main.commands[name].params if p.name == "scale")
        assert tuple(opt.type.choices) == SCALES, name
    for s in SCALES:
        SteerEvalConfig(scale=s)
        RowEdit({}, s)
    with pytest.raises(ValueError, match="scale"):
        SteerEvalConfig(scale="unit")
    with pytest.raises(ValueError, match="scale"):
        RowEdit({}, "unit")


def test_equal_scale_steers_every_concept_as_hard_as_the_random_control():
    """scale 'equal': each concept's delta has norm alpha x the set's median raw norm, and so has every
    random direction of the control (absolute: the random norm is the median of the steered concepts'
    norms, each concept at its own)."""
    import numpy as np
    import torch

    from steerkit.experiments.steer_eval import SteerEvalConfig
    from steerkit.experiments.steer_eval.grid import plan_arms
    from steerkit.vectors import ConceptVectors

    g = torch.Generator().manual_seed(0)
    norms = torch.tensor([1.0, 2.0, 5.0, 11.0])
    cv = ConceptVectors(["a", "b", "c", "d"], [1], {1: torch.nn.functional.normalize(torch.randn(4, 32, generator=g))},
                        {1: norms}, {})  # fmt: skip
    median = float(np.median(norms.numpy()))  # 3.5
    for scale, want in (("equal", [median] * 4), ("absolute", norms.tolist())):
        cfg = SteerEvalConfig(alphas=(0, 2.0), scale=scale, random_draws=3)
        arms = plan_arms(cfg, cv, ["a", "b", "c", "d"], [1])
        got = {a.name: float(a.delta.norm()) for a in arms if a.kind == "concept"}
        assert got == pytest.approx({n: 2.0 * w for n, w in zip("abcd", want, strict=True)}, rel=1e-5), scale
        rand = [float(a.delta.norm()) for a in arms if a.kind == "random"]
        assert rand == pytest.approx([2.0 * median] * 3, rel=1e-5), scale
    # steering two of the concepts: equal keeps the set's unit for both arms; absolute's control follows
    # the steered concepts' median (1.5), each concept its own norm
    for scale, concept_norms, random_norm in (("equal", [median] * 2, median), ("absolute", [1.0, 2.0], 1.5)):
        arms = plan_arms(SteerEvalConfig(alphas=(0, 2.0), scale=scale, random_draws=2), cv, ["a", "b"], [1])
        assert [float(a.delta.norm()) for a in arms if a.kind == "concept"] == pytest.approx(
            [2.0 * n for n in concept_norms], rel=1e-5
        ), scale
        assert [float(a.delta.norm()) for a in arms if a.kind == "random"] == pytest.approx([2.0 * random_norm] * 2)
