"""`mvtrain fit`: the CLI of the training stage. Imports nothing heavy at module level (docs/design.md §1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mvforge.cli.common import ADDRESS_HELP, REQUIRED_UNLESS_CONFIG, set_help

_S = "Scale and failure"


def fit(
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML config (FitConfig); flags override it.")
    ] = None,
    set_: Annotated[list[str], typer.Option("--set", help=set_help("optim.lr=5e-5"))] = [],  # noqa: B006
    pretrained: Annotated[
        str | None,
        typer.Option(
            "--model",
            help=f"The model to fine-tune: a diffusers SD directory (pretrained=...). {REQUIRED_UNLESS_CONFIG}",
        ),
    ] = None,
    shards: Annotated[
        str | None,
        typer.Option(help=f"3D shard directory from `mvdata shard` (shards=...). {REQUIRED_UNLESS_CONFIG}"),
    ] = None,
    shards_2d: Annotated[
        str | None, typer.Option("--shards-2d", help="2D image-text tars (shards_2d=...).")
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="Run directory (out=...); an existing run is resumed.",
            show_default="runs/mvdream",
        ),
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Total optimizer steps (max_steps=...).")] = None,
    grad_accum_steps: Annotated[
        int | None, typer.Option(help="Micro-batches per optimizer step (grad_accum_steps=...).")
    ] = None,
    validate_every: Annotated[
        int | None, typer.Option(help="Validation grids every N steps, 0 off (validation.every=...).")
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Ray Train workers (DDP); 0 runs in this process.", rich_help_panel=_S)
    ] = 0,
    gpus_per_worker: Annotated[
        float,
        typer.Option(
            "--gpus-per-worker",
            help="GPUs per Ray Train worker (with --workers): 1 gives each DDP worker a GPU, 0 runs on CPUs.",
            rich_help_panel=_S,
        ),
    ] = 0,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="auto, cpu or cuda: where the in-process loop runs, with --workers 0 (device=...).",
            show_default="auto",
            rich_help_panel=_S,
        ),
    ] = None,
    max_failures: Annotated[
        int, typer.Option(help="Ray Train restarts after a worker dies (each resumes).", rich_help_panel=_S)
    ] = 0,
    storage_path: Annotated[
        str | None,
        typer.Option(help="Ray Train results: shared dir or fsspec URL (s3://...).", rich_help_panel=_S),
    ] = None,
    address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help=ADDRESS_HELP, rich_help_panel=_S)
    ] = None,
) -> None:
    """Train the multi-view UNet (MVDream §3) on 3D shards (+ optional 2D data); resumes an existing run.

    Resume (also with another --workers): run the same command again. SIGTERM writes a checkpoint and exits 143.
    """
    from mvforge import config as config_mod
    from mvforge.deps import require
    from mvforge.errors import UserError
    from mvforge.train.config import FitConfig

    require("mvtrain fit")
    flags = {
        "pretrained": pretrained,
        "shards": shards,
        "shards_2d": shards_2d,
        "out": out,
        "max_steps": max_steps,
        "grad_accum_steps": grad_accum_steps,
        "validation.every": validate_every,
        "device": device,
    }
    if workers < 0:
        raise UserError(f"--workers {workers}: pass 0 (in-process) or more")
    # docs/cli.md, "device" and "Ray": --device is the in-process loop's, --gpus-per-worker Ray Train's; a
    # flag for the other mode would be ignored, so it is refused.
    if workers == 0 and gpus_per_worker != 0:
        raise UserError(
            f"--gpus-per-worker {gpus_per_worker:g} is for Ray Train workers; add --workers N, "
            "or pass --device cuda to train in this process"
        )
    if workers > 0 and device is not None:
        raise UserError(
            f"--device {device} is for the in-process loop (--workers 0); Ray Train workers get their device "
            "from --gpus-per-worker (1: a GPU each, 0: CPU)"
        )
    # A DDP worker drives one device (Ray Train's use_gpu gives each worker one GPU): 0 or 1 only.
    if gpus_per_worker not in (0, 1):
        raise UserError(
            f"--gpus-per-worker {gpus_per_worker:g}: each Ray Train DDP worker drives one device; "
            "pass 1 (a GPU each) or 0 (CPUs), and set the number of GPUs with --workers"
        )
    if device is not None and device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {device!r}: use auto, cpu or cuda")
    cfg = config_mod.load(FitConfig, config, set_, flags)
    if not cfg.pretrained:
        raise UserError("no model given; pass --model DIR (a diffusers Stable Diffusion directory)")
    from mvforge.cli.common import quiet_libraries

    quiet_libraries()
    if workers == 0:
        from mvforge.train.loop import fit as run_fit

        run_fit(cfg)
    else:
        from mvforge.train.ray_fit import fit_with_ray

        result = fit_with_ray(
            cfg,
            workers,
            use_gpu=gpus_per_worker == 1,
            address=address,
            max_failures=max_failures,
            storage_path=storage_path,
        )
        if result.error is not None:
            raise result.error
        typer.echo(f"ray train result: {result.path}; metrics {result.metrics}")
