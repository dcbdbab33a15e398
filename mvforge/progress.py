"""Progress bars and end-of-run summary tables shared by the stages (docs/design.md §5).

Rich writes to stderr so stdout stays clean for piping; on a non-terminal (CI, a log file) rich prints
nothing animated and the summary table still appears.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)


class StageProgress:
    """done/total, rate, ETA and a failure count for one stage; use as a context manager.

    ``enabled=False`` draws nothing but still counts (library callers, tests, benchmarks, ranks other than 0):
    the progress class of every stage, with no separate no-op variant. ``advance(note=...)`` shows a short
    text after the bar (`mvtrain sds`: the last loss).
    """

    def __init__(self, description: str, total: int, unit: str = "objects", enabled: bool = True):
        self.unit = unit
        self.enabled = enabled
        self.counts: Counter[str] = Counter()
        self.start = time.monotonic()
        self._progress = None
        if not enabled:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=total, rate="", failed=0, note="")

    def __enter__(self) -> StageProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, status: str = "ok", n: int = 1, note: str | None = None) -> None:
        self.counts[status] += n
        if self._progress is None:
            return
        elapsed = max(time.monotonic() - self.start, 1e-9)
        done = sum(self.counts.values())
        rate = f"{done / elapsed * 60:.1f} {self.unit}/min"
        failed = done - self.counts["ok"] - self.counts["skipped"]
        fields = {} if note is None else {"note": note}
        self._progress.update(self._task, advance=n, rate=rate, failed=failed, **fields)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start


def summary_table(title: str, rows: Iterable[tuple[str, object]]) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("value", justify="right")
    # Text, not markup: a value like "needs mvforge[render]" would lose "[render]" as a rich style tag.
    for k, v in rows:
        table.add_row(Text(str(k)), Text(str(v)))
    return table


def print_summary(title: str, rows: Iterable[tuple[str, object]]) -> None:
    console.print(summary_table(title, rows))
