"""The one open_clip loader, for the two stages that embed images and text (design §1): `mvdata filter` (caption
similarity of the renders, design §2.2) and `mvtrain eval` (CLIP score and the consistency figure).

Weights are named the same way in both (docs/cli.md), and loaded through open_clip's own
``create_model_and_transforms``, the same path for real weights and the tiny test model (design §6):

- ``local-dir:DIR``: an open_clip folder (``open_clip_config.json`` + weights); its config defines the model, so
  the model name is ignored;
- a checkpoint file (.safetensors / .pt / .bin) for an open_clip model name, which an extra open_clip JSON config
  may register (``open_clip.add_model_config``); the file is checked before open_clip reads it (a truncated copy
  or a pickle that needs code is one line, nothing in it runs: docs/reliability.md);
- an open_clip pretrained tag (downloads; open_clip's own Hub handling, docs/ecosystem.md) and the empty string (a
  random init), only where ``local_only`` is off: `mvtrain eval` downloads nothing.

Errors name the calling command's options (``ClipOptions``). open_clip is imported inside the functions: the
stages' ``--help`` must not import it (design §1).
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

from mvforge.errors import UserError

LOCAL_DIR_PREFIX = "local-dir:"
"""open_clip's spelling of a local model folder as a model name (``local-dir:DIR``)."""


@dataclass(frozen=True)
class ClipOptions:
    """How the calling command spells its options, for the errors: `mvdata filter` and `mvtrain eval` both use
    the ``--clip-*`` names (docs/cli.md, "model")."""

    pretrained: str = "--clip-pretrained"
    model_config: str = "--clip-model-config"
    model: str = "--clip-model"
    local_only: bool = False
    """Refuse tags and the empty weights name (no download, no random init): what `mvtrain eval` accepts."""


@dataclass
class LoadedClip:
    """An open_clip model ready to embed: ``model`` in eval mode, its image ``preprocess`` (PIL -> (3, S, S)
    float tensor), its ``tokenizer`` (texts -> (N, context) int64), ``name`` the open_clip model name it was
    created with (``local-dir:DIR`` for a folder) and ``pretrained`` the weights open_clip was given (a file or a
    tag; None for a folder or a random init)."""

    name: str
    pretrained: str | None
    model: object
    preprocess: object
    tokenizer: object


def check_quickgelu(model_name: str, pretrained: str, option: str = ClipOptions.model) -> None:
    """OpenAI's CLIP weights were trained with QuickGELU; loading them into a GELU model gives silently wrong
    embeddings (open_clip only warns). Refuse (UserError), and name the ``-quickgelu`` variant to use instead,
    as the value of ``option`` (the calling command's model option)."""
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    model_cfg = open_clip.get_model_config(model_name) or {}
    if tag_cfg.get("quick_gelu", False) and not model_cfg.get("quick_gelu", False):
        raise UserError(
            f"pretrained {pretrained!r} was trained with QuickGELU but model {model_name!r} uses GELU; "
            f"use {option} {model_name}-quickgelu"
        )


def clip_spec(
    model: str,
    pretrained: str | None,
    model_config: str | Path | None = None,
    options: ClipOptions = ClipOptions(),
) -> tuple[str, str | None]:
    """(open_clip model name, pretrained or None) after checking that the weights exist where they are named;
    registers ``model_config`` (an open_clip JSON) with open_clip. Loads no weights (only reads a checkpoint
    file's header or its pickle, safely), so a driver calls it before it starts workers.

    Raises UserError, naming ``options``' flags: no weights or weights that are not local (``local_only``), a
    missing config file, a ``local-dir:`` without open_clip_config.json, an unknown model name, a name that is
    neither a file nor a tag of the model, OpenAI weights on a GELU model, an unreadable checkpoint file.
    """
    import open_clip

    pretrained = pretrained or ""
    local_dir = pretrained.startswith(LOCAL_DIR_PREFIX)
    if options.local_only and not pretrained:
        raise UserError(
            f"no CLIP weights: pass {options.pretrained} local-dir:DIR or a checkpoint file (as `mvdata filter`)"
        )
    if options.local_only and not local_dir and not os.path.isfile(pretrained):
        raise UserError(
            f"{options.pretrained} {pretrained} is not a file; pass a local open_clip checkpoint or "
            "local-dir:DIR (eval downloads nothing)"
        )
    if model_config is not None:
        if not Path(model_config).is_file():
            raise UserError(
                f"{options.model_config} {model_config} does not exist; pass an open_clip JSON config"
            )
        open_clip.add_model_config(Path(model_config))
    if local_dir:
        # open_clip spells a local folder as a model-name schema; its open_clip_config.json defines the model.
        folder = Path(pretrained[len(LOCAL_DIR_PREFIX) :])
        if not (folder / "open_clip_config.json").is_file():
            raise UserError(
                f"{options.pretrained} {pretrained}: no open_clip_config.json in {folder}; point at a model dir"
            )
        return f"{LOCAL_DIR_PREFIX}{folder}", None
    if model not in open_clip.list_models():
        raise UserError(
            f"unknown open_clip model {model!r}; see open_clip.list_models() or pass {options.model_config}"
        )
    if pretrained and not os.path.isfile(pretrained):
        check_quickgelu(model, pretrained, options.model)
        if not open_clip.get_pretrained_cfg(model, pretrained):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
            raise UserError(
                f"{options.pretrained} {pretrained!r} is neither a file nor a tag of {model} (tags: {tags}); "
                "pass a checkpoint file or local-dir:DIR"
            )
    if pretrained and os.path.isfile(pretrained):
        # Checked before open_clip reads it: inside a Ray actor the same failure is a page of actor traceback.
        from mvforge import rundir

        check = rundir.check_safetensors if pretrained.endswith(".safetensors") else rundir.check_torch_file
        try:
            check(pretrained)
        except rundir.Damaged as e:
            again = "pass the file again (copied whole)" + ("" if options.local_only else " or a tag")
            raise UserError(
                f"{options.pretrained} {e}: not a readable open_clip checkpoint; {again}"
            ) from None
    return model, pretrained or None


def load_clip(
    model: str,
    pretrained: str | None,
    model_config: str | Path | None = None,
    *,
    precision: str = "fp32",
    device: str = "cpu",
    options: ClipOptions = ClipOptions(),
) -> LoadedClip:
    """The open_clip model ``model`` with weights ``pretrained`` (checked by ``clip_spec``) on ``device`` in
    ``precision`` ("fp32", "fp16", "bf16": open_clip's mixed precision), through open_clip's own
    ``create_model_and_transforms``, in eval mode, with its tokenizer.

    Raises UserError: whatever ``clip_spec`` raises, and one line for weights open_clip cannot load.
    """
    import open_clip

    name, weights = clip_spec(model, pretrained, model_config, options)
    logging.disable(logging.WARNING)  # open_clip logs to the root logger; our own errors say what matters
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # QuickGELU mismatches are refused above, not warned
            clip, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=weights, precision=precision, device=device
            )
    except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        hint = (
            "pass local weights" if options.local_only else "offline, pass a checkpoint file or local-dir:DIR"
        )
        raise UserError(f"could not load open_clip {name} / {weights}: {first}; {hint}") from None
    finally:
        logging.disable(logging.NOTSET)
    clip.eval()
    return LoadedClip(name, weights, clip, preprocess, open_clip.get_tokenizer(name))
