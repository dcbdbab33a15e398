"""Where a model is: one resolver for every command's ``--model`` (issue 9), and the run checkpoint layout.

Three kinds of directory hold a multi-view model:

- a pipeline directory (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
  ``scheduler/``), written by ``MultiViewDiffusion.save_pretrained`` or ``mvtrain sample --save-pipeline``;
- a checkpoint of ``mvtrain fit`` (``unet/``, ``unet_ema/``, ``config.toml`` naming the SD it was trained from,
  which gives the frozen VAE, text encoder, tokenizer and schedule);
- a run directory of ``mvtrain fit``: its latest checkpoint (``checkpoints/step-NNNNNN``; a name with a dot is
  an unfinished write, train/loop.py).
"""

from __future__ import annotations

from pathlib import Path

from mvforge.errors import UserError

CKPT_PREFIX = "step-"


def checkpoints(run: str | Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first (a ``.tmp`` directory is an unfinished write)."""
    root = Path(run) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(CKPT_PREFIX) and "." not in p.name]
    return sorted(done, key=lambda p: int(p.name[len(CKPT_PREFIX) :]))


def latest_checkpoint(run: str | Path) -> Path | None:
    found = checkpoints(run)
    return found[-1] if found else None


def is_pipeline_dir(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def is_checkpoint_dir(path: Path) -> bool:
    return (path / "unet").is_dir() and (path / "config.toml").is_file()


def resolve_model(path: str | Path) -> Path:
    """The pipeline or checkpoint directory that ``path`` names: ``path`` itself when it is one, else the latest
    checkpoint of the run directory ``path``. Raises UserError when it is none of the three."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"{path} does not exist; pass an `mvtrain fit` run or checkpoint, or a pipeline directory"
        )
    if is_pipeline_dir(path) or is_checkpoint_dir(path):
        return path
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise UserError(
            f"{path} holds no model (no model_index.json, no unet/ + config.toml, no checkpoints/); pass an "
            "`mvtrain fit` run or checkpoint, or a pipeline directory (mvtrain sample --save-pipeline DIR)"
        )
    return ckpt


def weights_fingerprint(path: str | Path) -> str:
    """``<resolved dir>@<newest mtime_ns of its files>`` for the model that ``path`` names (see
    :func:`resolve_model`): changes when a run gains a checkpoint or a pipeline's weights are rewritten, so
    outputs made from other weights are not taken as done (``mvtrain sample`` resume)."""
    resolved = resolve_model(path).resolve()
    newest = max((p.stat().st_mtime_ns for p in resolved.rglob("*") if p.is_file()), default=0)
    return f"{resolved}@{newest}"
