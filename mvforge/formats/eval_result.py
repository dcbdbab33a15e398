"""The output directory of `mvtrain eval` (MVDream §5.1; docs/design.md §1 eval/): what the generate -> score
loop, `--sds` and `--known-answer` write and the report reads. Pure Python.

```
OUT/config.toml                         the resolved EvalConfig + model; a resume must match it (rundir.CONFIG)
OUT/generated/<nnnn>-<slug>/            a sample directory per prompt (formats.samples: views, grid.png,
                                        sample.json written LAST: the prompt is done)
OUT/grids/generated.png, reference.png  the first prompts' views / reference objects' views, one row each
OUT/eval.json                           every metric, N, background, resize, extractors (deterministic)
OUT/eval.csv                            one row per prompt: CLIP score, consistency
OUT/timing.json                         generation and scoring seconds (the benchmark; not in eval.json)
OUT/sds.json                            `--sds DIR`: {"clip", "results": one row per SDS result}
OUT/known_answer.json                   `--known-answer`: per caption and a summary (written last)
OUT/known_answer/<uid>.png              `--known-answer`: ground truth, sample, shifted samples, one row each
```
"""

from __future__ import annotations

from pathlib import Path

from mvforge.formats.samples import slug
from mvforge.rundir import CONFIG  # noqa: F401  (the run's settings, as every model-wing run)

GENERATED = "generated"
GRIDS = "grids"
GRID_GENERATED = f"{GRIDS}/generated.png"
GRID_REFERENCE = f"{GRIDS}/reference.png"
EVAL = "eval.json"
EVAL_CSV = "eval.csv"
TIMING = "timing.json"
SDS = "sds.json"
KNOWN_ANSWER = "known_answer.json"
KNOWN_ANSWER_IMAGES = "known_answer"


def prompt_dir(out: str | Path, index: int, prompt: str) -> Path:
    """``OUT/generated/<nnnn>-<slug>``: prompt ``index``'s sample directory (named by its place and text, so a
    changed prompt list never reuses another prompt's views)."""
    return Path(out) / GENERATED / f"{index:04d}-{slug(prompt)}"


def known_answer_strip(out: str | Path, uid: str) -> Path:
    """``OUT/known_answer/<uid>.png``: the rows of one caption (ground truth, sample, shifted samples)."""
    return Path(out) / KNOWN_ANSWER_IMAGES / f"{uid}.png"


def shifted_text(summary: dict) -> str:
    """A known-answer summary's ``shifted_cameras_further`` ("N/M": of M shifted samples, N further from the truth)
    as the CLI and the report print it; M = 0 when no shifted cameras were sampled (``shifts_deg=[]``)."""
    value = str(summary.get("shifted_cameras_further", "0/0"))
    return "shifted cameras not sampled" if value.endswith("/0") else f"shifted cameras further {value}"
