"""Training text: read, split by text into train/validation, tokenise into fixed-length chunks,
and a batch order that is a pure function of (seed, step), so a resumed run sees the same batches."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CorpusError, SteerkitError
from ..textio import read_texts


def default_text_path() -> Path:
    """corpora/stories of the source tree, else of the working directory."""
    here = Path(__file__).resolve().parents[2] / "corpora" / "stories"
    return here if here.is_dir() else Path("corpora") / "stories"


def load_texts(paths: tuple[str, ...] | list[str]) -> list[str]:
    """Texts from .txt (blocks separated by lines holding only ---) / .jsonl files or folders.
    No paths: the story corpus (corpora/stories)."""
    if not paths:
        default = default_text_path()
        if not default.is_dir():
            raise CorpusError(f"no --text given and the default stories folder {default} is missing; pass --text FILE")
        paths = [str(default)]
    texts: list[str] = []
    for p in paths:
        try:
            texts.extend(t for t, _ in read_texts(p))
        except CorpusError:
            raise
        except SteerkitError as e:
            raise CorpusError(str(e)) from e
    return texts


@dataclass
class Chunks:
    train: torch.Tensor  # (n_train, seq_len) token ids
    val: torch.Tensor  # (n_val, seq_len)
    n_texts: tuple[int, int]  # texts in (train, val)


def _tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    """All texts tokenised and joined, each followed by eos when the tokenizer has one."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(int(eos))
    return ids


def _chunk(ids: list[int], seq_len: int) -> torch.Tensor:
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).reshape(n, seq_len)  # (n, seq_len)


def make_chunks(tokenizer: Any, texts: list[str], seq_len: int, val_fraction: float, seed: int) -> Chunks:
    """Shuffle texts with `seed`, hold out val_fraction of them (at least one), chunk each side."""
    if len(texts) < 2:
        raise CorpusError(f"need at least 2 texts (one for validation), got {len(texts)}; pass more --text")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_val = min(len(texts) - 1, max(1, round(val_fraction * len(texts))))
    val_texts = [texts[i] for i in order[:n_val]]
    train_texts = [texts[i] for i in order[n_val:]]
    train, val = _chunk(_tokens(tokenizer, train_texts), seq_len), _chunk(_tokens(tokenizer, val_texts), seq_len)
    if len(val) == 0 or len(train) == 0:
        which = "validation" if len(val) == 0 else "training"
        raise CorpusError(
            f"the {which} split has fewer than seq_len={seq_len} tokens; give more text, "
            "a smaller --seq-len or a larger --val-fraction"
        )
    return Chunks(train, val, (len(train_texts), len(val_texts)))


def batch_indices(step: int, n_chunks: int, batch_size: int, seed: int) -> torch.Tensor:
    """Chunk indices of training step `step` (1-based): consecutive slices of a fresh seeded
    permutation per epoch. A pure function of its arguments."""
    out = []
    for pos in range((step - 1) * batch_size, step * batch_size):
        epoch, i = divmod(pos, n_chunks)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        out.append(int(torch.randperm(n_chunks, generator=g)[i]))
    return torch.tensor(out, dtype=torch.long)  # (batch,)
