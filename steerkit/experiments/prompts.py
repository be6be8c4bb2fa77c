"""What both experiments share about prompts: the Prompt record, the prompt-file reader and the
per-unit sampling seeds (`arm_seed`), so that intervene and steer-eval draw the same way."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ExperimentError


@dataclass(frozen=True)
class Prompt:
    """A prompt and its fixed continuation for teacher forcing (None: made greedily at run time)."""

    text: str
    continuation: str | None = None


def arm_seed(seed: int, prompt: int, arm: int, draw: int) -> int:
    """The sampling seed of draw `draw` in arm `arm` (0 = free, k = level k) for prompt `prompt`."""
    ss = np.random.SeedSequence([int(seed), int(prompt), int(arm), int(draw)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


# ---- prompts ---------------------------------------------------------------------------------
def default_prompts_path() -> Path:
    """corpora/prompts/default.jsonl of the source tree, else of the working directory."""
    here = Path(__file__).resolve().parents[2] / "corpora" / "prompts" / "default.jsonl"
    return here if here.is_file() else Path("corpora") / "prompts" / "default.jsonl"


def load_prompts(path: str | Path | None = None) -> list[Prompt]:
    """Prompts from a .jsonl ({"prompt": ..., "continuation": ...} per line; continuation optional)
    or a text file (one prompt per line, optionally `prompt ||| continuation`; blank lines and
    lines starting with # are skipped). None: the default prompt set."""
    from ..validate import PROMPT_LINE_SCHEMA, check_schema, check_text_size, expect_file, read_text

    p = Path(path) if path is not None else default_prompts_path()
    expect_file(p, "prompt file", ExperimentError, "pass --prompts FILE (.jsonl or .txt)")
    out: list[Prompt] = []
    for n, line in enumerate(read_text(p, "prompt file", ExperimentError).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        check_text_size(line, f"{p}:{n}", ExperimentError)
        if p.suffix == ".jsonl":
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ExperimentError(
                    f'{p}:{n}: expected {{"prompt": "...", "continuation": "..."}} ({e.msg} at column {e.colno})'
                ) from e
            check_schema(obj, PROMPT_LINE_SCHEMA, f"{p}:{n}", ExperimentError)
            text, cont = obj["prompt"], obj.get("continuation")
        else:
            text, sep, cont = line.partition("|||")
            cont = cont if sep else None
            text = text.strip()
            cont = None if cont is None else " " + cont.strip()
        if not isinstance(text, str) or not text.strip():
            raise ExperimentError(f"{p}:{n}: empty prompt")
        if cont is not None and (not isinstance(cont, str) or not cont.strip()):
            cont = None
        out.append(Prompt(text, cont))
    if not out:
        raise ExperimentError(f"prompt file {p} holds no prompts; put one prompt per line")
    return out
