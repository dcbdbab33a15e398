"""`mvtrain sample` (text to V views through MVDreamPipeline, docs/ecosystem.md §2) and
`mvtrain make-tiny-sd`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mvforge.cli.common import quiet_libraries, set_help


def make_tiny_sd(
    out: Annotated[Path, typer.Option("--out", "-o", help="New directory for the tiny random SD model.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    prediction_type: Annotated[
        str, typer.Option(help="Scheduler prediction type: epsilon or v_prediction.")
    ] = "epsilon",
    multiview: Annotated[
        bool,
        typer.Option(
            "--multiview", help="A multi-view pipeline directory (camera MLP, for `mvtrain sample --model`)."
        ),
    ] = False,
    variant: Annotated[
        str,
        typer.Option(
            help="tiny: the smallest SD shape; world: a lighter autoencoder, for models trained from scratch "
            "on the demo world (fit its VAE first with `mvtrain fit-vae`)."
        ),
    ] = "tiny",
    attention_heads: Annotated[
        int,
        typer.Option(
            help="Attention heads of every UNet attention layer (a divisor of 32). With 1 the UNet trains faster "
            "on a CPU than with 8 (docs/benchmarks.md); the demo world uses 1."
        ),
    ] = 8,
) -> None:
    """Write a tiny random Stable Diffusion directory (diffusers layout), offline, for tests and demos.

    A finished one is kept when it is the model asked for (its mvforge-tiny.json records the options), so a demo
    can re-run this step; another one is refused in one line."""
    from mvforge.config import check_seed
    from mvforge.errors import UserError

    check_seed(seed, "--seed")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise UserError(f"--prediction-type {prediction_type!r}: use epsilon or v_prediction")
    from mvforge.models.tiny import check_options, recipe_difference

    check_options(variant, attention_heads)  # bad flags first: they are the error, whatever --out holds
    if multiview:
        extra = [
            f
            for f, given in (("--variant", variant != "tiny"), ("--attention-heads", attention_heads != 8))
            if given
        ]
        if extra:
            raise UserError(
                f"--multiview builds the tiny variant with 8 heads only; drop {' and '.join(extra)}, or --multiview"
            )
    asked = {"multiview": multiview, "attention_heads": attention_heads, "prediction_type": prediction_type}
    diff = recipe_difference(out, **asked, variant=variant, seed=seed)
    if diff:  # a rerun (the demo's) keeps a finished directory only when it is the model asked for
        raise UserError(
            f"{out} holds another tiny model ({diff}); pass another --out (or remove it to rebuild)"
        )
    if diff == "":
        typer.echo(f"{out} (exists; remove it to rebuild)")
        return
    quiet_libraries()
    from mvforge.models.tiny import make_tiny_mv_pipeline, make_tiny_sd

    if multiview:
        typer.echo(str(make_tiny_mv_pipeline(out, seed=seed, prediction_type=prediction_type)))
    else:
        typer.echo(
            str(
                make_tiny_sd(
                    out,
                    seed=seed,
                    prediction_type=prediction_type,
                    variant=variant,
                    attention_heads=attention_heads,
                )
            )
        )


def _authors(text: str, default: str) -> dict:
    """Help and shown default of a sampling setting whose default is the authors' (docs/cli.md: one way)."""
    return {
        "help": f"{text} The default is the authors' (MVDream's official inference).",
        "show_default": default,
    }


def _save_pipeline(mvd, out: Path, weights: str) -> None:
    """``--save-pipeline``: write the pipeline, or keep it when a previous run wrote it from these weights (a
    rerun of the same command); a non-empty directory from anything else is refused (``save_pretrained``)."""
    import json

    from mvforge.fsutil import remove_dead_tmp
    from mvforge.models.pipeline import SAVED_FROM

    for leftover in remove_dead_tmp(out):  # a killed save's copy (hundreds of MB at SD size)
        typer.echo(f"mvtrain sample: removed {leftover}: the unfinished copy of a killed save", err=True)
    try:
        saved = json.loads((out / SAVED_FROM).read_text(encoding="utf-8")).get("weights")
    except (OSError, ValueError, AttributeError):
        saved = None
    if saved == weights:
        typer.echo(f"mvtrain sample: {out} was written from these weights; kept as it is", err=True)
        return
    typer.echo(str(mvd.save_pretrained(out, source={"weights": weights})))


def sample(
    model: Annotated[
        Path,
        typer.Option(
            "--model",
            help="`mvtrain fit` run directory (its latest checkpoint), one checkpoint, or a pipeline directory.",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for view_XX.png, grid.png, sample.json.")
    ],
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt", help="Text prompt (the ', 3d asset' suffix is added). \\[required: this or --prompts]"
        ),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            "--prompts",
            help="Text file, one prompt per line: OUT/<prompt-slug>/ per prompt (a prompt twice is refused), "
            "progress bar. \\[required: this or --prompt]",
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config (SampleConfig).")] = None,
    set_: Annotated[list[str], typer.Option("--set", help=set_help("prompt_suffix=''"))] = [],
    scheduler: Annotated[
        str | None,
        typer.Option(**_authors("ddim, dpm++, euler, euler-a or pndm (scheduler=...).", "ddim")),
    ] = None,
    steps: Annotated[int | None, typer.Option(**_authors("Denoising steps (steps=...).", "50"))] = None,
    guidance_scale: Annotated[
        float | None, typer.Option(**_authors("CFG scale (guidance_scale=...).", "10"))
    ] = None,
    negative_prompt: Annotated[
        str | None, typer.Option(**_authors("Unconditional text (negative_prompt=...).", "empty"))
    ] = None,
    elevation: Annotated[
        float | None, typer.Option(**_authors("Camera elevation deg (elevation_deg=...).", "15"))
    ] = None,
    azimuth_start: Annotated[
        float | None, typer.Option(**_authors("Azimuth of view 0 in deg (azimuth_start_deg=...).", "90"))
    ] = None,
    num_views: Annotated[
        int | None, typer.Option(**_authors("Views, 360/V apart (num_views=...).", "4"))
    ] = None,
    seed: Annotated[int | None, typer.Option(**_authors("Noise seed (seed=...).", "23"))] = None,
    resolution: Annotated[
        int | None,
        typer.Option(
            help="Image side in px, a multiple of 8 (resolution=...); 0: the model's native side, 256 for "
            "MVDream's.",
            show_default="0",
        ),
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="fp32, or fp16 / bf16 on a GPU (precision=...).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    save_pipeline: Annotated[
        Path | None,
        typer.Option(
            "--save-pipeline", help="Also write the model as a diffusers pipeline directory (new dir)."
        ),
    ] = None,
) -> None:
    """Sample V views of each prompt with the multi-view diffusers pipeline; writes PNGs, a grid, sample.json."""
    from mvforge import config as config_mod
    from mvforge.errors import UserError
    from mvforge.models.config import SampleConfig

    flags = {
        "scheduler": scheduler,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "negative_prompt": negative_prompt,
        "elevation_deg": elevation,
        "azimuth_start_deg": azimuth_start,
        "num_views": num_views,
        "seed": seed,
        "resolution": resolution,
        "precision": precision,
    }
    cfg = config_mod.load(SampleConfig, config, set_, flags)
    # Input checks first: a bad flag fails before torch and diffusers are imported.
    from mvforge.cli.prompts import read_prompts
    from mvforge.formats import samples as sample_format
    from mvforge.formats.samples import prompt_dirs
    from mvforge.models.resolve import weights_fingerprint
    from mvforge.models.sample import check_config, sample_prompts, torch_dtype

    if (prompt is None) == (prompts is None):
        raise UserError("pass exactly one of --prompt TEXT or --prompts FILE")
    if prompt is not None and not prompt.strip():
        raise UserError("the prompt is empty; pass --prompt 'a description of the object'")
    check_config(cfg, None if device == "auto" else device)
    texts = [prompt] if prompt is not None else read_prompts(prompts)
    if prompts is not None:
        prompt_dirs(texts)  # two prompts naming one directory fail here, before the model loads
    weights = weights_fingerprint(model)  # also checks that the model exists
    from mvforge import rundir

    with rundir.exclusive(out, "mvtrain sample"):  # before the model loads: a refusal is quick
        quiet_libraries()
        from mvforge.devices import resolve_device
        from mvforge.models.pipeline import MultiViewDiffusion

        dev = resolve_device(device)
        check_config(cfg, dev.type)
        mvd = MultiViewDiffusion.from_pretrained(model, dev, torch_dtype(cfg.precision), use_ema=cfg.use_ema)
        if save_pipeline is not None:
            _save_pipeline(mvd, save_pipeline, weights)
        dirs = sample_prompts(
            mvd,
            texts,
            out,
            cfg,
            dev,
            show_progress=prompts is not None,
            label=str(model),
            resume=True,
            weights=weights,
            per_prompt=prompts is not None,
        )
        for d in dirs:
            typer.echo(str(d / sample_format.GRID))
