"""The tiny extract run several test modules build: the small fixture corpus through `steerkit extract`
on a tiny checkpoint folder (blocks 1 and 3), so every module builds it the same way."""

from __future__ import annotations

from pathlib import Path

SMALL_CORPUS = Path(__file__).parent / "fixtures" / "corpus_small"


def extract_args(model: Path | str, out: Path | str, *extra: str) -> list[str]:
    """`steerkit extract` arguments for the small corpus on `model`, blocks 1 and 3, into `out`."""
    return ["extract", "--stories", str(SMALL_CORPUS), "--model", str(model), "--layers", "1,3", "--out", str(out),
            "--allow-untrained", *extra]  # fmt: skip


def extract(model: Path | str, out: Path | str, *extra: str) -> Path:
    """Run that extract in-process (click's runner); fail the test with its output if it fails."""
    from click.testing import CliRunner

    from steerkit.cli import main

    res = CliRunner().invoke(main, extract_args(model, out, *extra))
    assert res.exit_code == 0, res.output
    return Path(out)
