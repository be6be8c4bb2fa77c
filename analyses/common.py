"""Helpers shared by the analyses (never imported by steerkit).

Each analysis runs as `.venv/bin/python analyses/<name>.py [--quick]` and writes
analyses/results/<name>/ (report.md, results.json, PNGs). `--quick` runs on a tiny random model and
a small corpus in seconds (the test suite runs every analysis that way; its results go to a
temporary folder, never over the committed ones).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "analyses" / "results"
FULL_CORPUS = ROOT / "corpora"
DEFAULT_MODEL = "smollm2-135m"  # every analysis's full run; `--model` runs another beside it
QUICK_CORPUS = ROOT / "tests" / "fixtures" / "corpus_small"


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    p.add_argument("--quick", action="store_true", help="tiny random model, small corpus: seconds (for tests)")
    p.add_argument(
        "--out",
        default=None,
        help="results folder (default: analyses/results/<name> for the full run; a temporary folder with --quick, "
        "so a quick run never overwrites the committed study)",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="model spec for the full run")
    p.add_argument("--corpus", default=None, help="corpus folder for the full run (default corpora/)")
    p.add_argument("--keep", action="store_true", help="keep the temporary working folder (runs, reports)")
    return p


def out_dir(name: str, args: argparse.Namespace) -> Path:
    """Where results go: --out when given; the committed analyses/results/<name> only for a full run
    of the default model, analyses/results/<name>/by_model/<model> for another model (beside it, never
    over it); a quick run without --out writes to a fresh temporary folder (printed)."""
    model = getattr(args, "model", DEFAULT_MODEL)
    if args.out:
        d = Path(args.out)
    elif not args.quick and model != DEFAULT_MODEL:
        d = RESULTS / name / "by_model" / (Path(model).name if Path(model).is_dir() else model.replace("/", "--"))
    elif args.quick:
        import tempfile

        d = Path(tempfile.mkdtemp(prefix=f"steerkit-{name}-quick-"))
        print(f"--quick without --out: results go to {d} (analyses/results/{name} holds the full run)")
    else:
        d = RESULTS / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def seed_all(seed: int = 0) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def tiny_lm(n_layers: int = 4, hidden: int = 32, seed: int = 0) -> Any:
    """A tiny random Llama and a byte-level BPE tokenizer trained on the quick corpus, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from steerkit.corpus import load as load_corpus
    from steerkit.models.loading import from_model

    texts = [t.text for t in load_corpus(QUICK_CORPUS).texts]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id)  # fmt: skip
    return from_model(LlamaForCausalLM(cfg).eval(), fast, spec=f"tiny-llama-{seed}")


def model_for(args: argparse.Namespace) -> Any:
    if args.quick:
        return tiny_lm()
    from steerkit.models import load

    return load(args.model)


def corpus_for(args: argparse.Namespace) -> Path:
    if args.quick:
        return QUICK_CORPUS
    return Path(args.corpus) if getattr(args, "corpus", None) else FULL_CORPUS


@dataclass
class Clock:
    t0: float = 0.0

    def __post_init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.t0, 1)


def environment() -> dict[str, Any]:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def write_results(d: Path, results: dict[str, Any], report_md: str) -> None:
    from steerkit.io import atomic_write_bytes

    atomic_write_bytes(d / "results.json", json.dumps(results, indent=1, default=_json_default).encode())
    atomic_write_bytes(d / "report.md", report_md.encode())


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    raise TypeError(type(x).__name__)


def bootstrap_ci(fn: Any, n: int, draws: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of fn(index array) over `draws` resamples (with replacement) of n items."""
    rng = np.random.default_rng(seed)
    vals = np.array([fn(rng.integers(0, n, n)) for _ in range(draws)], dtype=float)
    vals = vals[np.isfinite(vals)]
    lo, hi = np.quantile(vals, [(1 - level) / 2, 1 - (1 - level) / 2]) if len(vals) else (np.nan, np.nan)
    return float(lo), float(hi)


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A markdown table."""
    fmt = [[f"{x:.3f}" if isinstance(x, float) else str(x) for x in r] for r in rows]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in fmt]
    return "\n".join(out)


@contextmanager
def scratch(name: str, keep: bool = False) -> Iterator[Path]:
    """A temporary working folder for an analysis's runs, removed afterwards unless `keep`
    (then its path is printed, so the runs can be inspected)."""
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    try:
        yield work
    finally:
        if keep:
            print(f"working folder kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


@contextmanager
def figure(path: Path, size: tuple[float, float] = (7, 5)) -> Iterator[Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=size)
    try:
        yield fig
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def steerkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `steerkit ARGS` as a user would (the venv's console script, from `cwd`, default the repository
    root); raise with its last lines on failure."""
    exe = Path(sys.executable).with_name("steerkit")
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd or ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"steerkit {' '.join(args[:3])}... failed: {(proc.stderr or proc.stdout)[-800:]}")
    return proc


def neutral_prompts(work: Path, n: int) -> str:
    """The first n of steer-eval's default neutral prompts, written to work/prompts.jsonl; its path."""
    src = ROOT / "corpora" / "prompts" / "neutral_openings.jsonl"
    (work / "prompts.jsonl").write_text("\n".join(src.read_text().splitlines()[:n]) + "\n")
    return str(work / "prompts.jsonl")
