"""One block-spec parser for every option; triage and notes of the quality report."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from steerkit.capture.layers import BlockSpec, check_blocks, default_spread, parse_layers
from steerkit.cli import main
from steerkit.errors import LayerSpecError
from steerkit.quality.triage import binomial_tail, notes, triage


@pytest.mark.parametrize(
    "spec, n, want",
    [
        ("7", 10, [7]),
        ("-1", 10, [9]),
        ("0.5", 11, [5]),
        ("4:7", 10, [4, 5, 6]),
        ("10:-1", 14, [10, 11, 12]),  # negative end: up to, not including, the last block
        ("-3:", 10, [7, 8, 9]),
        (":3", 10, [0, 1, 2]),
        ("0:10:4", 10, [0, 4, 8]),
        ("all", 3, [0, 1, 2]),
        ("1,-1,1", 5, [1, 4]),
        ([2, -2], 6, [2, 4]),
        (0.0, 5, [0]),
    ],
)
def test_block_spec_resolves(spec, n, want):
    assert parse_layers(spec, n) == want
    assert BlockSpec.parse(spec).resolve(n) == want


@pytest.mark.parametrize("spec", ["x", "1:x", "1:2:3:4", "1.5", "-0.5", "nan", "", "1:5:0", ",", "1:5:-1"])
def test_block_spec_syntax_errors_before_any_model(spec):
    with pytest.raises(LayerSpecError):
        BlockSpec.parse(spec)


@pytest.mark.parametrize("spec, n", [("12", 10), ("-11", 10), ("5:8", 4), ("3:3", 10), ("20:", 10)])
def test_block_spec_range_errors(spec, n):
    with pytest.raises(LayerSpecError):
        parse_layers(spec, n)


def test_check_blocks_takes_parsed_ints_only():
    assert check_blocks([3, -1, 3], 5) == [3, 4]
    with pytest.raises(TypeError):
        check_blocks("1,2", 5)  # type: ignore[arg-type]
    with pytest.raises(LayerSpecError):
        check_blocks([5], 5)


def test_default_spread_is_eight_blocks():
    assert len(default_spread(30)) == 8 and default_spread(30)[0] == 7 and default_spread(30)[-1] == 25
    assert default_spread(4) == [0, 1, 2, 3]


def test_cli_block_syntax_error_is_one_line_before_loading(tmp_path):
    """--layers 1:x fails at parse time: one line, exit 2, even with a model that does not exist."""
    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\n")
    res = CliRunner().invoke(
        main, ["capture", "--model", str(tmp_path / "missing"), "--texts", str(texts), "--layers", "1:x",
               "--out", str(tmp_path / "o")],
    )  # fmt: skip
    assert res.exit_code == 2
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "--layers 1:x" in lines[0] and "integers" in lines[0], res.output
    assert not (tmp_path / "o").exists()


# ---- triage and notes --------------------------------------------------------------------------
def _report(n_concepts: int, top3: list[float], ratio: float = 0.5, null_median: float | None = None) -> dict:
    names = [f"c{i}" for i in range(n_concepts)]
    concepts = {}
    for i, name in enumerate(names):
        concepts[name] = {
            "n_positives": 8,
            "first_pc_variance_ratio": ratio,
            "first_pc_null": None
            if null_median is None
            else {"median": null_median, "p95": null_median + 0.1, "percentile": 0.99 if i == 0 else 0.5},
            "effective_rank": 3.0,
            "agreement": {"mean": 0.5, "min": 0.2, "lowest": [{"where": "f:1", "cos": 0.2}], "n_below_0_1": 0},
            "nearest": [{"concept": names[(i + 1) % n_concepts], "cos": 0.3}],
            "redundancy": {"r2": 0.1, "top": [{"concept": names[(i + 1) % n_concepts], "coef": 0.2}]},
            "heldout": {"top1": top3[i] / 2, "top3": top3[i], "n": 8},
            "single_neuron": {"abs_cos": 0.1, "neuron": 3, "cos": 0.1},
        }
    return {"best_layer": 2, "n_concepts": n_concepts, "layers": {"2": {"concepts": concepts}}}


def test_binomial_tail_equals_scipy():
    from scipy.stats import binom

    for k, n, p in [(0, 8, 0.5), (5, 8, 0.5), (2, 20, 3 / 49), (20, 20, 0.1), (3, 10, 0.3)]:
        assert binomial_tail(k, n, p) == pytest.approx(binom.sf(k - 1, n, p), rel=1e-9, abs=1e-15)


def test_poorly_read_is_judged_against_chance():
    """Flagged only where the hits are not above chance at 5% (binomial), whatever the number of concepts."""
    buckets = triage(_report(6, [1.0, 0.875, 0.75, 0.625, 0.375, 1.0]))  # 8 texts each, chance 50%
    # P(>= 8 of 8) = 0.004, P(>= 7) = 0.035, P(>= 6) = 0.145, P(>= 5) = 0.36, P(>= 3) = 0.86
    assert [e["concept"] for e in buckets["poorly_read"]] == ["c2", "c3", "c4"]
    assert "p = 0.14" in buckets["poorly_read"][0]["why"]
    assert triage(_report(3, [0.0, 1.0, 1.0]))["poorly_read"] == []  # top-3 of 3 is always right
    many = triage(_report(49, [0.125] + [0.5] * 48))  # chance 6%: 1 of 8 is luck, 4 of 8 is not
    assert [e["concept"] for e in many["poorly_read"]] == ["c0"]


def test_fragmented_is_judged_against_the_null():
    """Planted: every ratio is 0.2 (below the old 0.4 cut); only the two concepts below the 5th
    percentile of their random-set null are fragmented."""
    rep = _report(49, [0.9] * 49, ratio=0.2, null_median=0.3)
    for i, e in enumerate(rep["layers"]["2"]["concepts"].values()):
        e["first_pc_null"]["percentile"] = 0.01 if i in (3, 7) else 0.5
    frag = triage(rep)["fragmented"]
    assert [e["concept"] for e in frag] == ["c3", "c7"] and "median 30%" in frag[0]["why"]
    clean = triage(_report(4, [1.0] * 4, ratio=0.8))
    assert len(clean["clean"]) == 4 and not clean["fragmented"]
    assert not triage(_report(4, [1.0] * 4, ratio=0.2))["fragmented"]  # no null: no flag


def test_notes_name_the_null():
    out = notes(_report(10, [1.0] * 10, ratio=0.2, null_median=0.3))
    assert len(out) == 1 and "median 30%" in out[0] and "c0" in out[0] and "0.5 of 10" in out[0]
    assert notes(_report(10, [1.0] * 10)) == []  # no null computed


def test_redundant_is_judged_by_whether_the_readout_tells_two_concepts_apart():
    """Flagged only where a concept's held-out texts are not read as itself significantly more often than
    as the concept they are most often mistaken for (sign test at 5%); a high R^2 alone flags nothing.
    A report without `confused_with` (an older file) keeps the R^2 > 0.9 cut."""
    rep = _report(5, [1.0] * 5)
    entries = list(rep["layers"]["2"]["concepts"].values())
    for e in entries:
        e["redundancy"]["r2"] = 0.95
        e["heldout"]["n"] = 20
    # hits vs confusions: 15 vs 3 (p 0.004), 12 vs 6 (p 0.12), 9 vs 9 (p 0.59), 20 vs none, 6 vs 5 (p 0.5)
    for e, (hits, k) in zip(entries, [(15, 3), (12, 6), (9, 9), (20, 0), (6, 5)], strict=True):
        e["heldout"]["top1"] = hits / 20
        e["heldout"]["confused_with"] = {"concept": "c0" if e is not entries[0] else "c1", "n": k} if k else None
    red = triage(rep)["redundant"]
    assert [e["concept"] for e in red] == ["c1", "c2", "c4"]
    assert "12 of 20 texts read as itself and 6 as c0" in red[0]["why"] and "p = 0.12" in red[0]["why"]
    assert red[0]["suggestion"].startswith("c1 vs c0")
    old = _report(3, [1.0] * 3)
    list(old["layers"]["2"]["concepts"].values())[1]["redundancy"]["r2"] = 0.95
    assert [e["concept"] for e in triage(old)["redundant"]] == ["c1"]
