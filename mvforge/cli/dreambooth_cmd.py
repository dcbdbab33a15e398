"""`mvtrain dreambooth`: MVDreamBooth (paper §3.4; docs/dreambooth.md). Imports nothing heavy at module level
(docs/design.md §1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mvforge.cli.common import REQUIRED_UNLESS_CONFIG, set_help

_P = "Prior preservation and validation"


def dreambooth(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Multi-view model to fine-tune: pipeline dir, `mvtrain fit` checkpoint or run (pretrained=...). "
            + REQUIRED_UNLESS_CONFIG,
        ),
    ] = None,
    images: Annotated[
        str | None,
        typer.Option(
            help=f"Directory of subject photos, jpg/png/webp, any size (images=...). {REQUIRED_UNLESS_CONFIG}"
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            help=(
                "Subject prompt with a rare identifier, e.g. 'a photo of xjq dog' (prompt=...). 'sks', the "
                "diffusers examples' token, is a poor one: it is a rifle (the SKS) to the text encoder, so the "
                "subject inherits that prior; pick a short token that is rare in captions and tokenizes to "
                "one piece. " + REQUIRED_UNLESS_CONFIG
            )
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="Run directory (out=...); an existing run is resumed.",
            show_default="runs/dreambooth",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="TOML config (DreamBoothConfig), e.g. configs/dreambooth-mvdream.toml."
        ),
    ] = None,
    set_: Annotated[list[str], typer.Option("--set", help=set_help("preservation_lambda=1e6"))] = [],  # noqa: B006
    masks: Annotated[
        str | None, typer.Option(help="Directory of <stem>.png masks, white = subject (masks=...).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps (max_steps=...).")] = None,
    preservation_lambda: Annotated[
        float | None,
        typer.Option(
            "--lambda",
            help="λ of λ·‖θ−θ0‖₁/N_θ (preservation_lambda=...); 1 is the paper's and nearly inert (docs).",
        ),
    ] = None,
    class_prompt: Annotated[
        str | None,
        typer.Option(
            help="Class prompt, e.g. 'a photo of a dog': validation grids (class_prompt=...).",
            rich_help_panel=_P,
        ),
    ] = None,
    class_images: Annotated[
        str | None,
        typer.Option(
            help="Class images for prior preservation (class_images=...).",
            show_default="off",
            rich_help_panel=_P,
        ),
    ] = None,
    validate_every: Annotated[
        int | None,
        typer.Option(
            help="Validation grids every N steps, 0 off (validation.every=...).", rich_help_panel=_P
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (device=...).")] = None,
) -> None:
    """Fine-tune the multi-view model on a few photos of one subject (MVDreamBooth, paper §3.4).

    Trains the UNet in the 2D mode (no camera, per-image attention) with the parameter-preservation loss;
    the text encoder, VAE and camera MLP stay frozen. Writes checkpoints (resume: run it again) and
    OUT/pipeline, which `mvtrain sample --model` and `mvtrain sds` load (so does OUT itself)."""
    from mvforge import config as config_mod
    from mvforge.deps import require
    from mvforge.train.dreambooth_config import DreamBoothConfig

    require("mvtrain dreambooth")
    flags = {
        "pretrained": model,
        "images": images,
        "prompt": prompt,
        "out": out,
        "masks": masks,
        "max_steps": max_steps,
        "preservation_lambda": preservation_lambda,
        "class_prompt": class_prompt,
        "class_images": class_images,
        "validation.every": validate_every,
        "device": device,
    }
    cfg = config_mod.load(DreamBoothConfig, config, set_, flags)
    from mvforge.cli.common import quiet_libraries

    quiet_libraries()
    from mvforge.train.dreambooth import dreambooth as run

    run(cfg)
