"""Issue 17's property test: for every command and every option with a numeric type, out-of-range,
non-finite and wrong-type values give the one-line contract: exit code 2, at most 3 lines, the
last one `error: ...`, no traceback, nothing new on disk. The options are found by walking the
CLI, so a command added later is covered; values are refused while the options parse, before
any model loads (hypothesis, derandomized: the same examples on every run)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steerkit.cli import main
from steerkit.cli.common import BoundedFloat, BoundedInt

NONFINITE = ["nan", "NaN", "-nan", "inf", "-inf", "+inf", "Infinity", "-Infinity", "1e999", "-1e999"]
TRIED: dict[str, int] = {}  # command -> bad values tried (all held, or a test failed); printed by the last test
WRONG = ["abc", "", " ", "1,5", "0x10", "one", "1e", "--", "∞", "5%", "[1]", "true"]


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*path, name))
        else:
            out.append(((*path, name), cmd))
    return out


def _numeric(p: click.Parameter) -> bool:
    return isinstance(p, click.Option) and isinstance(
        p.type, BoundedFloat | BoundedInt | click.types.IntParamType | click.types.FloatParamType
    )


CASES = [
    pytest.param(path, cmd, opt, id=f"{' '.join(path)} {opt.opts[0]}")
    for path, cmd in _commands(main)
    for opt in cmd.params
    if _numeric(opt)
]


def _required(cmd: click.Command, skip: click.Parameter) -> list[str]:
    """Placeholder values for the command's required parameters (never used: parsing fails first)."""
    args: list[str] = []
    for p in cmd.params:
        if p is skip or not p.required:
            continue
        value = p.type.choices[0] if isinstance(p.type, click.Choice) else "placeholder"
        args += [str(value)] if isinstance(p, click.Argument) else [p.opts[0], str(value)]
    return args


def _bad_values(t: click.ParamType) -> st.SearchStrategy[str]:
    """Non-finite, wrong-type and (for bounded types) out-of-range values of type t, as typed."""
    wrong = st.sampled_from(WRONG) | st.text(alphabet="abcxyz!?., ", min_size=1, max_size=6)
    if isinstance(t, BoundedFloat | click.types.FloatParamType):
        bad = st.sampled_from(NONFINITE) | wrong
        lo, hi = getattr(t, "low", None), getattr(t, "high", None)
        if lo is not None:
            below = st.floats(max_value=lo, allow_nan=False, allow_infinity=False)
            bad |= below.filter(lambda x: x < lo or getattr(t, "low_open", False)).map(repr)
        if hi is not None:
            above = st.floats(min_value=hi, allow_nan=False, allow_infinity=False)
            bad |= above.filter(lambda x: x > hi or getattr(t, "high_open", False)).map(repr)
        return bad
    bad = st.sampled_from([*NONFINITE, "1.5", "-0.5", "1e3", "2.0"]) | wrong  # integers: floats are wrong too
    lo, hi = getattr(t, "low", None), getattr(t, "high", None)
    if lo is not None:
        bad |= st.integers(max_value=lo - 1).map(str)
    if hi is not None:
        bad |= st.integers(min_value=hi + 1).map(str)
    return bad


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("property")


def _tree(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*"))


def test_every_float_option_refuses_nan():
    """No command keeps a plain float option (the group gives every one the finite check)."""
    plain = [(path, p.opts[0]) for path, cmd in _commands(main) for p in cmd.params
             if isinstance(p.type, click.types.FloatParamType)]  # fmt: skip
    assert not plain, plain
    assert len(CASES) >= 60  # every command's numeric options are found


@pytest.mark.parametrize("path, cmd, opt", CASES)
def test_numeric_option_bad_values_one_line(path, cmd, opt, sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv("STEERKIT_RUNS", str(sandbox / "runs"))
    monkeypatch.setenv("STEERKIT_CACHE", str(sandbox / "cache"))
    base = [*path, *_required(cmd, opt)]
    before = _tree(sandbox)

    @settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(value=_bad_values(opt.type))
    def check(value: str) -> None:
        TRIED[" ".join(path)] = TRIED.get(" ".join(path), 0) + 1
        res = CliRunner().invoke(main, [*base, opt.opts[0], value])
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2, (value, res.output, res.exception)
        assert 1 <= len(lines) <= 3 and lines[-1].startswith("error:"), (value, res.output)
        assert "Traceback" not in res.output and not isinstance(res.exception, click.ClickException | TypeError)
        assert _tree(sandbox) == before, value

    check()


def test_bounded_types_convert_what_the_help_says():
    from steerkit.cli.common import OPEN_UNIT_FLOAT, POSITIVE_FLOAT, POSITIVE_INT, SEED

    for t, bad, good in [
        (POSITIVE_FLOAT, ["nan", "inf", "-1", "0", "abc", ""], [("2.5", 2.5), (1, 1.0), ("1e-9", 1e-9)]),
        (OPEN_UNIT_FLOAT, ["0", "1", "-0.0", "nan"], [("0.5", 0.5)]),
        (POSITIVE_INT, ["0", "-3", "1.5", "nan", "1e3", "x"], [("7", 7), (3, 3)]),
        (SEED, ["-1", str(2**32)], [("0", 0), (str(2**32 - 1), 2**32 - 1)]),
    ]:
        for v in bad:
            with pytest.raises(click.BadParameter):
                t.convert(v, None, None)
        for v, want in good:
            assert t.convert(v, None, None) == want


def test_zz_tally():
    for cmd, n in sorted(TRIED.items()):
        print(f"{cmd}: {n}")
