"""The sample directory format (docs/design.md §2.5): what `mvtrain sample`, the validation of `mvtrain fit` and
`mvtrain dreambooth` and the generation of `mvtrain eval` write for one prompt, and what resume, eval and the
report read. Pure Python.

```
<sample dir>/view_00.png ... view_{V-1}.png   the V views, RGB PNG, azimuth order
<sample dir>/grid.png                         the V views side by side
<sample dir>/sample.json                      written LAST ("done" marker): model, weights fingerprint, prompt,
                                              text sent to the model, the SampleConfig
```
Where the directories go: one prompt -> ``OUT`` itself; a prompts file -> ``OUT/<prompt_slug>/`` per prompt (the
run directories of `mvtrain sds --prompts` use the same names, :func:`prompt_slug`); validation ->
``validation/step-NNNNNN/<nn>-<slug>/`` beside ``validation.json`` (:func:`validation_step_dir`).
"""

from __future__ import annotations

import re
from pathlib import Path

from mvforge.errors import UserError

GRID = "grid.png"
META = "sample.json"
"""The done marker: removed before any view changes, written after every view and the grid."""
VIEW_PREFIX = "view_"
VIEW_SUFFIX = ".png"

VALIDATION = "validation"
"""Validation grids of a training run: ``validation/step-NNNNNN/`` under the run (fit and dreambooth)."""
VALIDATION_INDEX = "validation.json"
"""Per validation step: {"step", "prompts": [{"prompt", "kind", "dir"}]}, written after its sample dirs."""


def view_name(index: int) -> str:
    """``view_00.png`` for view 0."""
    return f"{VIEW_PREFIX}{index:02d}{VIEW_SUFFIX}"


def view_index(name: str) -> int | None:
    """The view index a file name holds (``view_03.png`` -> 3), None for any other name."""
    digits = name[len(VIEW_PREFIX) : -len(VIEW_SUFFIX)]
    ok = name.startswith(VIEW_PREFIX) and name.endswith(VIEW_SUFFIX) and digits.isdigit()
    return int(digits) if ok else None


def slug(text: str, n: int = 40) -> str:
    """Short directory-name form of a prompt (validation and eval prompt directories); "prompt" when nothing
    is left."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "prompt"


def prompt_slug(prompt: str, max_len: int = 60) -> str:
    """Directory name of a prompt: lower case, runs of other characters as '-', at most ``max_len`` chars (the
    run directories of `mvtrain sds --prompts` and the per-prompt directories of `mvtrain sample --prompts`). Raises
    UserError for a prompt without letters or digits."""
    name = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:max_len].strip("-")
    if not name:
        raise UserError(
            f"prompt {prompt!r} has no letters or digits to name its directory; describe the object"
        )
    return name


def prompt_dirs(prompts: list[str], what: str = "directory") -> list[str]:
    """``prompt_slug`` of each prompt, in order. Raises UserError (naming both prompts) when two prompts name
    one directory: a prompt listed twice, or prompts equal up to case and punctuation. ``what``: the directory's
    name in that message."""
    seen: dict[str, str] = {}
    for p in prompts:
        name = prompt_slug(p)
        if name in seen:
            raise UserError(
                f"prompts {seen[name]!r} and {p!r} both name the {what} {name}/; remove the duplicate or reword one"
            )
        seen[name] = p
    return list(seen)


def validation_step_dir(run: str | Path, step: int) -> Path:
    """``<run>/validation/step-NNNNNN``: the validation grids after ``step`` optimizer steps."""
    return Path(run) / VALIDATION / f"step-{step:06d}"


def validation_prompt_dir(step_dir: Path, index: int, prompt: str) -> Path:
    """``<step dir>/<nn>-<slug>``: validation prompt ``index``'s sample directory."""
    return step_dir / f"{index:02d}-{slug(prompt)}"
