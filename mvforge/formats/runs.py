"""The run directory of `mvtrain fit` and `mvtrain dreambooth` (docs/design.md §2.5): what the trainers write
and `mvtrain sample` / `sds` / `eval` (through ``models.resolve``) and the report read. Pure Python.

```
runs/<name>/config.toml                       the run's resolved config (rundir.CONFIG)
runs/<name>/checkpoints/step-NNNNNN/          unet/, unet_ema/, optimizer.pt, lr_scheduler.pt, scaler.pt,
                                              per-rank loader state, config.toml, state.json, COMMITTED last
runs/<name>/metrics.csv, tensorboard/         one row / scalars per logged step (mvforge.metrics)
runs/<name>/validation/step-NNNNNN/           sample directories per validation prompt (formats.samples)
runs/<name>/worker_starts.jsonl               one line per (re)start of a Ray Train worker group
runs/<name>/ray_results/                      Ray Train's own results, checkpoints as pointers (--storage-path)
runs/<name>/summary.json                      written LAST by a finished run (rundir.DONE)
runs/<name>/pipeline/                         dreambooth with save_pipeline: the result as a pipeline directory
```
The step-numbered checkpoint names and the done marker are :class:`mvforge.rundir.RunDir`'s and the metrics files
:mod:`mvforge.metrics`', shared by every model-wing stage; they are re-exported here so a reader of a run needs
this module only.
"""

from __future__ import annotations

from mvforge.metrics import CSV as METRICS  # noqa: F401  (named once, in mvforge.metrics: fit, dreambooth, sds)
from mvforge.metrics import TENSORBOARD  # noqa: F401
from mvforge.rundir import CHECKPOINTS, CONFIG, DONE  # noqa: F401  (every model-wing run's names)

SUMMARY = DONE
WORKER_STARTS = "worker_starts.jsonl"
"""Under Ray Train: one JSON line per start of the worker group (first start and every restart)."""
RAY_RESULTS = "ray_results"
"""Under Ray Train, unless ``--storage-path`` names another place: Ray's results and its copies of the reported
checkpoints (inside the run, so nothing is written beside it)."""
PIPELINE = "pipeline"
"""`mvtrain dreambooth --save-pipeline`: the result as a pipeline directory inside the run."""

# Members of a checkpoint directory (checkpoints/step-NNNNNN/, train/checkpoint.py).
UNET = "unet"
"""The trained weights (diffusers ``UNet2DConditionModel`` layout)."""
UNET_EMA = "unet_ema"
"""The EMA weights, with the average's state in its config.json (what sampling uses by default)."""
OPTIMIZER = "optimizer.pt"
LR_SCHEDULER = "lr_scheduler.pt"
SCALER = "scaler.pt"
"""fp16 runs only: the gradient scaler's state."""
STATE = "state.json"
"""step, world size and the per-rank loader files."""
COMMITTED = "COMMITTED"
"""Written last: a checkpoint directory without it is an unfinished write."""


def loader_state_name(rank: int) -> str:
    """``loader-rank<r>.json``: rank ``r``'s data position in a checkpoint (the loader's ``state_dict()``)."""
    return f"loader-rank{rank}.json"
