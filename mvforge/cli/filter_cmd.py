"""`mvdata filter` and `mvdata make-tiny-clip`. Heavy imports (torch, open_clip, ray) happen inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mvforge.cli.common import ADDRESS_HELP, set_help

FILTER_HELP = "\n\n".join(
    [
        "CLIP-score and quality-gate the objects of a render directory, then select (design §2.2).",
        "Writes OUT/scores.parquet (per-view cosines, aggregate, gate results, reasons), OUT/selection.parquet "
        "(uid, score, kept, reason, threshold), OUT/report.html and OUT/config.toml. Resumable: scored objects "
        "are skipped, so re-running with another --clip-threshold / --keep-fraction / --agg only re-selects.",
        "Weights (--clip-pretrained): an open_clip tag (downloads), a checkpoint file, or local-dir:DIR. OpenAI "
        "weights (--clip-pretrained openai) were trained with QuickGELU: use a -quickgelu model (ViT-B-32-quickgelu, "
        "ViT-L-14-quickgelu); a GELU model with OpenAI weights is refused, not silently mis-scored.",
        "Offline example: mvdata make-tiny-clip --out tiny-clip; "
        "mvdata filter renders --out filtered --clip-pretrained local-dir:tiny-clip --keep-fraction 0.75",
    ]
)


def filter_cmd(
    renders: Annotated[
        Path, typer.Argument(help="Render directory written by `mvdata render` (design §2.1).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Filter output directory.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file of FilterConfig settings.")
    ] = None,
    set_: Annotated[list[str], typer.Option("--set", help=set_help("gates.enabled=false"))] = [],
    model: Annotated[
        str | None,
        typer.Option("--clip-model", help="open_clip architecture (model.name)."),
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option("--clip-pretrained", help="Tag, checkpoint file, or local-dir:DIR (model.pretrained)."),
    ] = None,
    model_config: Annotated[
        Path | None,
        typer.Option(
            "--clip-model-config", help="Extra open_clip model JSON to register (model.model_config_file)."
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option("--precision", help="fp32 (CPU/GPU) | fp16 | bf16 (GPU only) (model.precision)."),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto | cpu | cuda (local engine) (model.device).")
    ] = None,
    views: Annotated[
        int | None,
        typer.Option(
            "--score-views",
            help="Views scored per object, evenly spaced over the rendered ones (views.count).",
        ),
    ] = None,
    template: Annotated[
        str | None, typer.Option("--template", help="Text template with {} (text.template).")
    ] = None,
    agg: Annotated[
        str | None, typer.Option("--agg", help="mean | median | max | topk:K (select.agg).")
    ] = None,
    clip_threshold: Annotated[
        float | None,
        typer.Option(
            "--clip-threshold", help="Keep objects with aggregate cosine >= X (select.clip_threshold)."
        ),
    ] = None,
    keep_fraction: Annotated[
        float | None,
        typer.Option(
            "--keep-fraction", help="Keep the best fraction F of eligible objects (select.keep_fraction)."
        ),
    ] = None,
    no_gates: Annotated[
        bool, typer.Option("--no-gates", help="Store gate results but do not drop by them.")
    ] = False,
    engine: Annotated[
        str | None, typer.Option("--engine", help="ray | local (in-process) (run.engine).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Ray actors, one model each (run.workers).")
    ] = None,
    gpus_per_worker: Annotated[
        float | None,
        typer.Option("--gpus-per-worker", help="GPUs per actor; > 0 scores on cuda (run.gpus_per_worker)."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Images per model forward (model.image_batch_size).")
    ] = None,
    rescore: Annotated[
        bool, typer.Option("--rescore", help="Discard stored scores and score everything again.")
    ] = False,
    address: Annotated[str | None, typer.Option("--address", envvar="RAY_ADDRESS", help=ADDRESS_HELP)] = None,
) -> None:
    from mvforge.deps import require

    require("mvdata filter")
    from mvforge import config as cfglib
    from mvforge.filter.config import FilterConfig
    from mvforge.filter.pipeline import run_filter

    flags = {
        "model.name": model,
        "model.pretrained": pretrained,
        "model.model_config_file": model_config,
        "model.precision": precision,
        "model.device": device,
        "model.image_batch_size": batch_size,
        "views.count": views,
        "text.template": template,
        "select.agg": agg,
        "select.clip_threshold": clip_threshold,
        "select.keep_fraction": keep_fraction,
        "run.engine": engine,
        "run.workers": workers,
        "run.gpus_per_worker": gpus_per_worker,
        "gates.enabled": False if no_gates else None,
    }
    cfg = cfglib.with_flags(cfglib.load(FilterConfig, config, list(set_)), flags)
    # A threshold flag replaces the other selection mode from a config file (they are exclusive).
    if clip_threshold is not None and keep_fraction is None:
        cfg = cfglib.set_field(cfg, "select.keep_fraction", None)
    if keep_fraction is not None and clip_threshold is None:
        cfg = cfglib.set_field(cfg, "select.clip_threshold", None)
    run_filter(renders, out, cfg, address=address, rescore=rescore)


def make_tiny_clip(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the model into.")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random initialisation.")] = 0,
) -> None:
    """Write a tiny random-init open_clip model (tests, offline demo); load it with --clip-pretrained local-dir:OUT."""
    from mvforge.config import check_seed
    from mvforge.deps import require

    check_seed(seed, "--seed")
    require("mvdata make-tiny-clip")
    from mvforge.filter.tiny import TINY_NAME, WEIGHTS, write_tiny_clip

    d = write_tiny_clip(out, seed=seed)
    typer.echo(f"wrote {d}: use --clip-pretrained local-dir:{d}")
    typer.echo(
        f"  or --clip-model {TINY_NAME} --clip-model-config {d / (TINY_NAME + '.json')} --clip-pretrained {d / WEIGHTS}"
    )
