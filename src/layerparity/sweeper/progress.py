"""The sweep's progress bar: Rich, on stderr, inputs/s and failures so far."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["progress_bar"]


@contextlib.contextmanager
def progress_bar(total: int | None, enabled: bool) -> Iterator[Callable[[Any], None]]:
    """Yields ``advance(item)``, called once per input checked (an ItemResult)."""
    if not enabled:
        yield lambda item: None
        return
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:
        yield lambda item: None
        return
    cols: list[Any] = [SpinnerColumn(), TextColumn("sweep")]
    if total:
        cols += [BarColumn(), MofNCompleteColumn()]
    else:
        cols.append(TextColumn("{task.completed} inputs"))
    cols += [TextColumn("{task.fields[rate]} inputs/s"), TextColumn("[red]{task.fields[failed]} failed"),
             TextColumn("{task.fields[errors]}"), TimeElapsedColumn()]
    t0 = time.perf_counter()
    counts = {"done": 0, "failed": 0, "errors": 0}
    with Progress(*cols, console=Console(stderr=True), transient=False) as prog:
        task = prog.add_task("sweep", total=total, rate="-", failed=0, errors="")

        def advance(item: Any) -> None:
            counts["done"] += 1
            counts["failed"] += item.status == "fail"
            counts["errors"] += item.status == "error"
            dt = time.perf_counter() - t0
            rate = f"{counts['done'] / dt:.1f}" if dt > 0 else "-"
            errs = f"{counts['errors']} errors" if counts["errors"] else ""
            prog.update(task, advance=1, rate=rate, failed=counts["failed"], errors=errs)

        yield advance
