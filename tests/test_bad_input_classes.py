"""Issue 17, class by class: every bad input is one `error:` line, exit code 2, nothing written and
the inputs untouched. Each test builds its bad inputs in tmp_path from a good readout, a finished
train-phase run and the tiny test corpus; almost every check fails before a model loads.

Classes: 1 non-finite numbers (in files, options and configs; a diverging run leaves no half-run),
2 malformed files that parse (readout.json, metrics.jsonl, prompts, run/config/summary JSON,
checkpoints, a checksummed garbage phase core), 3 the wrong kind of path, 4 unbounded inputs
(a 5 MB story, a text longer than the model's context), 5 honest messages (verify, shape
mismatch, pickled weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from steerkit.cli import main
from steerkit.io import sha256_file
from steerkit.vectors.readout import ConceptVectors

FIXTURE = Path(__file__).parent / "fixtures" / "corpus_small"
WORDS = "the cat sat on a warm mat while rain fell over the quiet town and she made tea for her old friend".split()
TALLY: dict[str, list[int]] = {}  # command -> [tried, held]; printed by the last test


# ---- inputs -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tiny_dir_factory) -> Path:
    return tiny_dir_factory("llama")


@pytest.fixture(scope="module")
def readout(tmp_path_factory, model_dir) -> Path:
    """A good readout folder (no extract run needed): 3 concepts, blocks 1 and 3, hidden 32."""
    d = tmp_path_factory.mktemp("readout") / "run"
    g = torch.Generator().manual_seed(0)
    vecs = {la: torch.nn.functional.normalize(torch.randn(3, 32, generator=g), dim=1) for la in (1, 3)}
    norms = {la: torch.ones(3) for la in (1, 3)}
    centers = {la: torch.zeros(32) for la in (1, 3)}
    meta = {"model": {"spec": str(model_dir), "n_blocks": 4}, "method": "caa", "pooling": "mean_after:1"}
    ConceptVectors(["calm", "sad", "angry"], [1, 3], vecs, norms, meta, centers).save(d)
    (d / "run.json").write_text(json.dumps({"kind": "extract", "created": "now", "created_unix": 1.0}))
    return d


def _texts(path: Path, n: int = 12) -> Path:
    g = torch.Generator().manual_seed(0)
    stories = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (40,), generator=g).tolist()) for _ in range(n)]
    path.write_text("\n---\n".join(stories))
    return path


@pytest.fixture(scope="module")
def phase_run(tmp_path_factory, model_dir) -> Path:
    """A finished 2-step train-phase run with checkpoints."""
    from steerkit.training import TrainConfig, train

    root = tmp_path_factory.mktemp("phase")
    cfg = TrainConfig(model=str(model_dir), texts=(str(_texts(root / "texts.txt")),), seq_len=16, batch_size=2,
                      steps=2, val_every=2, checkpoint_every=1, val_fraction=0.2, layer="0.5")  # fmt: skip
    train(cfg, root / "runs" / "p1", handle_signals=False)
    return root / "runs" / "p1"


def _copy(src: Path, tmp_path: Path, name: str = "copy") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, fn) -> None:
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))


def _poison(path: Path, key: str, value: float = float("nan")) -> None:
    t = load_file(path)
    t[key].view(-1)[0] = value
    save_file(t, path)


# ---- the contract -------------------------------------------------------------------------------
def _tree(root: Path) -> list[tuple[str, bytes | None]]:
    return sorted((str(p), p.read_bytes() if p.is_file() else None) for p in root.rglob("*"))


def _run(args: list[str], tmp_path: Path, needle: str, monkeypatch: pytest.MonkeyPatch, report: bool = False) -> None:
    """Invoke the CLI in tmp_path (runs and cache there too) and assert the one-line contract.
    report: `corpus check` prints its whole report (warnings, then one line per error)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STEERKIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("STEERKIT_CACHE", str(tmp_path / "cache"))
    before = _tree(tmp_path)
    argv = [str(a) for a in args]
    res = CliRunner().invoke(main, argv)
    tally = TALLY.setdefault(" ".join(a for a in argv[:2] if not a.startswith(("-", "/"))), [0, 0])
    tally[0] += 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    if report:
        lines = [ln for ln in lines if ln.startswith("error:") and needle in ln][:1] or lines
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert needle in lines[0], res.output
    assert "Traceback" not in res.output
    assert _tree(tmp_path) == before  # nothing written, inputs untouched
    tally[1] += 1


# ---- 1. non-finite numbers ------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["layer_1.vectors", "layer_3.norms", "layer_1.center"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_readout_tensors(readout, tmp_path, monkeypatch, key, value):
    d = _copy(readout, tmp_path)
    _poison(d / "readout.safetensors", key, value)
    needle = f"{key} holds 1 non-finite value(s)"
    _run(["read", "--vectors", d, "--text", "The lake."], tmp_path, needle, monkeypatch)
    _run(["steer", "--vectors", d, "--concept", "calm=1", "--prompt", "Hi"], tmp_path, needle, monkeypatch)
    _run(["export", "--vectors", d, "--concept", "calm=1", "--out", tmp_path / "x.gguf"], tmp_path, needle, monkeypatch)


@pytest.mark.parametrize("alpha", ["nan", "inf", "-inf", "NaN", "1e999"])
def test_nonfinite_concept_strength(readout, tmp_path, monkeypatch, alpha):
    needle = "ALPHA must be a finite number"
    args = ["--vectors", readout, "--concept", f"calm={alpha}"]
    _run(["steer", *args, "--prompt", "Hi"], tmp_path, needle, monkeypatch)
    _run(["export", *args, "--out", tmp_path / "x.gguf"], tmp_path, needle, monkeypatch)


@pytest.mark.parametrize(
    "option, value",
    [("--lr", "nan"), ("--dt", "nan"), ("--alpha", "inf"), ("--k", "-inf"), ("--lam", "nan"), ("--beta", "nan")],
)
def test_nonfinite_train_options(model_dir, tmp_path, monkeypatch, option, value):
    text = _texts(tmp_path / "texts.txt")
    args = ["train-phase", "-m", model_dir, "--text", text, "--steps", "2", "--out", tmp_path / "runs", option, value]
    _run(args, tmp_path, f"{option} must be", monkeypatch)


def test_nonfinite_quality_and_intervene_options(readout, tmp_path, monkeypatch):
    _run(["quality-report", readout, "--ridge-lambda", "nan"], tmp_path, "--ridge-lambda must be", monkeypatch)
    _run(["quality-report", readout, "--ridge-lambda", "0"], tmp_path, "--ridge-lambda must be", monkeypatch)
    _run(["intervene", "--force-R", "nan"], tmp_path, "--force-R must be a number in [0, 1]", monkeypatch)
    _run(["intervene", "--force-R", "0.5", "--temperature", "inf"], tmp_path, "--temperature", monkeypatch)
    _run(["corpus", "pairs", FIXTURE, "--axis", "valence", "--min-gap", "nan"], tmp_path, "--min-gap", monkeypatch)


def test_nonfinite_configs_from_the_api_and_from_files(phase_run, tmp_path):
    from steerkit.errors import RunDirError, TrainingConfigError
    from steerkit.experiments import InterveneConfig
    from steerkit.phase import PhaseConfig
    from steerkit.quality.report import QualityConfig
    from steerkit.training import TrainConfig
    from steerkit.training.runs import read_config

    for bad in ({"lr": float("nan")}, {"lam": float("inf")}, {"phase": PhaseConfig(dt=float("nan"))}):
        with pytest.raises(TrainingConfigError, match="finite"):
            TrainConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        QualityConfig(ridge_lambda=float("nan"))
    with pytest.raises(ValueError, match="finite"):
        InterveneConfig(levels=(0.5,), temperature=float("nan"))
    d = _copy(phase_run, tmp_path)  # a config.json edited to hold NaN: json.dumps writes it, json.loads reads it
    _edit_json(d / "config.json", lambda c: {**c, "config": {**c["config"], "lr": float("nan")}})
    with pytest.raises(RunDirError, match="finite"):
        read_config(d)


def test_nonfinite_activations_and_phase_core(readout, phase_run, tmp_path, monkeypatch):
    d = _copy(readout, tmp_path, "qr")
    acts = {"resid.layer_1": torch.randn(4, 32), "resid.layer_3": torch.randn(4, 32)}
    acts["resid.layer_3"][2, 5] = float("nan")
    save_file(acts, d / "activations.safetensors")
    (d / "texts.json").write_text(
        json.dumps([{"sha256": str(i), "concepts": ["calm"], "sources": []} for i in range(4)])
    )
    _run(["quality-report", d], tmp_path, "resid.layer_3 holds 1 non-finite", monkeypatch)
    acts["resid.layer_3"][2, 5] = 0.0
    save_file(acts, d / "activations.safetensors")
    save_file({"layer_1": torch.full((32, 64), float("inf"), dtype=torch.float16)}, d / "mlp_down.safetensors")
    _run(["quality-report", d], tmp_path, "mlp_down.safetensors: layer_1 holds 2048 non-finite", monkeypatch)
    p = _copy(phase_run, tmp_path, "pr")
    key = next(iter(load_file(p / "phase_core.safetensors")))
    _poison(p / "phase_core.safetensors", key)
    _edit_json(p / "phase_core.json", lambda s: {**s, "sha256": sha256_file(p / "phase_core.safetensors")})
    _run(["intervene", "--run", p, "--force-R", "0.5"], tmp_path, "non-finite", monkeypatch)


def _diverge_at(monkeypatch, step: int) -> None:
    from steerkit.training.ce import CEObjective

    orig = CEObjective.step

    def step_fn(self, t, hook, s):
        out = orig(self, t, hook, s)
        if s >= step:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(CEObjective, "step", step_fn)


def test_diverging_run_without_checkpoints_leaves_nothing(model_dir, tmp_path, monkeypatch, tiny_tok):
    from steerkit.errors import TrainingConfigError
    from steerkit.runs import latest_run
    from steerkit.training import TrainConfig, find_latest_run, train

    text = _texts(tmp_path / "texts.txt")
    _diverge_at(monkeypatch, 1)
    cfg = TrainConfig(model=str(model_dir), texts=(str(text),), seq_len=16, batch_size=2, steps=4, val_every=2,
                      checkpoint_every=2, val_fraction=0.2)  # fmt: skip
    with pytest.raises(TrainingConfigError, match=r"loss became nan at step 1.*was removed"):
        train(cfg, tmp_path / "runs" / "a" / "b", handle_signals=False)
    assert not (tmp_path / "runs").exists()  # every folder the run made is gone
    (tmp_path / "mine").mkdir()  # an empty folder the user made stays, empty
    with pytest.raises(TrainingConfigError, match="was removed"):
        train(cfg, tmp_path / "mine", handle_signals=False)
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())
    assert find_latest_run(tmp_path) is None and latest_run("train-phase", tmp_path) is None


def test_diverging_run_with_checkpoints_is_kept_marked_and_never_a_default(model_dir, tmp_path, monkeypatch):
    from steerkit.cli.phase import _latest_unfinished
    from steerkit.errors import TrainingConfigError
    from steerkit.training import TrainConfig, find_latest_run, train

    text = _texts(tmp_path / "texts.txt")
    _diverge_at(monkeypatch, 3)
    cfg = TrainConfig(model=str(model_dir), texts=(str(text),), seq_len=16, batch_size=2, steps=4, val_every=2,
                      checkpoint_every=2, val_fraction=0.2)  # fmt: skip
    with pytest.raises(TrainingConfigError, match=r"step 3.*keeps its checkpoints \(up to step 2\).*marked failed"):
        train(cfg, tmp_path / "runs" / "d", handle_signals=False)
    d = tmp_path / "runs" / "d"
    assert (d / "checkpoints" / "step-00000002").is_dir() and (d / "failed.json").is_file()
    assert _latest_unfinished(tmp_path / "runs") is None and find_latest_run(tmp_path / "runs") is None
    # the CLI: --resume without --name finds nothing to resume
    monkeypatch.setenv("STEERKIT_RUNS", str(tmp_path / "runs"))
    res = CliRunner().invoke(main, ["train-phase", "-m", str(model_dir), "--resume", "--out", str(tmp_path / "runs")])
    assert res.exit_code == 2 and "nothing to resume" in res.output, res.output


# ---- 2. malformed files that parse ---------------------------------------------------------------
READOUT_JSON_CASES = [
    ("list", lambda m: [1, 2], "the top level must be an object, got array"),
    ("string-layers", lambda m: {**m, "layers": ["a", "b"]}, 'layers[0] must be an integer, got string "a"'),
    ("float-layer", lambda m: {**m, "layers": [1.5, 3]}, "layers[0] must be an integer"),
    ("negative-layer", lambda m: {**m, "layers": [-1, 3]}, "layers[0] must be >= 0"),
    ("no-concepts", lambda m: {k: v for k, v in m.items() if k != "concepts"}, "concepts is missing"),
    ("empty-concepts", lambda m: {**m, "concepts": []}, "concepts must hold at least 1"),
    ("repeated-concepts", lambda m: {**m, "concepts": ["calm", "calm", "sad"]}, "concepts must not repeat"),
    ("hidden-string", lambda m: {**m, "hidden_size": "32"}, "hidden_size must be an integer"),
    ("version-3", lambda m: {**m, "format_version": 3}, "format_version 3"),
    ("model-list", lambda m: {**m, "model": ["x"]}, "model must be an object"),
    ("no-model", lambda m: {k: v for k, v in m.items() if k != "model"}, "names no model (model.spec); pass the model"),
]


@pytest.mark.parametrize("name, edit, needle", READOUT_JSON_CASES, ids=[c[0] for c in READOUT_JSON_CASES])
def test_malformed_readout_json(readout, tmp_path, monkeypatch, name, edit, needle):
    d = _copy(readout, tmp_path)
    _edit_json(d / "readout.json", edit)
    _run(["read", "--vectors", d, "--text", "The lake."], tmp_path, needle, monkeypatch)


@pytest.mark.parametrize(
    "raw, needle",
    [
        (b"\xff\xfe{}", "readout.json:1: not UTF-8"),
        (b'{"a": 1,\n  "b": }', "readout.json:2: not valid JSON"),
        (b"", "not valid JSON"),
    ],
)
def test_undecodable_readout_json(readout, tmp_path, monkeypatch, raw, needle):
    d = _copy(readout, tmp_path)
    (d / "readout.json").write_bytes(raw)
    _run(["steer", "--vectors", d, "--concept", "calm=1", "--prompt", "Hi"], tmp_path, needle, monkeypatch)


def test_malformed_quality_json(readout, tmp_path, monkeypatch):
    d = _copy(readout, tmp_path)
    (d / "quality.json").write_text("[1]")
    _run(["read", "--vectors", d, "--text", "The lake."], tmp_path, "quality.json: the top level", monkeypatch)
    (d / "quality.json").write_text('{"best_layer": "3"}')
    _run(["read", "--vectors", d, "--text", "The lake."], tmp_path, "best_layer must be", monkeypatch)


METRICS_CASES = [
    ("list-line", b'{"step": 1, "loss": 1.0}\n[1, 2]\n{"step": 3, "loss": 1.0}\n', "metrics.jsonl:2: the top level"),
    ("no-step", b'{"loss": 1.0}\n', "metrics.jsonl:1: step is missing"),
    ("string-step", b'{"step": "1", "loss": 1.0}\n', "step must be an integer"),
    ("nan-loss", b'{"step": 1, "loss": NaN}\n', "loss must be a finite number"),
    ("binary", b'{"step": 1, "loss": 1.0}\n\xff\xfe\x00garbage\n', "metrics.jsonl:2: not UTF-8"),
    (
        "garbage-middle",
        b'{"step": 1, "loss": 1.0}\n{"step": 2,\n{"step": 3, "loss": 1.0}\n',
        "metrics.jsonl:2: not valid",
    ),
]


@pytest.mark.parametrize("name, raw, needle", METRICS_CASES, ids=[c[0] for c in METRICS_CASES])
def test_malformed_metrics(tmp_path, monkeypatch, name, raw, needle):
    d = tmp_path / "phase"
    d.mkdir()
    (d / "metrics.jsonl").write_bytes(raw)
    _run(["plot-metrics", d], tmp_path, needle, monkeypatch)


def test_metrics_last_line_cut_by_a_crash_is_skipped(tmp_path):
    from steerkit.training.plots import read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
    rows, _ = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1]


PROMPT_CASES = [
    ("latin1.txt", "café\n".encode("latin-1"), "latin1.txt:1: not UTF-8"),
    ("list.jsonl", b'{"prompt": "a"}\n[1]\n', "list.jsonl:2: the top level must be an object"),
    ("noprompt.jsonl", b'{"continuation": "a"}\n', "noprompt.jsonl:1: prompt is missing"),
    ("number.jsonl", b'{"prompt": 5}\n', "prompt must be a string"),
    ("bad.jsonl", b'{"prompt": "a"\n', "bad.jsonl:1: expected"),
]


@pytest.mark.parametrize("name, raw, needle", PROMPT_CASES, ids=[c[0] for c in PROMPT_CASES])
def test_malformed_prompts(phase_run, tmp_path, monkeypatch, name, raw, needle):
    (tmp_path / name).write_bytes(raw)
    _run(
        ["intervene", "--run", phase_run, "--prompts", tmp_path / name, "--force-R", "0.5"],
        tmp_path,
        needle,
        monkeypatch,
    )


def test_garbage_phase_core_with_updated_checksum(phase_run, tmp_path, monkeypatch):
    d = _copy(phase_run, tmp_path)
    (d / "phase_core.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    _edit_json(d / "phase_core.json", lambda s: {**s, "sha256": sha256_file(d / "phase_core.safetensors")})
    _run(["intervene", "--run", d, "--force-R", "0.5"], tmp_path, "is not a safetensors file", monkeypatch)
    _edit_json(d / "phase_core.json", lambda s: [s])
    _run(["intervene", "--run", d, "--force-R", "0.5"], tmp_path, "phase_core.json: the top level", monkeypatch)


def test_malformed_run_config(phase_run, tmp_path, monkeypatch, model_dir):
    d = _copy(phase_run, tmp_path)
    (d / "config.json").write_bytes(b"\x80\x81")
    _run(["intervene", "--run", d, "--force-R", "0.5"], tmp_path, "config.json:1: not UTF-8", monkeypatch)
    (d / "config.json").write_text('{"kind": "train-phase", "config": []}')
    _run(["intervene", "--run", d, "--force-R", "0.5"], tmp_path, "config must be an object", monkeypatch)
    text = _texts(tmp_path / "t.txt")
    args = ["train-phase", "-m", model_dir, "--text", text, "--steps", "2", "--from", d]
    _run(args, tmp_path, "config must be an object", monkeypatch)


def test_corrupt_checkpoints_fall_back_then_refuse(phase_run, tmp_path):
    from steerkit.training import checkpoint as ck

    d = _copy(phase_run, tmp_path)
    steps = ck.step_dirs(d / "checkpoints")
    assert len(steps) == 2
    newest, older = steps[-1][1], steps[0][1]
    _edit_json(newest / "meta.json", lambda m: {**m, "controller": "x"})  # schema
    assert ck.latest_checkpoint(d / "checkpoints").step == steps[0][0]  # type: ignore[union-attr]
    (older / "state.safetensors").write_bytes(b"garbage")  # garbage whose checksum is updated to match
    _edit_json(
        older / "meta.json", lambda m: {**m, "sha256": {"state.safetensors": sha256_file(older / "state.safetensors")}}
    )
    assert ck.latest_checkpoint(d / "checkpoints") is None


def test_binary_run_json_is_not_a_finished_run(readout, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    _copy(readout, runs, "r1")
    (runs / "r1" / "run.json").write_bytes(b"\xff\x00")
    _copy(readout, runs, "r2")
    _edit_json(runs / "r2" / "run.json", lambda r: {**r, "created_unix": "yesterday"})
    _run(["quality-report"], tmp_path, "no extract run under", monkeypatch)


def test_undecodable_texts_and_corpus_name_the_line(model_dir, tmp_path, monkeypatch):
    (tmp_path / "t.txt").write_bytes(b"fine\nalso fine\nbad \xe9 byte\n")
    args = ["capture", "-m", model_dir, "--texts", tmp_path / "t.txt", "--out", tmp_path / "o", "--cache-dir", "none"]
    _run(args, tmp_path, "t.txt:3: not UTF-8 (invalid byte at offset", monkeypatch)
    c = _copy(FIXTURE, tmp_path, "corpus")
    story = next((c / "stories").glob("*.txt"))
    story.write_bytes(story.read_bytes() + b"\n---\nA story with a bad \xff byte.\n")
    _run(["corpus", "check", c], tmp_path, "calm.txt:8: not UTF-8 (invalid byte at offset", monkeypatch, report=True)
    _run(["extract", "--stories", c, "-m", model_dir], tmp_path, "calm.txt:8: not UTF-8", monkeypatch)


# ---- 3. the wrong kind of path -------------------------------------------------------------------
def test_wrong_kind_of_path(readout, phase_run, model_dir, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("precious")
    (tmp_path / "adir").mkdir()
    f, folder = tmp_path / "afile", tmp_path / "adir"
    expected_folder = "is a file, expected a folder"
    cases = [
        (["extract", "--stories", f, "-m", model_dir], expected_folder),
        (["corpus", "check", f], "is a file"),
        (["read", "--vectors", f, "--text", "x"], expected_folder),
        (["steer", "--vectors", f, "--concept", "calm=1", "--prompt", "x"], expected_folder),
        (["export", "--vectors", f, "--concept", "calm=1", "--out", tmp_path / "x.gguf"], expected_folder),
        (["quality-report", f], expected_folder),
        (["plot-metrics", f], expected_folder),
        (["intervene", "--run", f, "--force-R", "0.5"], expected_folder),
        (["intervene", "--run", phase_run, "--prompts", folder, "--force-R", "0.5"], "is a folder, expected a file"),
        (["capture", "-m", model_dir, "--texts", f, "--out", tmp_path / "o", "--cache-dir", f], expected_folder),
        (["capture", "-m", model_dir, "--texts", f, "--out", f / "sub"], "its parent"),
        (["train-phase", "-m", model_dir, "--out", f], "is a file"),
    ]
    for args, needle in cases:
        _run(args, tmp_path, needle, monkeypatch)
    monkeypatch.setenv("STEERKIT_CACHE", str(f))  # the default cache root is a file
    res = CliRunner().invoke(main, ["capture", "-m", str(model_dir), "--texts", str(f), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and f"its parent {f} is a file" in res.output, res.output
    assert f.read_text() == "precious" and not (tmp_path / "o").exists()


# ---- 4. unbounded inputs -------------------------------------------------------------------------
def test_five_megabyte_story_is_refused_before_a_model_loads(tmp_path, monkeypatch, model_dir):
    c = _copy(FIXTURE, tmp_path, "corpus")
    story = next((c / "stories").glob("*.txt"))
    story.write_text(story.read_text() + "\n---\n" + "word " * 1_000_000 + "\n")
    _run(["corpus", "check", c], tmp_path, "over the limit of 20,000", monkeypatch, report=True)
    _run(["extract", "--stories", c, "-m", "/nonexistent-model"], tmp_path, "over the limit of 20,000", monkeypatch)


def test_a_text_over_the_text_limit_is_refused(tmp_path, monkeypatch, model_dir):
    (tmp_path / "big.txt").write_text("word " * 250_000)  # 1.25 M characters on one line
    args = ["capture", "-m", model_dir, "--texts", tmp_path / "big.txt", "--out", tmp_path / "o"]
    _run(args, tmp_path, "big.txt:1: a text of 1,249,999 characters, over the limit", monkeypatch)


def test_texts_longer_than_the_context_are_truncated_with_a_warning(tiny_lm_factory, caplog):
    from steerkit.capture import capture, parse_pooling

    lm = tiny_lm_factory("llama")  # max_position_embeddings 256
    long = " ".join(WORDS * 40)  # about 3,000 tokens
    texts = [long, "the cat sat.", "rain fell.", "tea for two."]
    res = capture(lm, texts, [1], pooling=parse_pooling("mean"))
    assert "longer than the model's context of 256 tokens" in caplog.text
    assert "one text holds" in caplog.text  # it dominates the run's tokens: said, never silent
    cut = lm.tokenizer(long).input_ids[:256]
    again = capture(lm, [lm.tokenizer.decode(cut, skip_special_tokens=True)], [1], pooling=parse_pooling("mean"))
    assert res.resid[1].shape == (4, 32) and torch.isfinite(res.resid[1]).all()
    assert torch.allclose(res.resid[1][0], again.resid[1][0], atol=1e-4)


def test_negative_batch_budget_is_rejected(model_dir, tmp_path, monkeypatch):
    (tmp_path / "t.txt").write_text("The fox ran home.\n")
    for cmd in (["capture", "-m", model_dir, "--texts", tmp_path / "t.txt", "--out", tmp_path / "o"],
                ["extract", "--stories", FIXTURE, "-m", model_dir, "--out", tmp_path / "o"]):  # fmt: skip
        for v in ("-5", "0"):
            _run([*cmd, "--max-batch-tokens", v], tmp_path, "--max-batch-tokens must be an integer >= 1", monkeypatch)


def test_sizes_that_would_hang_or_overflow_are_refused(readout, model_dir, tmp_path, monkeypatch):
    _run(["intervene", "--grid", "0:1:1e-12"], tmp_path, "gives 1,000,000,000,001 levels, more than 101", monkeypatch)
    _run(["intervene", "--grid", "0:nan:0.1"], tmp_path, "must be finite numbers", monkeypatch)
    _run(["steer", "--vectors", readout, "--concept", "calm=1e300", "--prompt", "Hi"], tmp_path, "within", monkeypatch)
    big = ["extract", "--stories", FIXTURE, "-m", model_dir, "--pooling", "mean_after:99999999999999999999"]
    _run(big, tmp_path, "0 <= N <= 1,000,000", monkeypatch)
    text = _texts(tmp_path / "t.txt")
    _run(["train-phase", "-m", model_dir, "--text", text, "--oscillators", "1000000000"], tmp_path, "4096", monkeypatch)


def test_out_of_memory_is_one_line(model_dir, tmp_path, monkeypatch):
    import steerkit.models

    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: 128 GB")

    monkeypatch.setattr(steerkit.models, "load", oom)
    _run(["verify", "-m", model_dir], tmp_path, "error: out of memory", monkeypatch)


# ---- 5. honest messages --------------------------------------------------------------------------
def test_verify_prints_its_table_only_on_success(model_dir, tmp_path, monkeypatch):
    _run(["verify", "-m", model_dir], tmp_path, "--allow-untrained", monkeypatch)  # a random model fails: no table


def test_shape_mismatch_names_the_tensor(model_dir, tmp_path, monkeypatch):
    d = _copy(model_dir, tmp_path, "shape")
    _edit_json(d / "config.json", lambda c: {**c, "intermediate_size": 96})
    needle = "down_proj.weight is [32, 64] in the checkpoint but [32, 96] by the config"
    _run(["verify", "-m", d, "--allow-untrained"], tmp_path, needle, monkeypatch)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("payload", [False, True])
def test_pickled_weights_are_refused_and_never_run(model_dir, tmp_path, monkeypatch, payload):
    d = _copy(model_dir, tmp_path, "pkl")
    state = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    marker = tmp_path / "payload-ran"
    torch.save({**state, "x": _Payload(str(marker))} if payload else state, d / "pytorch_model.bin")
    needle = (
        "holds its weights only as a pickle (pytorch_model.bin), which can run code: steerkit loads only safetensors"
    )
    _run(["verify", "-m", d, "--allow-untrained"], tmp_path, needle, monkeypatch)
    assert not marker.exists()


def test_zz_tally():
    """Bad inputs tried and held per command (read by the issue note)."""
    for cmd, (tried, held) in sorted(TALLY.items()):
        print(f"{cmd}: {held}/{tried}")
    assert all(t == h for t, h in TALLY.values())
