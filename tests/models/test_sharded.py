"""Models larger than one device, on CPU: a tiny llama dispatched by accelerate as a device map that
offloads blocks to disk, as `auto` within a memory limit, and under CPU-offload hooks (every weight
on `meta`). Captures, steering, reading and a phase-core forward equal the unsharded run exactly;
bad device maps are one-line errors that write nothing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import tiny_models
import torch
from click.testing import CliRunner

from steerkit.capture import capture, parse_pooling
from steerkit.cli import main
from steerkit.models import from_model, load
from steerkit.phase import CouplingConfig, PhaseConfig
from steerkit.phase.core import PhaseCore
from steerkit.phase.couplings import PhaseHook, make_coupling
from steerkit.steering import read_tokens, steer
from steerkit.vectors import ConceptVectors

TEXTS = ["The lake was still.", "She slammed the door and shouted.", "Rain again, all day long, on the roof."]
# blocks 1 and 3, the embedding and the LM head on disk; the rest in CPU RAM
DISK_MAP = {
    "model.embed_tokens": "disk",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "cpu",
    "model.layers.3": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "disk",
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_tok) -> Path:
    d = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_models.build("llama").save_pretrained(d)
    tiny_tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def models(tiny_dir, tmp_path_factory):
    """name -> LoadedModel: the plain one and three dispatched copies of the same weights."""
    off = tmp_path_factory.mktemp("offload")
    plain = load(str(tiny_dir))
    out = {"plain": plain}
    out["disk"] = load(str(tiny_dir), device_map=DISK_MAP, offload_folder=off / "a")
    out["auto"] = load(str(tiny_dir), device_map="auto", max_memory="cpu=100KB", offload_folder=off / "b")
    hooked = copy.deepcopy(plain.model)
    from accelerate import cpu_offload

    cpu_offload(hooked, execution_device="cpu")
    out["hooks"] = from_model(hooked, plain.tokenizer, spec=str(tiny_dir))
    return out


DISPATCHED = ["disk", "auto", "hooks"]


def test_the_models_really_are_offloaded(models):
    disk = models["disk"]
    assert disk.info["device_map"] == DISK_MAP and disk.info["device"] == "cpu"
    metas = {n for n, p in disk.model.named_parameters() if p.device.type == "meta"}
    assert "model.layers.1.mlp.down_proj.weight" in metas and "model.layers.0.mlp.down_proj.weight" not in metas
    assert "disk" in set(models["auto"].info["device_map"].values())
    assert all(p.device.type == "meta" for p in models["hooks"].model.parameters())
    for name in DISPATCHED:  # the fingerprint reads offloaded weights: the activation cache is shared
        assert models[name].info["fingerprint"] == models["plain"].info["fingerprint"]


@pytest.mark.parametrize("name", DISPATCHED)
def test_capture_equals_the_unsharded_run(models, name):
    pooling = parse_pooling("mean")
    sites = ("resid", "heads", "mlp")
    want = capture(models["plain"], TEXTS, [0, 1, 2, 3], sites=sites, pooling=pooling, max_batch_tokens=24)
    got = capture(models[name], TEXTS, [0, 1, 2, 3], sites=sites, pooling=pooling, max_batch_tokens=24)
    for site in sites:
        for layer, x in want.site(site).items():
            y = got.site(site)[layer]
            assert y.device.type == "cpu" and torch.equal(x, y), (site, layer)
    w = models[name].adapter.mlp_down_weight(models[name].model, 1)  # an offloaded weight, read from its hook
    assert torch.equal(w, models["plain"].adapter.mlp_down_weight(models["plain"].model, 1))


def _vectors(hidden: int) -> ConceptVectors:
    g = torch.Generator().manual_seed(3)
    vecs = {la: torch.nn.functional.normalize(torch.randn(2, hidden, generator=g), dim=1) for la in (1, 3)}
    return ConceptVectors(["calm", "angry"], [1, 3], vecs, {la: torch.tensor([2.0, 1.5]) for la in (1, 3)})


@pytest.mark.parametrize("name", DISPATCHED)
def test_steering_and_reading_equal_the_unsharded_run(models, name):
    cv = _vectors(32)
    ids = models["plain"].tokenizer(TEXTS[1], return_tensors="pt").input_ids
    got = {}
    for key in ("plain", name):
        lm = models[key]
        with torch.no_grad():
            with steer(lm, cv, {"calm": 3.0, "angry": -1.0}, [1, 3]):
                logits = lm.model(ids.to(lm.adapter.input_device(lm.model))).logits
            with steer(lm, cv, {"calm": 2.0}, 1, mode="ablate_then_add", scale="relative"):
                text = lm.generate("Once upon a time", max_new_tokens=5)
        got[key] = (logits, text, read_tokens(lm, cv, TEXTS[0], 3))
    assert torch.equal(got["plain"][0], got[name][0])
    assert got["plain"][1] == got[name][1]
    for k in ("scores", "pooled"):
        assert torch.equal(got["plain"][2][k], got[name][2][k])


@pytest.mark.parametrize("coupling", ["additive", "gate"])
@pytest.mark.parametrize("name", DISPATCHED)
def test_phase_core_forward_equals_the_unsharded_run(models, name, coupling):
    torch.manual_seed(0)
    core = PhaseCore(32, PhaseConfig(n_oscillators=8))
    coup = make_coupling(CouplingConfig(name=coupling, alpha=0.5), 32)
    tok = models["plain"].tokenizer
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    got = {}
    for key in ("plain", name):
        lm = models[key]
        with PhaseHook(lm, core, coup, 2) as hook, torch.no_grad():
            hook.mask = enc.attention_mask
            logits = lm.model(enc.input_ids, attention_mask=enc.attention_mask).logits
            got[key] = (logits, hook.last.r.cpu())
    assert torch.equal(got["plain"][0], got[name][0]) and torch.equal(got["plain"][1], got[name][1])


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def test_cli_device_map_file_and_auto(tiny_dir, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    dmap = tmp_path / "map.json"
    dmap.write_text(json.dumps(DISK_MAP))
    base = ["capture", "-m", str(tiny_dir), "--texts", str(texts), "--layers", "1,3", "--site", "resid,mlp"]
    base += ["--cache-dir", "none", "--no-preflight"]
    outs = {}
    for key, extra in {
        "plain": [],
        "file": ["--device-map", str(dmap), "--offload-folder", str(tmp_path / "off")],
        "auto": ["--device-map", "auto", "--max-memory", "cpu=100KB", "--offload-folder", str(tmp_path / "off2")],
    }.items():
        res = _invoke([*base, *extra, "--out", str(tmp_path / key)])
        assert res.exit_code == 0, res.output
        from safetensors.torch import load_file

        outs[key] = load_file(tmp_path / key / "activations.safetensors")
    for key in ("file", "auto"):
        assert outs[key].keys() == outs["plain"].keys()
        assert all(torch.equal(outs[key][k], outs["plain"][k]) for k in outs["plain"])
    cv = _vectors(32)
    cv.meta["model"] = {"spec": str(tiny_dir), "n_blocks": 4}
    cv.save(tmp_path / "vec")
    steer_args = ["steer", "--vectors", str(tmp_path / "vec"), "--concept", "calm=2", "--layers", "1,3"]
    steer_args += ["--prompt", "The lake", "--max-new-tokens", "4"]
    plain = _invoke(steer_args)
    sharded = _invoke([*steer_args, "--device-map", str(dmap), "--offload-folder", str(tmp_path / "off")])
    assert plain.exit_code == 0 and sharded.exit_code == 0, plain.output + sharded.output
    assert plain.output == sharded.output


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--device-map", "{bad_module}"], "names module 'model.layers.9', which model"),
        (["--device-map", "{unplaced}"], "places no module holding 'lm_head.weight'"),
        (["--device-map", "{bad_device}"], "device 'cuda:5' is not usable"),
        (["--device-map", "{not_json}"], "not valid JSON"),
        (["--device-map", "everywhere"], "give auto, balanced"),
        (["--device-map", "auto", "--max-memory", "lots"], "--max-memory 'lots'"),
        (["--max-memory", "cpu=1GiB"], "--max-memory limits what --device-map"),
        (["--device-map", "auto", "--device", "cuda:0"], "not both"),
    ],
)
def test_bad_device_maps_are_one_line_and_write_nothing(extra, needle, tiny_dir, tmp_path):
    if "{bad_device}" in extra and torch.cuda.device_count() > 5:
        pytest.skip("cuda:5 exists here")
    files = tmp_path / "in"
    files.mkdir()
    (files / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    maps = {
        "bad_module": {**DISK_MAP, "model.layers.9": "cpu"},
        "unplaced": {k: v for k, v in DISK_MAP.items() if k != "lm_head"},
        "bad_device": {**DISK_MAP, "model.layers.2": "cuda:5"},
    }
    for key, m in maps.items():
        (files / f"{key}.json").write_text(json.dumps(m))
    (files / "not_json.json").write_text("{model.layers.0: cpu")
    subs = {f"{{{k}}}": str(files / f"{k}.json") for k in [*maps, "not_json"]}
    args = ["capture", "-m", str(tiny_dir), "--texts", str(files / "texts.txt"), "--cache-dir", "none"]
    args += ["--out", str(tmp_path / "caps"), "--offload-folder", str(tmp_path / "off")]
    before = sorted(tmp_path.rglob("*"))
    res = _invoke([*args, *[subs.get(a, a) for a in extra]])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output
    assert sorted(tmp_path.rglob("*")) == before


def test_train_phase_and_intervene_with_a_device_map_equal_the_unsharded_run(tiny_dir, tmp_path):
    """The core trained on the disk-offloaded model has the same weights; intervene's report is the same."""
    from safetensors.torch import load_file

    (tmp_path / "t.txt").write_text("The fox ran home.\n---\nRain again, all day.\n---\nShe laughed and smiled.\n")
    (tmp_path / "map.json").write_text(json.dumps(DISK_MAP))
    sharded = ["--device-map", str(tmp_path / "map.json"), "--offload-folder", str(tmp_path / "off")]
    train = ["train-phase", "-m", str(tiny_dir), "--text", str(tmp_path / "t.txt"), "--steps", "2", "--seq-len", "8"]
    train += ["--val-every", "1", "--layer", "2", "--out", str(tmp_path / "runs")]
    for name, extra in (("a", []), ("b", sharded)):
        res = _invoke([*train, "--name", name, *extra])
        assert res.exit_code == 0, res.output
    a, b = (load_file(tmp_path / "runs" / n / "phase_core.safetensors") for n in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (tmp_path / "p.txt").write_text("The door opened ||| and she walked in.\nIt rained ||| all day long.\n")
    iv = ["intervene", "--run", str(tmp_path / "runs" / "a"), "--force-R", "0.3", "--seeds", "2"]
    iv += ["--prompts", str(tmp_path / "p.txt")]
    iv += ["--permutations", "100", "--bootstrap", "100", "--max-new-tokens", "4"]
    reports = []
    for name, extra in (("iv1", []), ("iv2", sharded)):
        res = _invoke([*iv, "--out", str(tmp_path / name), *extra])
        assert res.exit_code == 0, res.output
        reports.append(json.loads((tmp_path / name / "intervention.json").read_text()))

    def measured(x: object) -> object:  # everything but timings and paths
        if isinstance(x, dict):
            return {k: measured(v) for k, v in x.items() if k not in ("seconds", "created", "source", "out")}
        return [measured(v) for v in x] if isinstance(x, list) else x

    assert measured(reports[0]) == measured(reports[1])
