"""Where a model is: one resolver for every command's ``--model`` (docs/ecosystem.md §3), and the run
checkpoint layout.

Three kinds of directory hold a multi-view model:

- a pipeline directory (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
  ``scheduler/``), written by ``MultiViewDiffusion.save_pretrained`` or ``mvtrain sample --save-pipeline``;
- a checkpoint of ``mvtrain fit`` (``unet/``, ``unet_ema/``, ``config.toml`` naming the SD it was trained from,
  which gives the frozen VAE, text encoder, tokenizer and schedule);
- a run directory of ``mvtrain fit``: its latest checkpoint (``checkpoints/step-NNNNNN``; a name with a dot is
  an unfinished write, train/loop.py).

Any of them, or a Stable Diffusion directory, may also be named by a Hugging Face Hub id (``org/name``) that is
not an existing path: :func:`local_model_dir` turns it into the snapshot directory of huggingface_hub's cache
(downloading it unless ``HF_HUB_OFFLINE=1``). Every command that takes a model goes through that one function.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from mvforge.errors import UserError
from mvforge.formats import runs
from mvforge.rundir import Damaged, RunDir, model_dir_problem, newest_intact


def checkpoints(run: str | Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first (a ``.tmp`` directory is an unfinished write)."""
    return RunDir(run).checkpoints()


def latest_checkpoint(run: str | Path) -> Path | None:
    found = checkpoints(run)
    return found[-1] if found else None


def check_loadable_checkpoint(ckpt: Path) -> None:
    """Raise ``rundir.Damaged`` unless the fit checkpoint ``ckpt`` is committed (``COMMITTED``, written last)
    and its UNet files are whole (``rundir.model_dir_problem``): what a command that samples from a run needs."""
    if not (ckpt / runs.COMMITTED).is_file():
        raise Damaged(f"{ckpt} has no {runs.COMMITTED} (an unfinished write)")
    for sub in (runs.UNET, runs.UNET_EMA):
        if sub == runs.UNET or (ckpt / sub).is_dir():
            problem = model_dir_problem(ckpt / sub)
            if problem is not None:
                raise Damaged(problem)


def is_pipeline_dir(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def is_checkpoint_dir(path: Path) -> bool:
    return (path / runs.UNET).is_dir() and (path / runs.CONFIG).is_file()


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]$")
"""A Hub repository id, ``org/name`` (one slash, no leading dot or slash: never a relative path of ours)."""

HUB_FILES = ["*.json", "*.txt", "*.md", "*/*.safetensors", "*/*.model", "*/*.py"]
"""What a diffusers repository needs (configs, tokenizer files, safetensors weights): not the .ckpt/.bin
copies many SD repositories also hold (gigabytes each)."""


FILE_SUFFIXES = (".pt", ".ckpt", ".pth", ".bin", ".safetensors", ".yaml", ".json", ".toml", ".txt")
"""Suffixes that make ``dir/file.pt`` a mistyped file path rather than a Hub id."""


def is_hub_id(name: str | Path) -> bool:
    """``name`` looks like ``org/name``, is not an existing path and does not end like a file."""
    text = str(name)
    return not Path(text).exists() and bool(HUB_ID.match(text)) and not text.lower().endswith(FILE_SUFFIXES)


def local_model_dir(name: str | Path) -> Path:
    """The local directory of the model ``name``: ``name`` itself when it is an existing path, else, for a Hub
    id (``org/name``), its snapshot in huggingface_hub's cache (``HF_HUB_CACHE``), fetched when not cached
    and the Hub can be reached (never with ``HF_HUB_OFFLINE=1``). Creates nothing but the cache entry.

    Raises UserError (one line) for a missing path or a Hub id that cannot be had (not cached while
    offline, unknown, gated, no network)."""
    path = Path(name)
    if path.exists() or not is_hub_id(name):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(snapshot_download(str(name), allow_patterns=HUB_FILES))
    except GatedRepoError as e:
        why, fix = "it is gated", f"accept its terms on the Hub, `hf auth login`, then `hf download {name}`"
        raise UserError(f"{name} is no directory here and the Hub model {why}; {fix}") from e
    except RepositoryNotFoundError as e:
        why, fix = "does not exist (or is private)", "check the id, or pass a directory"
        raise UserError(f"{name} is no directory here and the Hub model {why}; {fix}") from e
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        why = "is not in the cache and the Hub cannot be reached (HF_HUB_OFFLINE=1 or no network)"
        fix = f"run `hf download {name}` where the Hub is reachable, or pass a directory"
        raise UserError(f"{name} is no directory here and the Hub model {why}; {fix}") from e


_WARNED: set[str] = set()


def _warn_once(line: str) -> None:
    """A command resolves its model more than once (checks, loading, the resume fingerprint): say it once."""
    if line not in _WARNED:
        _WARNED.add(line)
        print(line, file=sys.stderr, flush=True)


def resolve_model(path: str | Path) -> Path:
    """The pipeline or checkpoint directory that ``path`` names: ``path`` itself when it is one, else the latest
    checkpoint of the run directory ``path``; a Hub id goes through :func:`local_model_dir` first. Raises
    UserError when it is none of the three."""
    path = local_model_dir(path)
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise UserError(f"{path} {what}; pass an `mvtrain fit` run or checkpoint, or a pipeline directory")
    if is_pipeline_dir(path) or is_checkpoint_dir(path):
        return path
    # The newest checkpoint a sampler can load; a newer damaged or unfinished one is named and passed over.
    ckpt = newest_intact(checkpoints(path), check_loadable_checkpoint, _warn_once, using="loading")
    if ckpt is None:
        raise UserError(
            f"{path} holds no model (no model_index.json, no unet/ + config.toml, no checkpoints/); pass an "
            "`mvtrain fit` run or checkpoint, or a pipeline directory (mvtrain sample --save-pipeline DIR)"
        )
    return ckpt


def frozen_source(model: Path) -> Path:
    """Where the frozen VAE, text encoder, tokenizer and schedule of ``model`` (a pipeline directory or checkpoint,
    as :func:`resolve_model` returns it) load from: the pipeline itself, or the Stable Diffusion directory or Hub
    id that the checkpoint's ``config.toml`` names (a checkpoint saves the trained UNet only). Raises UserError
    when it names none."""
    if is_pipeline_dir(model):
        return model.resolve()
    config = model / runs.CONFIG
    try:
        pretrained = tomllib.loads(config.read_text(encoding="utf-8")).get("pretrained", "")
    except (OSError, ValueError) as e:
        raise UserError(
            f"{config}: damaged ({type(e).__name__}: {e}); restore it from a copy of the run"
        ) from None
    if not pretrained:
        raise UserError(f"{config} names no pretrained model; re-save the checkpoint")
    if not Path(pretrained).exists() and not is_hub_id(pretrained):
        # A run moved from another machine keeps the absolute path it was trained with.
        raise UserError(
            f"{config} names pretrained = {pretrained!r}, which does not exist here; point that line at the "
            "Stable Diffusion directory (or Hub id) the run was trained from"
        )
    return Path(pretrained)


def weights_fingerprint(path: str | Path) -> str:
    """``<resolved dir>@<newest mtime_ns of its files>`` for the model that ``path`` names (see
    :func:`resolve_model`): changes when a run gains a checkpoint or a pipeline's weights are rewritten, so
    outputs made from other weights are not taken as done (``mvtrain sample`` resume)."""
    resolved = resolve_model(path).resolve()
    newest = max((p.stat().st_mtime_ns for p in resolved.rglob("*") if p.is_file()), default=0)
    return f"{resolved}@{newest}"
