"""Preference pairs: loading and validating them, the train/validation split, tokenising them as
TRL 1.16's DPOTrainer does, padded batches, and building pairs from the story corpus.

Format (TRL's "standard preference" format): one JSON object per line with string fields
`prompt`, `chosen`, `rejected` (the continuations exclude the prompt), or a folder written by
`datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk` with those columns. Optional fields:
`split` ("train" / "validation"), `scenario` (pairs sharing it are held out together), and any
other keys (kept, ignored).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CorpusError

log = logging.getLogger(__name__)

FIELDS = ("prompt", "chosen", "rejected")
VAL_SPLITS = {"validation", "val", "test", "eval"}
SENTENCE_ENDS = (". ", "! ", "? ", '." ', '!" ', '?" ', ".\n", "!\n", "?\n")


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    line: int  # 1-based line (row + 1 for a datasets folder)
    scenario: str | None = None
    split: str | None = None


# ---- loading ---------------------------------------------------------------------------------
def load_pairs(path: str | Path) -> list[Pair]:
    """Pairs from a .jsonl file or a datasets folder; CorpusError (one line) on any bad pair."""
    p = Path(path)
    if p.is_dir():
        rows = _dataset_rows(p)
    elif p.is_file():
        rows = _jsonl_rows(p)
    else:
        raise CorpusError(f"--pairs {p} does not exist; pass a .jsonl file of {{prompt, chosen, rejected}} lines")
    pairs = [_check(p, line, obj) for line, obj in rows]
    if not pairs:
        raise CorpusError(f"--pairs {p} holds no pairs; put one {{prompt, chosen, rejected}} object per line")
    return pairs


def _jsonl_rows(p: Path) -> list[tuple[int, Any]]:
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise CorpusError(f"--pairs {p} is not UTF-8 (invalid byte on line {line}); re-save it as UTF-8") from e
    rows: list[tuple[int, Any]] = []
    for n, raw_line in enumerate(text.splitlines(), 1):
        if not raw_line.strip():
            continue
        try:
            rows.append((n, json.loads(raw_line)))
        except json.JSONDecodeError as e:
            raise CorpusError(f"{p}:{n}: not a JSON object ({e.msg}); one {{prompt, chosen, rejected}} per line") from e
    return rows


def _dataset_rows(p: Path) -> list[tuple[int, Any]]:
    try:
        import datasets
    except ImportError as e:
        raise CorpusError(f"--pairs {p} is a folder; reading a saved dataset needs `pip install datasets`") from e
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:
        raise CorpusError(f"--pairs {p} is not a folder written by datasets' save_to_disk ({type(e).__name__})") from e
    out: list[tuple[int, Any]] = []
    parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    for name, part in parts:
        missing = [f for f in FIELDS if f not in part.column_names]
        if missing:
            raise CorpusError(f"--pairs {p}: the dataset lacks column(s) {', '.join(missing)}; need {FIELDS}")
        for i, row in enumerate(part):
            row = dict(row)
            if name is not None:
                row.setdefault("split", "validation" if name in VAL_SPLITS else "train")
            out.append((len(out) + 1 if name is not None else i + 1, row))
    return out


def _check(p: Path, line: int, obj: Any) -> Pair:
    where = f"{p}:{line}"
    if not isinstance(obj, dict):
        raise CorpusError(f"{where}: expected an object with prompt, chosen, rejected")
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        raise CorpusError(f"{where}: missing field(s) {', '.join(missing)}; each pair needs prompt, chosen, rejected")
    bad = [f for f in FIELDS if not isinstance(obj[f], str)]
    if bad:
        raise CorpusError(f"{where}: {', '.join(bad)} must be text (plain strings, not chat messages)")
    empty = [f for f in ("chosen", "rejected") if not obj[f].strip()]
    if empty:
        raise CorpusError(f"{where}: empty {' and '.join(empty)}; give both continuations some text")
    if obj["chosen"] == obj["rejected"]:
        raise CorpusError(f"{where}: chosen and rejected are identical; a pair must differ")
    split = obj.get("split")
    split = None if split is None else ("validation" if str(split).lower() in VAL_SPLITS else "train")
    scen = obj.get("scenario")
    return Pair(obj["prompt"], obj["chosen"], obj["rejected"], line, None if scen is None else str(scen), split)


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices. Pairs carrying `split` use it; otherwise whole scenarios (or
    single pairs without one) are held out: a seeded val_fraction of them, at least one."""
    if any(p.split is not None for p in pairs):
        val = [i for i, p in enumerate(pairs) if p.split == "validation"]
        train = [i for i, p in enumerate(pairs) if p.split != "validation"]
    else:
        groups = sorted({p.scenario if p.scenario is not None else f"#{i}" for i, p in enumerate(pairs)})
        random.Random(seed).shuffle(groups)
        n_val = min(len(groups) - 1, max(1, round(val_fraction * len(groups))))
        held = set(groups[:n_val])
        key = [p.scenario if p.scenario is not None else f"#{i}" for i, p in enumerate(pairs)]
        val = [i for i in range(len(pairs)) if key[i] in held]
        train = [i for i in range(len(pairs)) if key[i] not in held]
    if not train or not val:
        which = "training" if not train else "validation"
        raise CorpusError(
            f"the {which} split of the pairs is empty ({len(pairs)} pairs); give more pairs, mark some "
            '"split": "validation" or change --val-fraction'
        )
    return train, val


# ---- tokens ----------------------------------------------------------------------------------
@dataclass
class TokenizedPairs:
    """prompt / chosen / rejected token ids per pair (chosen and rejected end with EOS), truncated
    together to seq_len tokens (TRL's keep_start)."""

    prompt: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    seq_len: int
    lines: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompt)

    def sha256(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.prompt, self.chosen, self.rejected, self.seq_len]).encode())
        return h.hexdigest()


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize_pairs(tokenizer: Any, pairs: list[Pair], seq_len: int, source: str = "--pairs") -> TokenizedPairs:
    """Tokenise as TRL's DPOTrainer: prompt, prompt + chosen, prompt + rejected; the completion starts
    where the tokenised prompt and prompt + completion part; EOS ends each completion. A prompt that
    leaves no room for a completion within seq_len is an error naming the pairs."""
    eos = tokenizer.eos_token_id
    out = TokenizedPairs([], [], [], seq_len)
    too_long: list[tuple[int, int]] = []
    for p in pairs:
        pids = list(tokenizer(p.prompt)["input_ids"])
        full = [
            list(tokenizer(p.prompt + c)["input_ids"]) + ([int(eos)] if eos is not None else [])
            for c in (p.chosen, p.rejected)
        ]
        n = min(len(pids), _common(pids, full[0]), _common(pids, full[1]))
        if n >= seq_len:
            too_long.append((p.line, n))
        out.prompt.append(pids[:n])
        out.chosen.append(full[0][n:])
        out.rejected.append(full[1][n:])
        out.lines.append(p.line)
    if too_long:
        line, n = too_long[0]
        raise CorpusError(
            f"{len(too_long)} of {len(pairs)} pairs in {source} have a prompt of --seq-len {seq_len} tokens or more "
            f"(first: line {line}, {n} tokens); raise --seq-len or shorten the prompts"
        )
    warn_truncation(out, source)
    return out


def warn_truncation(tp: TokenizedPairs, source: str) -> None:
    """Warn when --seq-len cuts completions: how many pairs, the share of completion tokens lost and
    the --seq-len that would keep them all (a preference learned from the first few tokens of each
    continuation is rarely the one the pairs were written for)."""
    cut, kept, total, longest = 0, 0, 0, 0
    for p, c, r in zip(tp.prompt, tp.chosen, tp.rejected, strict=True):
        room = tp.seq_len - len(p)
        longest = max(longest, len(p) + max(len(c), len(r)))
        cut += int(len(c) > room or len(r) > room)
        total += len(c) + len(r)
        kept += min(len(c), room) + min(len(r), room)
    if cut:
        log.warning(
            "%d of %d pairs in %s are cut to --seq-len %d: %.0f%% of the completion tokens are dropped "
            "(--seq-len %d keeps them all)",
            cut,
            len(tp),
            source,
            tp.seq_len,
            100 * (1 - kept / max(total, 1)),
            longest,
        )


def pair_batch(tp: TokenizedPairs, idx: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chosen rows then rejected rows, prompt + completion right-padded and cut to seq_len:
    ids, attention mask, completion mask, each (2 * len(idx), T)."""
    seqs, comp = [], []
    for side in (tp.chosen, tp.rejected):
        for i in idx:
            s = (tp.prompt[i] + side[i])[: tp.seq_len]
            seqs.append(s)
            comp.append(len(tp.prompt[i]))
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), t), dtype=torch.long)
    cm = torch.zeros((len(seqs), t), dtype=torch.long)
    for r, (s, c) in enumerate(zip(seqs, comp, strict=True)):
        ids[r, : len(s)] = torch.tensor(s)
        att[r, : len(s)] = 1
        cm[r, c : len(s)] = 1
    return ids, att, cm


# ---- pairs from the story corpus --------------------------------------------------------------
def shared_opening(a: str, b: str, max_words: int | None = None) -> str:
    """The longest common prefix of two texts, cut after a sentence end ('' if it holds none): the
    last one within max_words words (or the first one when even that is longer)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    head = a[:n]
    ends = sorted({i + 1 for e in SENTENCE_ENDS for i in _find_all(head, e)})  # cut positions (after the mark)
    if not ends:
        return ""
    if max_words is not None:
        within = [c for c in ends if len(a[:c].split()) <= max_words]
        ends = within or ends[:1]
    return a[: ends[-1]].rstrip()


def _find_all(text: str, sub: str) -> list[int]:
    out, i = [], text.find(sub)
    while i >= 0:
        out.append(i + len(sub.rstrip()) - 1)
        i = text.find(sub, i + 1)
    return out


def corpus_pairs(
    corpus: Any,
    axis: str,
    *,
    min_gap: float = 0.3,
    val_fraction: float = 0.3,
    seed: int = 0,
    max_prompt_words: int | None = 30,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Pairs from the paired scenarios of a loaded corpus (steerkit.corpus.Corpus).

    axis 'valence' / 'arousal': within each scenario every two framings whose manifest score differs
    by at least min_gap; chosen = the higher. axis 'concept:A,B': chosen = A's framing, rejected = B's,
    in every scenario that has both. prompt = the two framings' shared opening, cut at a sentence end
    (pairs without one are skipped); chosen / rejected = the rest of each framing. Whole scenarios
    (a seeded val_fraction, at least one) are marked "split": "validation".
    Returns (rows, counts) with counts of pairs made and skipped."""
    score: dict[str, float] = {}
    order: list[tuple[str, str]] | None = None
    if axis in ("valence", "arousal"):
        score = {c.name: float(getattr(c, axis)) for c in corpus.concepts}
    elif axis.startswith("concept:"):
        names = [x.strip() for x in axis[len("concept:") :].split(",")]
        if len(names) != 2 or not all(names) or names[0] == names[1]:
            raise CorpusError(f"--axis {axis!r}: name two different concepts, e.g. concept:calm,anxious")
        unknown = [n for n in names if n not in corpus.names]
        if unknown:
            raise CorpusError(f"--axis {axis!r}: unknown concept(s) {', '.join(unknown)}; see `steerkit corpus stats`")
        order = [(names[0], names[1])]
    else:
        raise CorpusError(f"--axis {axis!r}: use valence, arousal or concept:A,B")
    rows: list[dict[str, Any]] = []
    skipped = 0
    for scen in sorted(corpus.scenarios):
        framings = {k: corpus.texts[i].text for k, i in corpus.scenarios[scen].items() if k != "baseline"}
        cands: list[tuple[str, str]] = []
        if order is not None:
            cands = [(a, b) for a, b in order if a in framings and b in framings]
        else:
            names = sorted(n for n in framings if n in score)
            for i, a in enumerate(names):
                for b in names[i + 1 :]:
                    if abs(score[a] - score[b]) >= min_gap:
                        cands.append((a, b) if score[a] > score[b] else (b, a))
        for a, b in cands:
            prompt = shared_opening(framings[a], framings[b], max_prompt_words)
            if not prompt:
                skipped += 1
                continue
            row: dict[str, Any] = {
                "prompt": prompt,
                "chosen": framings[a][len(prompt) :],
                "rejected": framings[b][len(prompt) :],
                "scenario": scen,
                "chosen_concept": a,
                "rejected_concept": b,
            }
            if score:
                row[f"{axis}_gap"] = round(score[a] - score[b], 4)
            rows.append(row)
    scenarios = sorted({r["scenario"] for r in rows})
    if len(scenarios) < 2:
        raise CorpusError(
            f"--axis {axis!r} gives pairs in {len(scenarios)} scenario(s); need two or more for a held-out split "
            "(lower --min-gap or pick concepts that share scenarios)"
        )
    rng = random.Random(seed)
    shuffled = scenarios[:]
    rng.shuffle(shuffled)
    held = set(shuffled[: min(len(scenarios) - 1, max(1, round(val_fraction * len(scenarios))))])
    for r in rows:
        r["split"] = "validation" if r["scenario"] in held else "train"
    counts = {"pairs": len(rows), "skipped": skipped, "validation": sum(r["split"] == "validation" for r in rows)}
    return rows, counts


def write_pairs(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """JSONL, one pair per line, written atomically."""
    from ..io import atomic_write_bytes

    p = Path(path)
    atomic_write_bytes(p, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
    return p
