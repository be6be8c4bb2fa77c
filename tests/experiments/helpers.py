"""Helpers shared by the experiment tests: deterministic word prompts and a phase setup."""

from __future__ import annotations

import torch

WORDS = (
    "the cat sat on a warm mat while rain fell over the quiet town and she made tea for her old friend "
    "he opened the letter at the kitchen table once upon a time in a small village there lived a baker"
).split()


def word_prompts(n: int, seed: int = 0, length: int = 5, cont: int = 6):
    """n prompts of `length` words with a fixed continuation of `cont` words (deterministic)."""
    from steerkit.experiments import Prompt

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        idx = torch.randint(0, len(WORDS), (length + cont,), generator=g).tolist()
        words = [WORDS[i] for i in idx]
        out.append(Prompt(" ".join(words[:length]).capitalize(), " " + " ".join(words[length:]) + "."))
    return out


def make_setup(lm, name: str = "additive", alpha: float = 0.5, layer: int = 2, seed: int = 1):
    from steerkit.experiments import Setup
    from steerkit.phase import CouplingConfig, PhaseConfig, PhaseCore, make_coupling

    hidden = int(lm.model.get_input_embeddings().weight.shape[1])
    torch.manual_seed(seed)
    core = PhaseCore(hidden, PhaseConfig(n_oscillators=16, drive_std=2.0)).eval()
    coupling = make_coupling(CouplingConfig(name=name, alpha=alpha), hidden).eval()
    return Setup(lm, core, coupling, layer)
