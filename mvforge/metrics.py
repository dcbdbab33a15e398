"""The metrics of a training-like run, one format on disk for ``mvtrain fit``, ``dreambooth`` and ``sds``
(docs/ecosystem.md §6):

```
RUN/metrics.csv      one row per logged step; the header is the stage's columns, ``step`` first (optimizer
                     steps done, 1-based)
RUN/tensorboard/     TensorBoard event files: each numeric column as a scalar (``loss_<x>`` / ``<x>_loss``
                     columns under ``loss/<x>``), images at validation / snapshot steps
```

On resume both are cut back to the checkpoint's step (the resumed run writes the later steps again), so a
killed-and-resumed run's files equal an uninterrupted run's. torch is imported only for TensorBoard.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from mvforge.fsutil import atomic_write_text

CSV = "metrics.csv"
TENSORBOARD = "tensorboard"


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


def read_rows(path: Path) -> list[dict]:
    """The rows of a metrics.csv, numbers parsed to float (an empty cell to NaN), other cells as text."""
    rows = []
    for raw in csv.DictReader(Path(path).read_text().splitlines()):
        row = {}
        for k, v in raw.items():
            try:
                row[k] = float(v) if v != "" else math.nan
            except (TypeError, ValueError):
                row[k] = v
        rows.append(row)
    return rows


def scalar_tag(column: str) -> str:
    """TensorBoard tag of a metrics column: ``loss`` stays, ``loss_sds`` -> ``loss/sds``, ``prior_loss`` ->
    ``loss/prior`` (TensorBoard groups tags by their first path part); others unchanged."""
    if column.startswith("loss_"):
        return "loss/" + column[len("loss_") :]
    if column.endswith("_loss"):
        return "loss/" + column[: -len("_loss")]
    return column


class RunMetrics:
    """metrics.csv and TensorBoard events of one run directory ``out``, resumed at ``step`` (0: a new run).

    ``log(row)`` appends a row (``row["step"]`` the optimizer steps done) and writes every finite numeric column
    as a scalar; ``image(tag, hwc, step)`` adds an (H, W, 3) uint8 image. ``tensorboard=False`` writes the
    CSV only (no torch import). Use as a context manager or call ``close()``."""

    def __init__(self, out: str | Path, fields: Sequence[str], step: int = 0, tensorboard: bool = True):
        self.out, self.fields = Path(out), list(fields)
        self.csv = self.out / CSV
        truncate_after(self.csv, step, self.fields)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events of the killed run past the checkpoint are dropped as the resumed run rewrites.
            self.writer = SummaryWriter(str(self.out / TENSORBOARD), purge_step=step + 1 if step else None)

    def log(self, row: dict) -> None:
        append_row(self.csv, row, self.fields)
        if self.writer is None:
            return
        step = int(row["step"])
        for k in self.fields:
            v = row.get(k)
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(scalar_tag(k), v, step)
        self.writer.flush()

    def image(self, tag: str, image, step: int) -> None:
        """(H, W, 3) uint8 array as TensorBoard image ``tag`` at ``step`` (nothing without TensorBoard)."""
        if self.writer is not None:
            self.writer.add_image(tag, image, step, dataformats="HWC")
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> RunMetrics:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
