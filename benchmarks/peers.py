"""Peer comparison: steering-vectors 0.12.2 and repeng 0.4.0 against steerkit, same model, texts, layers.

The peers need transformers < 5 and numpy < 2, so they live in their own virtual environment, made
here on first use (default $STEERKIT_CACHE/peer-venv; never in the project's dependencies), and run
through benchmarks/peers_worker.py, which never imports steerkit. In one run:
  (a) extract time: one vector per concept and layer from all the texts: steerkit (capture + CAA,
      cold cache) vs each library (one call per concept on (concept story, other-concept story)
      pairs: the pairs a user would give them), as ratios peer / steerkit;
  (b) held-out readout, k folds stratified by concept: every library's vectors are rebuilt from the
      training folds only and scored the same way (steerkit's `held_out_readout`: the projection of
      a held-out story's centred activation, top-1 / top-3 over all concepts), with the stories'
      activations pooled two ways: `last` (the token the peers read) and steerkit's default;
  (c) a fidelity check: the peer environment's logits on a test sentence equal steerkit's.
Texts: the first --per-concept single-concept stories of each concept (a subset, to fit 2 cores).

    .venv/bin/python benchmarks/peers.py [--per-concept 6] [--folds 3] [--concepts N] [--json OUT] [--venv DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from steerkit.capture import capture, default_spread, parse_pooling  # noqa: E402
from steerkit.corpus import load as load_corpus  # noqa: E402
from steerkit.models import load  # noqa: E402
from steerkit.models.zoo import cache_root, model_dir  # noqa: E402
from steerkit.quality.heldout import held_out_readout, stratified_folds  # noqa: E402
from steerkit.vectors.extract import DEFAULT_POOLING  # noqa: E402

PINS = ["torch==2.13.0", "transformers>=4.57,<5", "numpy<2", "steering-vectors==0.12.2", "repeng==0.4.0", "safetensors"]
LIBS = ["steering-vectors", "repeng"]
CHECK = "The lighthouse keeper counted the ships that passed in the night."


def ensure_env(venv: Path) -> Path:
    """The peer environment's python, created (and pinned) on first use; a marker file says it is complete."""
    py, ok = venv / "bin" / "python", venv / ".steerkit-peers"
    if ok.is_file() and ok.read_text() == "\n".join(PINS) and py.is_file():
        return py
    shutil.rmtree(venv, ignore_errors=True)
    print(f"creating the peer environment {venv} (once; a few minutes)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, PINS[0]], check=True)  # torch first, alone: the local CPU wheel
    subprocess.run([*pip, *PINS], check=True)
    ok.write_text("\n".join(PINS))
    return py


def select(corpus, per_concept: int, n_concepts: int | None = None) -> tuple[list[str], list[int], list[str]]:
    """The first `per_concept` single-concept stories of each of the first `n_concepts` concepts (all by
    default): texts, labels (index into the returned names)."""
    names, seen, texts, labels = list(corpus.names)[:n_concepts], {}, [], []
    for t in corpus.texts:
        if len(t.concepts) != 1 or next(iter(t.concepts)) not in names:
            continue
        c = next(iter(t.concepts))
        if seen.get(c, 0) < per_concept:
            seen[c] = seen.get(c, 0) + 1
            texts.append(t.text)
            labels.append(names.index(c))
    return texts, labels, names


def negatives(labels: list[int], folds: list[int], seed: int) -> dict[str, list[int]]:
    """For each story, other-concept stories to pair it with, in a seeded order; the worker takes the
    first one that is in the same training set. Candidates from every fold, so each fold finds one."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, lab in enumerate(labels):
        others = [j for j, b in enumerate(labels) if b != lab]
        order = torch.randperm(len(others), generator=g).tolist()
        cands = [others[k] for k in order]
        # keep one candidate per fold at least (the first of each fold in the shuffled order)
        picked, folds_seen = [], set()
        for j in cands:
            if folds[j] not in folds_seen:
                picked.append(j)
                folds_seen.add(folds[j])
            if len(folds_seen) == len(set(folds)):
                break
        out[str(i)] = picked
    return out


def steerkit_extract(lm, texts: list[str], layers: list[int], labels: torch.Tensor, n: int) -> tuple[float, dict]:
    """Time steerkit's extract path (cold capture at the default pooling + CAA for every concept)."""
    from steerkit.quality.metrics import diff_of_means

    t = time.perf_counter()
    res = capture(lm, texts, layers, pooling=DEFAULT_POOLING, cache_dir=None)
    pos = torch.nn.functional.one_hot(labels, n).T.bool()  # (C, N)
    for la in layers:
        diff_of_means(res.resid[la], pos, ~pos)  # (C, H)
    return time.perf_counter() - t, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="zoo alias or a local HF folder (the peers load its files)")
    ap.add_argument("--corpus", default=str(ROOT / "corpora"))
    ap.add_argument("--per-concept", type=int, default=6)
    ap.add_argument("--folds", type=int, default=3, help="held-out folds (each fold re-runs the peers: 3 fits 2 cores)")
    ap.add_argument("--concepts", type=int, default=None, help="only the first N concepts (a smoke test)")
    ap.add_argument("--batch", type=int, default=8, help="peer libraries' batch size")
    ap.add_argument("--venv", default=str(cache_root() / "peer-venv"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    py = ensure_env(Path(args.venv))
    lm = load(args.model)
    corpus = load_corpus(Path(args.corpus))
    texts, labels, names = select(corpus, args.per_concept, args.concepts)
    lab = torch.tensor(labels)
    layers = default_spread(lm.adapter.n_blocks(lm.model))
    folds = stratified_folds(lab, args.folds, seed=0).tolist()
    ids = lm.tokenizer(CHECK).input_ids
    with torch.inference_mode():
        logits = lm.model(torch.tensor([ids])).logits[0, -1].float()
    rope = (
        lm.model.config.rope_parameters["rope_theta"]
        if getattr(lm.model.config, "rope_parameters", None)
        else lm.model.config.rope_theta
    )
    local = Path(args.model)
    job = {"model_dir": str(local if local.is_dir() else model_dir(args.model)), "rope_theta": float(rope), "texts": texts, "labels": labels,
           "n_concepts": len(names), "folds": folds, "k_folds": args.folds, "layers": layers, "batch": args.batch,
           "negative_of": negatives(labels, folds, seed=0), "libs": LIBS, "threads": torch.get_num_threads(),
           "check": {"text": CHECK, "ids": ids, "logits": logits.tolist()},
           "special_tokens": {k: v for k, v in lm.tokenizer.special_tokens_map.items() if isinstance(v, str)}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        jp = Path(tmp) / "job.json"
        jp.write_text(json.dumps(job))
        subprocess.run(
            [str(py), str(ROOT / "benchmarks" / "peers_worker.py"), str(jp), str(Path(tmp) / "out")], check=True
        )
        info = json.loads((Path(tmp) / "out.json").read_text())
        from safetensors.torch import load_file

        vecs = load_file(str(Path(tmp) / "out.safetensors"))
    seconds, res = steerkit_extract(lm, texts, layers, lab, len(names))
    last = capture(lm, texts, layers, pooling=parse_pooling("last"), cache_dir=None)
    pooled = {"last": last, DEFAULT_POOLING.name: res}
    fold_t = torch.tensor(folds)

    def fold_of(mask: torch.Tensor) -> int:
        return int(fold_t[~mask][0])

    readout: dict = {}
    for lib in ["steerkit", *LIBS]:
        readout[lib] = {}
        for pname, r in pooled.items():
            per_layer = {}
            for li, la in enumerate(layers):
                acts = r.resid[la]  # (N, H)
                fn = None if lib == "steerkit" else (lambda m, lib=lib, li=li: vecs[f"{lib}/fold{fold_of(m)}"][:, li])
                h = held_out_readout(acts, lab, len(names), args.folds, seed=0, vector_fn=fn)
                per_layer[la] = {"top1": round(h.top1_overall, 4), "top3": round(h.top3_overall, 4)}
            best = max(per_layer.items(), key=lambda kv: (kv[1]["top3"], kv[1]["top1"]))
            readout[lib][pname] = {"per_layer": per_layer, "best_layer": best[0], **best[1]}
    times = {"steerkit": round(seconds, 3), **{k: v["extract_seconds"] for k, v in info["libs"].items()}}
    out = {"model": args.model, "n_texts": len(texts), "n_concepts": len(names), "layers": layers, "k_folds": args.folds,
           "extract_seconds": times, "extract_ratio_vs_steerkit": {k: round(v / seconds, 3) for k, v in times.items()},
           "forwards": {"steerkit": len(texts), **{k: v["forwards"] for k, v in info["libs"].items()}},
           "readout": readout, "peer_check": info["check"], "peer_versions": info["versions"]}  # fmt: skip
    print(f"{'library':<18}{'extract x':>10}  " + "  ".join(f"{p + ' top3':>20}" for p in pooled))
    for lib in readout:
        cells = "  ".join(f"{readout[lib][p]['top3']:>14.3f} (L{readout[lib][p]['best_layer']:>2})" for p in pooled)
        print(f"{lib:<18}{out['extract_ratio_vs_steerkit'][lib]:>10.2f}  {cells}")
    print(
        f"peer logits vs steerkit: max |diff| {info['check']['max_abs_logit_diff']:.2e}, same ids {info['check']['same_ids']}"
    )
    if args.json:
        tmpj = Path(args.json).with_suffix(".tmp")
        tmpj.write_text(json.dumps(out, indent=1))
        os.replace(tmpj, args.json)


if __name__ == "__main__":
    main()
