"""`mvtrain`: the training stages (multi-view UNet fit, sampling; SDS lands later).

Heavy imports (torch, diffusers, ray) happen inside the command bodies, so `mvtrain --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mvforge.cli import dreambooth_cmd, fit_cmd
from mvforge.cli.common import run_app, set_help

app = typer.Typer(
    name="mvtrain",
    help="mvforge training stages: multi-view diffusion fit, sampling and score distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Keep the app a command group."""


@app.command()
def version() -> None:
    """Print the mvforge version."""
    from mvforge import __version__

    typer.echo(f"mvforge {__version__}")


def _quiet_libraries() -> None:
    """diffusers/transformers info chatter (accelerate hints, weight-loading bars) hides our progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@app.command("make-tiny-sd")
def make_tiny_sd_cmd(
    out: Path = typer.Option(..., "--out", help="New directory for the tiny random SD model."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
    prediction_type: str = typer.Option(
        "epsilon", help="Scheduler prediction type: epsilon or v_prediction."
    ),
    multiview: bool = typer.Option(
        False,
        "--multiview",
        help="A multi-view pipeline directory (camera MLP, for `mvtrain sample --model`).",
    ),
) -> None:
    """Write a tiny random Stable Diffusion directory (diffusers layout), offline, for tests and demos.

    A finished one (model_index.json present) is kept as is, so a demo can re-run this step."""
    from mvforge.errors import UserError

    if (out / "model_index.json").is_file():
        typer.echo(f"{out} (exists; remove it to rebuild)")
        return
    if prediction_type not in ("epsilon", "v_prediction"):
        raise UserError(f"--prediction-type {prediction_type!r}: use epsilon or v_prediction")
    _quiet_libraries()
    from mvforge.models.tiny import make_tiny_mv_pipeline, make_tiny_sd

    make = make_tiny_mv_pipeline if multiview else make_tiny_sd
    typer.echo(str(make(out, seed=seed, prediction_type=prediction_type)))


def _authors(text: str) -> str:
    return f"{text} Default: the authors' (MVDream's official inference, design §10)."


@app.command()
def sample(
    model: Path = typer.Option(
        ...,
        "--model",
        "--run",
        help="`mvtrain fit` run directory (its latest checkpoint), one checkpoint, or a pipeline directory.",
    ),
    prompt: str | None = typer.Option(
        None, "--prompt", help="Text prompt (the ', 3d asset' suffix is added)."
    ),
    prompts: Path | None = typer.Option(
        None, "--prompts", help="Text file, one prompt per line: OUT/<nnnn>-<slug>/ per prompt, progress bar."
    ),
    out: Path = typer.Option(..., "--out", help="Directory for view_XX.png, grid.png, sample.json."),
    config: Path | None = typer.Option(None, "--config", help="TOML config (SampleConfig)."),
    set_: list[str] = typer.Option([], "--set", help=set_help("prompt_suffix=''")),
    scheduler: str | None = typer.Option(
        None, help=_authors("ddim, dpm++, euler, euler-a or pndm (scheduler=...), ddim.")
    ),
    steps: int | None = typer.Option(None, help=_authors("Denoising steps (steps=...), 50.")),
    guidance_scale: float | None = typer.Option(None, help=_authors("CFG scale (guidance_scale=...), 10.")),
    negative_prompt: str | None = typer.Option(
        None, help=_authors("Unconditional text (negative_prompt=...), empty.")
    ),
    elevation: float | None = typer.Option(
        None, help=_authors("Camera elevation deg (elevation_deg=...), 15.")
    ),
    azimuth_start: float | None = typer.Option(
        None, help=_authors("Azimuth of view 0 in deg (azimuth_start_deg=...), 90.")
    ),
    num_views: int | None = typer.Option(None, help=_authors("Views, 360/V apart (num_views=...), 4.")),
    seed: int | None = typer.Option(None, help=_authors("Noise seed (seed=...), 23.")),
    resolution: int | None = typer.Option(None, help=_authors("Image side in px (resolution=...), 256.")),
    precision: str | None = typer.Option(None, help="fp32, or fp16 / bf16 on a GPU (precision=...)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    save_pipeline: Path | None = typer.Option(
        None, "--save-pipeline", help="Also write the model as a diffusers pipeline directory (new dir)."
    ),
) -> None:
    """Sample V views of each prompt with the multi-view diffusers pipeline; writes PNGs, a grid, sample.json."""
    from mvforge import config as config_mod
    from mvforge.errors import UserError
    from mvforge.models.config import SampleConfig

    cfg = config_mod.load(SampleConfig, config, set_)
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
    cfg = config_mod.with_flags(cfg, flags)
    # Input checks first: a bad flag fails before torch and diffusers are imported.
    from mvforge.models.resolve import resolve_model
    from mvforge.models.sample import check_config, read_prompts, sample_prompts, torch_dtype

    if (prompt is None) == (prompts is None):
        raise UserError("pass exactly one of --prompt TEXT or --prompts FILE")
    check_config(cfg, None if device == "auto" else device)
    texts = [prompt] if prompt is not None else read_prompts(prompts)
    resolve_model(model)
    _quiet_libraries()
    from mvforge.devices import resolve_device
    from mvforge.models.pipeline import MultiViewDiffusion

    dev = resolve_device(device)
    check_config(cfg, dev.type)
    mvd = MultiViewDiffusion.from_pretrained(model, dev, torch_dtype(cfg.precision), use_ema=cfg.use_ema)
    if save_pipeline is not None:
        typer.echo(str(mvd.save_pretrained(save_pipeline)))
    dirs = sample_prompts(mvd, texts, out, cfg, dev, show_progress=prompts is not None, label=str(model))
    for d in dirs:
        typer.echo(str(d / "grid.png"))


app.command("fit")(fit_cmd.fit)
app.command("dreambooth")(dreambooth_cmd.dreambooth)

main = run_app(app)

if __name__ == "__main__":
    main()
