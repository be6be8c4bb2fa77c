"""A rich progress bar (texts/s, ETA) that appears only for runs longer than a couple of seconds."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click


@contextmanager
def progress_bar(description: str, unit: str = "texts", delay: float = 2.0) -> Iterator[Callable[[int, int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    start = time.perf_counter()
    state: dict[str, Any] = {"bar": None, "task": None}

    def update(done: int, total: int) -> None:
        if state["bar"] is None:
            if time.perf_counter() - start < delay and done < total:
                return
            bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            bar.start()
            state["bar"], state["task"] = bar, bar.add_task(description, total=total, rate="")
        bar = state["bar"]
        elapsed = max(1e-9, time.perf_counter() - start)
        bar.update(state["task"], completed=done, total=total, rate=f"{done / elapsed:.1f} {unit}/s")  # type: ignore[attr-defined]

    try:
        yield update
    finally:
        if state["bar"] is not None:
            state["bar"].stop()  # type: ignore[attr-defined]
        click.echo("", nl=False)
