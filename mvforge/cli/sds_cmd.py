"""`mvtrain sds`: text to 3D by multi-view score distillation (MVDream §3.3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mvforge.cli.common import ADDRESS_HELP, REQUIRED_UNLESS_CONFIG, quiet_libraries, set_help


def sds(
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            help="Text prompt (prompt=...). \\[required unless --config sets it or --prompts is given]",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help=f"`mvtrain fit` run/checkpoint or converted MVDream pipeline dir (model=...). {REQUIRED_UNLESS_CONFIG}",
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="Run directory; with --prompts the batch's directory, one OUT/<prompt-slug>/ per prompt "
            "(out=...).",
            show_default="sds",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="TOML config (SDSConfig), e.g. configs/sds-mvdream.toml; flags override it."
        ),
    ] = None,
    set_: Annotated[list[str], typer.Option("--set", help=set_help("camera.resolution_low=32"))] = [],
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", help="Optimisation steps (max_steps=...)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the field and every per-step draw (seed=...).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (device=...).")] = None,
    preview: Annotated[
        bool,
        typer.Option(
            "--preview",
            help="Only sample the prompt's 4 views through the model (multi-face views predict a "
            "failed SDS) into OUT/preview.png, then stop.",
        ),
    ] = False,
    prompts: Annotated[
        Path | None,
        typer.Option("--prompts", help="Text file, one prompt per line: one Ray task per prompt and seed."),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option("--seeds", help="Comma-separated seeds for --prompts.", show_default="--seed"),
    ] = None,
    gpus_per_task: Annotated[
        float | None,
        typer.Option(
            "--gpus-per-worker",
            help="GPUs per Ray task (a fraction shares a GPU; 0 is CPU).",
            show_default="1 when the cluster has GPUs, else 0",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="With --prompts: Ray tasks in flight at once.",
            show_default="as many as the cluster's GPUs (or CPUs) allow",
        ),
    ] = None,
    task_timeout_s: Annotated[
        float, typer.Option("--task-timeout", help="Seconds per prompt before it is failed (0: none).")
    ] = 0,
    address: Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", help=ADDRESS_HELP)] = None,
) -> None:
    """Text to 3D: optimise a field so its 4 orthogonal renders satisfy the multi-view model (MVDream §3.3);
    export mesh.glb/mesh.obj and a turntable. An existing run directory is resumed."""
    from mvforge import config as config_mod
    from mvforge.errors import UserError
    from mvforge.sds.config import SDSConfig

    flags = {
        "prompt": prompt,
        "model": model,
        "out": out,
        "max_steps": max_steps,
        "seed": seed,
        "device": device,
    }
    cfg = config_mod.load(SDSConfig, config, set_, flags)
    if prompts is None:
        # docs/cli.md, "errors": a flag that would do nothing is refused, naming the fix.
        given = [
            name
            for name, value in [
                ("--seeds", seeds),
                ("--workers", workers),
                ("--gpus-per-worker", gpus_per_task),
                ("--task-timeout", task_timeout_s or None),
            ]
            if value is not None
        ]
        if given:
            raise UserError(
                f"{', '.join(given)} belong to --prompts FILE (Ray tasks); add it or leave them out"
            )
    elif preview:
        raise UserError("--preview takes one --prompt; leave out --prompts")
    if prompts is not None:
        if prompt is not None:
            raise UserError("pass either --prompt or --prompts, not both")
        from mvforge.cli.prompts import read_prompts
        from mvforge.sds.ray_prompts import run_prompts

        seed_list = _parse_seeds(seeds, cfg.seed)
        records = run_prompts(
            cfg,
            read_prompts(prompts),
            seed_list,
            address=address,
            gpus_per_task=gpus_per_task,
            timeout_s=task_timeout_s,
            workers=workers,
        )
        if any(r["status"] not in ("ok", "skipped") for r in records):
            raise typer.Exit(1)  # the table above names each failed prompt and why
        return
    if not cfg.prompt.strip():
        raise UserError("the prompt is empty; pass --prompt 'a description of the object'")
    if not cfg.model:
        raise UserError(
            "no model given; pass --model with an `mvtrain fit` run or a converted MVDream pipeline"
        )
    quiet_libraries()
    if preview:
        from mvforge.sds.preview import preview_views

        typer.echo(str(preview_views(cfg)))
        return
    from mvforge.sds.loop import run_sds

    run_dir = run_sds(cfg)
    typer.echo(str(run_dir))


def _parse_seeds(text: str | None, default: int) -> list[int]:
    from mvforge.errors import UserError

    if not text:
        return [default]
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: write integers separated by commas, e.g. --seeds 0,1,2") from None
