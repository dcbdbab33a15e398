"""`mvtrain fit-vae`: fit a model directory's autoencoder to a shard set's views (mvforge/train/vae.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mvforge.cli.common import quiet_libraries, set_help


def fit_vae(
    model: Annotated[Path, typer.Option("--model", help="Diffusers SD directory whose vae/ is fitted.")],
    shards: Annotated[Path, typer.Option(help="3D shard directory from `mvdata shard` (its train split).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New directory: the model with the fitted vae/.")],
    steps: Annotated[
        int | None,
        typer.Option("--max-steps", help="Optimizer steps (steps=...).", show_default="600"),
    ] = None,
    resolution: Annotated[
        int | None, typer.Option(help="Image side in pixels (resolution=...).", show_default="32")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config (VAEFitConfig).")] = None,
    set_: Annotated[list[str], typer.Option("--set", help=set_help("lr=1e-3"))] = [],  # noqa: B006
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Fit the autoencoder of a model trained from scratch to the rendered views (LDM §3); sets the latent
    scaling factor from the data. A finished --out is kept as is, so a demo can re-run this step."""
    from mvforge import config as config_mod
    from mvforge.deps import require
    from mvforge.train.vae import VAEFitConfig
    from mvforge.train.vae import fit_vae as run

    require("mvtrain fit-vae")
    cfg = config_mod.load(VAEFitConfig, config, set_, {"steps": steps, "resolution": resolution})
    quiet_libraries()
    run(model, shards, out, cfg, device=device)
