"""Preference pairs: the corpus builder (`steerkit corpus pairs`) on the real corpus, the shipped
valence pairs, datasets folders, the held-out split and the truncation of batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from steerkit.cli import main
from steerkit.corpus import load
from steerkit.errors import CorpusError
from steerkit.training.pairs import (
    Pair,
    corpus_pairs,
    load_pairs,
    pair_batch,
    shared_opening,
    split_pairs,
    tokenize_pairs,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus():
    return load(ROOT / "corpora", strict=False)


def _texts(corpus):
    return {(s, k): corpus.texts[i].text for s, m in corpus.scenarios.items() for k, i in m.items()}


def test_valence_pairs_are_matched_framings_of_held_out_scenarios(corpus):
    rows, counts = corpus_pairs(corpus, "valence")
    texts = _texts(corpus)
    score = {c.name: c.valence for c in corpus.concepts}
    assert counts["pairs"] == len(rows) > 20
    for r in rows:
        assert texts[(r["scenario"], r["chosen_concept"])] == r["prompt"] + r["chosen"]
        assert texts[(r["scenario"], r["rejected_concept"])] == r["prompt"] + r["rejected"]
        assert r["prompt"].endswith((".", "!", "?", '"')) and r["chosen"] != r["rejected"]
        assert score[r["chosen_concept"]] - score[r["rejected_concept"]] >= 0.3
    val = {r["scenario"] for r in rows if r["split"] == "validation"}
    train = {r["scenario"] for r in rows if r["split"] == "train"}
    assert val and train and not val & train  # whole scenarios held out


def test_shipped_valence_pairs_load_and_match_the_builder_format(tmp_path):
    pairs = load_pairs(ROOT / "corpora" / "preferences" / "valence.jsonl")
    assert len(pairs) > 20 and {p.split for p in pairs} == {"train", "validation"}
    train, val = split_pairs(pairs, 0.5, 0)
    assert {pairs[i].scenario for i in train}.isdisjoint({pairs[i].scenario for i in val})


def test_concept_axis_and_cli(tmp_path, corpus):
    rows, _ = corpus_pairs(corpus, "concept:calm,anxious")
    assert rows and all(r["chosen_concept"] == "calm" and r["rejected_concept"] == "anxious" for r in rows)
    with pytest.raises(CorpusError, match="unknown concept"):
        corpus_pairs(corpus, "concept:calm,nosuch")
    with pytest.raises(CorpusError, match="valence, arousal or concept"):
        corpus_pairs(corpus, "dominance!")
    out = tmp_path / "p.jsonl"
    res = CliRunner().invoke(main, ["corpus", "pairs", str(ROOT / "corpora"), "--axis", "arousal", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "pairs" in res.output and len(load_pairs(out)) > 0
    res = CliRunner().invoke(main, ["corpus", "pairs", str(ROOT / "corpora"), "--axis", "concept:calm"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "two different concepts" in res.output


def test_shared_opening_cuts_at_sentence_ends():
    a, b = "One two. Three four! Five six. Seven x", "One two. Three four! Five six. Seven y"
    assert shared_opening(a, b) == "One two. Three four! Five six."
    assert shared_opening(a, b, max_words=4) == "One two. Three four!"
    assert shared_opening(a, b, max_words=1) == "One two."  # the first sentence even when longer
    assert shared_opening("No end here x", "No end here y") == ""


def test_datasets_folder_with_splits(tmp_path):
    import datasets

    row = {"prompt": "a b", "chosen": " c", "rejected": " d"}
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list([row] * 3), "test": datasets.Dataset.from_list([row])}
    )
    dd.save_to_disk(str(tmp_path / "ds"))
    pairs = load_pairs(tmp_path / "ds")
    assert [p.split for p in pairs] == ["train"] * 3 + ["validation"]
    datasets.Dataset.from_list([{"prompt": "a", "chosen": "b"}]).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(CorpusError, match="lacks column"):
        load_pairs(tmp_path / "bad")


def test_batch_is_prompt_plus_completion_cut_to_seq_len(tiny_tok):
    pairs = [
        Pair("the cat", " sat on the warm mat.", " ran.", 1),
        Pair("she", " made tea.", " walked home in the rain.", 2),
    ]
    tp = tokenize_pairs(tiny_tok, pairs, seq_len=10)
    ids, att, cm = pair_batch(tp, [0, 1], tiny_tok.pad_token_id)
    assert ids.shape == (4, 10) and int(att.sum(1).max()) == 10
    for r, i in enumerate([0, 1, 0, 1]):
        side = tp.chosen if r < 2 else tp.rejected
        n = min(10, len(tp.prompt[i]) + len(side[i]))
        assert ids[r, :n].tolist() == (tp.prompt[i] + side[i])[:n]
        assert cm[r].tolist() == [0] * len(tp.prompt[i]) + [1] * (n - len(tp.prompt[i])) + [0] * (10 - n)
    assert tp.chosen[1][-1] == tiny_tok.eos_token_id  # EOS ends each completion (when it fits)
    assert json.loads(json.dumps(tp.lines)) == [1, 2]


def test_truncation_warns_with_the_share_dropped_and_the_seq_len_that_fits(tiny_tok, caplog):
    pairs = [Pair("the cat", " sat on the warm mat by the door.", " ran.", 1), Pair("she", " ok.", " no.", 2)]
    full = tokenize_pairs(tiny_tok, pairs, seq_len=1024)
    need = max(len(p) + max(len(c), len(r)) for p, c, r in zip(full.prompt, full.chosen, full.rejected, strict=True))
    with caplog.at_level("WARNING", logger="steerkit.training.pairs"):
        tokenize_pairs(tiny_tok, pairs, seq_len=need)
    assert not caplog.records  # everything fits: silent
    room = need - 2
    with caplog.at_level("WARNING", logger="steerkit.training.pairs"):
        tokenize_pairs(tiny_tok, pairs, seq_len=room)
    (rec,) = caplog.records
    total = sum(len(c) + len(r) for c, r in zip(full.chosen, full.rejected, strict=True))
    kept = sum(min(len(s), room - len(p)) for p, c, r in zip(full.prompt, full.chosen, full.rejected, strict=True)
               for s in (c, r))  # fmt: skip
    assert f"1 of 2 pairs in --pairs are cut to --seq-len {room}" in rec.getMessage()
    assert f"{100 * (1 - kept / total):.0f}% of the completion tokens" in rec.getMessage()
    assert f"(--seq-len {need} keeps them all)" in rec.getMessage()
