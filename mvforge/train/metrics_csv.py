"""metrics.csv of a training run (fit and dreambooth): appended a row per logged step, cut back on resume."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from mvforge.fsutil import atomic_write_text


def append_row(path: Path, row: dict, fields: Sequence[str]) -> None:
    """Append ``row`` (keys outside ``fields`` ignored); the header is written with the first row."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def truncate_after(path: Path, step: int, fields: Sequence[str]) -> None:
    """On resume, drop rows past the checkpoint's ``step`` (the resumed run writes them again), atomically."""
    if not path.exists():
        return
    rows = [r for r in csv.DictReader(path.read_text().splitlines()) if int(r["step"]) <= step]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
