"""Runs inside the peer environment (transformers < 5, numpy < 2): never imports steerkit.

Reads a job JSON written by benchmarks/peers.py, loads the same model from its safetensors folder
(rope_theta set explicitly: transformers 4.x misreads a transformers-5 `rope_parameters` as 10000),
checks that it computes the same logits as steerkit's environment, then for each peer library
builds one vector per concept and layer from (concept story, other-concept story) pairs:
  - once on all texts, timed (the extract-time comparison);
  - once per fold on that fold's training pairs only (the held-out readout, scored by peers.py).
Writes OUT.safetensors ({lib}/full and {lib}/fold{f}: (C, L, H) float32) and OUT.json (times,
versions, the logit check).

    PEER_PYTHON benchmarks/peers_worker.py JOB.json OUT
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch


def load(job: dict):
    import os

    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    cfg = AutoConfig.from_pretrained(job["model_dir"])
    cfg.rope_theta = job["rope_theta"]  # transformers 4.x reads transformers-5 rope_parameters wrong
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], config=cfg, dtype=torch.float32).eval()
    # transformers 5 saves tokenizer_class "TokenizersBackend", which 4.x does not know: build the fast
    # tokenizer from tokenizer.json with the special tokens steerkit's side reported
    tok = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(job["model_dir"], "tokenizer.json"), **job["special_tokens"]
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def logit_check(model, tok, job: dict) -> dict:
    """Same token ids and logits as steerkit's environment computed (the job carries them)."""
    ids = tok(job["check"]["text"]).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].float()
    ref = torch.tensor(job["check"]["logits"])
    return {"same_ids": ids == job["check"]["ids"], "max_abs_logit_diff": float((logits - ref).abs().max())}


def pairs_for(job: dict, concept: int, keep: list[bool]) -> list[tuple[str, str]]:
    """(positive, negative) pairs of one concept among the kept texts: each of its stories with the
    negative peers.py chose for it (a story of another concept, also kept)."""
    texts, labels, neg = job["texts"], job["labels"], job["negative_of"]
    out = []
    for i, lab in enumerate(labels):
        if lab == concept and keep[i]:
            j = next(j for j in neg[str(i)] if keep[j])
            out.append((texts[i], texts[j]))
    return out


def steering_vectors_lib(model, tok, pairs: list[tuple[str, str]], layers: list[int], batch: int) -> np.ndarray:
    from steering_vectors import train_steering_vector

    sv = train_steering_vector(model, tok, pairs, layers=layers, batch_size=batch, show_progress=False)
    return np.stack([sv.layer_activations[la].float().numpy() for la in layers])  # (L, H)


def repeng_lib(model, tok, pairs: list[tuple[str, str]], layers: list[int], batch: int) -> np.ndarray:
    from repeng import ControlVector, DatasetEntry

    data = [DatasetEntry(positive=p, negative=n) for p, n in pairs]
    cv = ControlVector.train(model, tok, data, hidden_layers=layers, batch_size=batch)
    return np.stack([cv.directions[la] for la in layers])  # (L, H)


LIBS = {"steering-vectors": steering_vectors_lib, "repeng": repeng_lib}


def vectors(fn, model, tok, job: dict, keep: list[bool]) -> np.ndarray:
    """(C, L, H): one library call per concept, as a user extracting 49 concepts would."""
    return np.stack(
        [fn(model, tok, pairs_for(job, c, keep), job["layers"], job["batch"]) for c in range(job["n_concepts"])]
    )


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=RuntimeWarning)  # sklearn's PCA on a fold with one pair
    job = json.loads(open(sys.argv[1]).read())
    out = sys.argv[2]
    torch.manual_seed(0)
    torch.set_num_threads(job.get("threads") or torch.get_num_threads())
    model, tok = load(job)
    info: dict = {"check": logit_check(model, tok, job), "libs": {}}
    tensors: dict[str, torch.Tensor] = {}
    everyone = [True] * len(job["texts"])
    for name, fn in LIBS.items():
        if name not in job["libs"]:
            continue
        t = time.perf_counter()
        full = vectors(fn, model, tok, job, everyone)
        seconds = time.perf_counter() - t
        tensors[f"{name}/full"] = torch.from_numpy(np.ascontiguousarray(full, dtype=np.float32))
        n_fwd = 2 * sum(1 for x in job["labels"] if x >= 0)
        info["libs"][name] = {"extract_seconds": round(seconds, 3), "forwards": n_fwd}
        for f in range(job["k_folds"]):
            keep = [fo != f for fo in job["folds"]]  # fold f is held out
            tensors[f"{name}/fold{f}"] = torch.from_numpy(
                np.ascontiguousarray(vectors(fn, model, tok, job, keep), dtype=np.float32)
            )
        print(f"{name}: extract {seconds:.1f} s, {job['k_folds']} folds done", file=sys.stderr, flush=True)
    import importlib.metadata as md

    info["versions"] = {p: md.version(p) for p in ("torch", "transformers", "numpy", "steering-vectors", "repeng")}
    from safetensors.torch import save_file

    save_file(tensors, out + ".safetensors")
    with open(out + ".json", "w") as fh:
        json.dump(info, fh, indent=1)


if __name__ == "__main__":
    main()
