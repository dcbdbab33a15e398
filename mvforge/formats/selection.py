"""The filter directory format (docs/design.md §2.2): what `mvdata filter` writes and shard and the report
read.

```
filter/scores.parquet     one row per uid: text, model, per-view cosines, aggregate, gate results (before any
                          threshold, so a new threshold re-selects without re-scoring)
filter/selection.parquet  uid, score, kept (bool), reason when dropped; the threshold used in its metadata
filter/summary.json       written LAST: counts, threshold, timings, versions ("done" marker)
```
Pure Python at import time; pandas is imported by the readers that need it.
"""

from __future__ import annotations

from pathlib import Path

from mvforge.errors import UserError

PARTS = "parts"
SCORES = "scores.parquet"
SELECTION = "selection.parquet"
REPORT = "report.html"
SCORING_KEY = "scoring.json"
CONFIG = "config.toml"
SUMMARY = "summary.json"

SELECTION_COLUMNS = ("uid", "score", "kept", "reason")
"""Columns of selection.parquet; readers need only ``uid`` and ``kept``."""


def read_selection(path: str | Path):
    """selection.parquet as a pandas DataFrame; raises UserError when it is missing, unreadable or lacks
    ``uid``/``kept``."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"selection file {path} does not exist; run `mvdata filter` or drop --selection")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise UserError(
            f"selection file {path} is not a readable parquet file ({e}); pass filter's output"
        ) from None
    missing = {"uid", "kept"} - set(df.columns)
    if missing:
        raise UserError(f"selection file {path} lacks column(s) {sorted(missing)}; pass filter/{SELECTION}")
    return df


def kept_uids(path: str | Path) -> list[str]:
    """Sorted uids of the kept rows of a selection; a uid kept twice is a UserError."""
    df = read_selection(path)
    kept = df.loc[df["kept"].astype(bool), "uid"].astype(str)
    dups = sorted(set(kept[kept.duplicated()]))
    if dups:
        raise UserError(
            f"selection file {path} keeps uid(s) {dups[:3]} more than once; re-run `mvdata filter` to rewrite it"
        )
    return sorted(kept)
