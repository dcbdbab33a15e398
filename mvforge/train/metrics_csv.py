"""metrics.csv of a training run: the shared format of ``mvforge.metrics`` (fit, dreambooth and sds write the
same files), re-exported for the training loop."""

from __future__ import annotations

from mvforge.metrics import append_row, truncate_after

__all__ = ["append_row", "truncate_after"]
