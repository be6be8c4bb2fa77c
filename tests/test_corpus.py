"""Corpus loader against hand-computed positives/negatives; every error from its own fixture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from steerkit.cli import main
from steerkit.corpus import avoid_hits, jaccard_shingles, load, split_stories
from steerkit.corpus.text import near_duplicates, shingles
from steerkit.errors import CorpusError

FIXTURE = Path(__file__).parent / "fixtures" / "corpus_small"
ROOT = Path(__file__).resolve().parents[1]


def test_loader_positives_negatives_by_hand():
    c = load(FIXTURE)
    assert c.names == ["calm", "angry", "happy", "sad"]
    assert len(c.texts) == 12 + 2 + 4  # 12 stories, 2 baselines, 4 framings
    assert len(c.neutral) == 3
    where = {t.where: i for i, t in enumerate(c.texts)}
    calm_pos = {
        where["stories/calm.txt:1"],
        where["stories/calm.txt:3"],
        where["stories/calm.txt:5"],
        where["paired/park/calm.txt:1"],
    }
    assert set(c.positives("calm")) == calm_pos
    assert set(c.negatives("calm")) == set(range(len(c.texts))) - calm_pos
    assert where["paired/park/baseline.txt:1"] in c.negatives("angry")
    assert c.scenarios["park"] == {
        "baseline": where["paired/park/baseline.txt:1"],
        "calm": where["paired/park/calm.txt:1"],
        "angry": where["paired/park/angry.txt:1"],
    }
    assert c.report.errors == []


def test_split_stories_lines():
    raw = "first story\nline two\n---\n\nsecond\n---\n   \n"
    assert split_stories(raw) == [(1, "first story\nline two"), (5, "second"), (8, "")]


def _copy(tmp_path: Path) -> Path:
    d = tmp_path / "c"
    shutil.copytree(FIXTURE, d)
    return d


def _mutate_missing_manifest(d):
    (d / "manifest.json").unlink()


def _mutate_bad_json(d):
    (d / "manifest.json").write_text("{not json")


def _mutate_unlisted(d):
    (d / "stories" / "proud.txt").write_text("She held up the trophy in front of the whole school and stood tall.")


def _mutate_unused(d):
    m = json.loads((d / "manifest.json").read_text())
    m["concepts"].append({**m["concepts"][0], "name": "bored", "avoid": []})
    (d / "manifest.json").write_text(json.dumps(m))


def _mutate_non_utf8(d):
    (d / "stories" / "sad.txt").write_bytes(b"The rain fell \xff\xfe on the roof.")


def _mutate_no_baseline(d):
    (d / "paired" / "park" / "baseline.txt").unlink()


def _mutate_case(d):
    (d / "stories" / "Calm.txt").write_text("The pond was flat and grey and nothing moved on it all morning.")


def _mutate_few_positives(d):
    (d / "stories" / "happy.txt").write_text("Only one story, with a grin on every face.")
    shutil.rmtree(d / "paired" / "kitchen")


def _mutate_manifest(d, change):
    m = json.loads((d / "manifest.json").read_text())
    change(m)
    (d / "manifest.json").write_text(json.dumps(m))


def _mutate_dominance(d):
    _mutate_manifest(d, lambda m: m["concepts"][0].update(dominance=1.5))


def _mutate_stand_in(d):
    _mutate_manifest(d, lambda m: m.update(norms={"source": "x", "stand_ins": {"calm": "still", "clam": "x"}}))


def _mutate_norms(d):
    _mutate_manifest(d, lambda m: m.update(norms=["NRC"]))


def _mutate_symlink(d):
    (d / "stories" / "extra.txt").symlink_to(d / "stories" / "sad.txt")


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (_mutate_missing_manifest, "manifest.json is missing"),
        (_mutate_bad_json, "malformed JSON"),
        (_mutate_unlisted, "'proud' has story files but is not in manifest.json"),
        (_mutate_unused, "'bored' is in manifest.json but has no stories"),
        (_mutate_non_utf8, "not UTF-8 (invalid byte at offset 14)"),
        (_mutate_no_baseline, "has no baseline.txt"),
        (_mutate_case, "differ only by case"),
        (_mutate_few_positives, "'happy' has 1 positives, fewer than --min-positives 3"),
        (_mutate_symlink, "symlinks are not allowed"),
        (_mutate_dominance, "(calm): valence must lie in [-1, 1], arousal and dominance in [0, 1]"),
        (_mutate_stand_in, "norms.stand_ins names 'clam', not in 'concepts'"),
        (_mutate_norms, "'norms' must be an object"),
    ],
)
def test_each_error_exits_2_with_one_line(tmp_path, mutate, needle):
    d = _copy(tmp_path)
    mutate(d)
    res = CliRunner().invoke(main, ["corpus", "check", str(d)])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert any(needle in e for e in errors), res.output
    with pytest.raises(CorpusError):
        load(d)


def test_allow_missing_turns_membership_errors_into_warnings(tmp_path):
    d = _copy(tmp_path)
    _mutate_unlisted(d)
    res = CliRunner().invoke(main, ["corpus", "check", str(d), "--allow-missing"])
    assert res.exit_code == 0 and "warning: concept 'proud'" in res.output


def test_warnings_empty_avoid_duplicate_length(tmp_path):
    d = _copy(tmp_path)
    p = d / "stories" / "calm.txt"
    first = p.read_text().split("---")[0].strip()
    p.write_text(
        p.read_text()
        + "\n---\n   \n---\nIt was peaceful by the sea, the water flat and grey.\n---\n"
        + first.replace("pale sky", "pale blue sky")
        + "\n"
    )
    c = load(d, length_range=(20, 200))
    w = "\n".join(c.report.warnings)
    assert "empty story skipped" in w
    assert "avoid word(s) peaceful" in w
    assert "near duplicates" in w
    assert "outside 20-200" in w
    assert not c.report.errors


def test_helpers():
    assert avoid_hits("I felt so Angry, furious even", ["angry", "furious", "mad"]) == ["angry", "furious"]
    assert avoid_hits("the madness", ["mad"]) == []
    assert jaccard_shingles("a b c d e", "a b c d e") == 1.0
    assert shingles("A b, c d e") == {("a", "b", "c", "d"), ("b", "c", "d", "e")}
    assert shingles("two words") == {("two", "words")} and shingles(" ... ") == set()
    assert jaccard_shingles("a b c d e", "a b c d x") == 1 / 3  # {abcd, bcde} vs {abcd, bcdx}


def _append(path: Path, story: str) -> int:
    """Append a story after a --- line; returns its first line number."""
    old = path.read_text().rstrip()
    path.write_text(old + "\n---\n" + story + "\n")
    return len(old.splitlines()) + 2


def _first_story(path: Path) -> str:
    return path.read_text().split("---")[0].strip()


def test_a_text_under_two_concepts_is_an_error_and_extract_refuses_it(tmp_path):
    d = _copy(tmp_path)
    story = _first_story(d / "stories" / "sad.txt")
    n = _append(d / "stories" / "happy.txt", story)
    res = CliRunner().invoke(main, ["corpus", "check", str(d)])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"stories/happy.txt:{n} and stories/sad.txt:1 hold the same text" in errors[0]
    assert "labelled happy and sad" in errors[0]
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["extract", "--stories", str(d), "--model", "/no/such/model", "--out", str(out)])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert f"stories/happy.txt:{n} and stories/sad.txt:1" in lines[0] and not out.exists()


def test_a_framing_equal_to_its_baseline_is_an_error(tmp_path):
    d = _copy(tmp_path)
    (d / "paired" / "park" / "calm.txt").write_text((d / "paired" / "park" / "baseline.txt").read_text())
    c = load(d, strict=False)
    assert any("labelled calm and the baseline of park" in e for e in c.report.errors), c.report.errors
    with pytest.raises(CorpusError, match="paired/park/baseline.txt:1 and paired/park/calm.txt:1"):
        load(d)


def test_a_duplicate_within_one_concept_stays_a_warning(tmp_path):
    d = _copy(tmp_path)
    n = _append(d / "stories" / "sad.txt", _first_story(d / "stories" / "sad.txt"))
    _append(d / "paired" / "kitchen" / "sad.txt", "")  # one story still: an empty part is ignored
    c = load(d)
    assert c.report.errors == []
    assert f"stories/sad.txt:1: exact duplicate also at stories/sad.txt:{n}" in c.report.warnings
    assert len(c.positives("sad")) == 4  # stored once


def test_near_duplicates_across_concepts_warn_but_a_scenario_s_tellings_do_not(tmp_path):
    d = _copy(tmp_path)
    sad = _first_story(d / "stories" / "sad.txt")
    near = sad.replace("Jun sat on", "Jun knelt on")  # 29 words: 4-gram Jaccard 22/30
    n = _append(d / "stories" / "angry.txt", near)
    calm = (d / "paired" / "park" / "calm.txt").read_text()
    (d / "paired" / "park" / "calm.txt").write_text(calm + " Then he went back to work.")
    c = load(d)
    near_w = [w for w in c.report.warnings if "near duplicates" in w]
    assert near_w == [
        f"stories/angry.txt:{n} and stories/sad.txt:1: near duplicates (word 4-gram Jaccard "
        f"{jaccard_shingles(near, sad):.2f} > 0.3); rewrite one so they share less text"
    ]
    assert jaccard_shingles(near, sad) > 0.3 and not c.report.errors
    assert load(d, near_duplicate=0.9).report.warnings == [w for w in c.report.warnings if w not in near_w]


def test_near_duplicates_match_all_pairs_by_hand():
    import random

    rng = random.Random(0)
    vocab = ["w1", "w2"]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randrange(0, 20))) for _ in range(60)]
    texts += [texts[3], texts[5] + " w1 w2", "w1 w2"]
    brute = []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            a, b = shingles(texts[i]), shingles(texts[j])
            jac = len(a & b) / len(a | b) if a and b else 0.0
            if jac > 0.3:
                brute.append((i, j, jac))
    got = near_duplicates(texts, 0.3)
    assert [(i, j) for i, j, _ in got] == [(i, j) for i, j, _ in brute] and len(got) > 5
    assert all(abs(x[2] - y[2]) < 1e-12 for x, y in zip(got, brute, strict=True))


def test_real_corpus_passes_check_without_avoid_warnings():
    c = load(ROOT / "corpora")
    assert c.report.errors == []
    assert not [w for w in c.report.warnings if "avoid word" in w or "duplicate" in w]
    required = (
        "happy sad angry afraid calm anxious curious bored proud ashamed grateful lonely disgusted surprised "
        "hopeful guilty jealous content excited tender frustrated relieved nostalgic awed embarrassed "
        "determined confused in_flow stuck piqued cozy resentful"
    ).split()
    assert len(c.concepts) >= 48 and set(required) <= set(c.names)
    for name in c.names:
        stories = [t for t in c.texts if any(s.kind == "story" and s.concept == name for s in t.sources)]
        assert len(stories) >= 4, name
    full = {s: m for s, m in c.scenarios.items() if "baseline" in m and len(m) >= 5}
    assert len(full) >= 12
    assert len({k for m in full.values() for k in m if k != "baseline"}) >= 30
    assert len(c.neutral) >= 60


def test_manifest_norms_are_the_nrc_vad_lexicon():
    """Spot-check the shipped manifest against rows copied from NRC-VAD-Lexicon.txt (v1, 2018;
    the copy cited in the manifest's norms block): valence = 2 V - 1, arousal and dominance as published."""
    rows = {  # lexicon word: (valence, arousal, dominance), on [0, 1]
        "happy": (1.000, 0.735, 0.772),
        "afraid": (0.010, 0.775, 0.245),
        "calm": (0.875, 0.100, 0.282),
        "awed": (0.364, 0.774, 0.361),
        "engrossed": (0.541, 0.471, 0.304),
        "interested": (0.750, 0.529, 0.725),
    }
    c = load(ROOT / "corpora")
    assert "Mohammad" in c.norms["source"] and c.norms["copy"]["path"] == "NRC-VAD-Lexicon.txt"
    assert c.norms["stand_ins"] == {"in_flow": "engrossed", "piqued": "interested"}
    for name in ("happy", "afraid", "calm", "awed", "in_flow", "piqued"):
        v, a, d = rows[c.norms["stand_ins"].get(name, name)]
        got = c.concept(name)
        assert (got.valence, got.arousal, got.dominance) == (round(2 * v - 1, 3), a, d), name
    assert all(con.dominance is not None for con in c.concepts)


def test_a_manifest_without_dominance_or_norms_keeps_its_hash():
    c = load(FIXTURE)
    assert c.norms == {} and all(con.dominance is None for con in c.concepts)
    # the value steerkit computed before dominance existed: runs extracted then still match their corpus
    assert c.sha256() == "4c7098c8e86cc58b6ff80e4c7c63c273f9b98434b55add04f7ac09879b263098"
