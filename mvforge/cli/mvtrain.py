"""`mvtrain`: the training stages (multi-view UNet fit, sampling, text-to-3D score distillation).

Heavy imports (torch, diffusers, ray) happen inside the command bodies, so `mvtrain --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mvforge.cli import convert_cmd, eval_cmd, sample_cmd, sds_cmd
from mvforge.cli.common import ADDRESS_HELP, quiet_libraries, run_app, set_help

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


@app.command()
def fit(
    config: Path | None = typer.Option(None, "--config", help="TOML config (FitConfig); flags override it."),
    set_: list[str] = typer.Option([], "--set", help=set_help("optim.lr=5e-5")),
    pretrained: str | None = typer.Option(None, help="Diffusers SD directory (pretrained=...)."),
    shards: str | None = typer.Option(None, help="3D shard directory from `mvdata shard` (shards=...)."),
    shards_2d: str | None = typer.Option(None, "--shards-2d", help="2D image-text tars (shards_2d=...)."),
    out: str | None = typer.Option(None, help="Run directory (out=...); an existing run is resumed."),
    max_steps: int | None = typer.Option(None, help="Total optimizer steps (max_steps=...)."),
    workers: int = typer.Option(0, help="Ray Train workers (DDP); 0 runs in this process."),
    use_gpu: bool = typer.Option(False, "--use-gpu", help="One GPU per Ray Train worker."),
    max_failures: int = typer.Option(0, help="Ray Train worker restarts before giving up."),
    address: str | None = typer.Option(None, envvar="RAY_ADDRESS", help=ADDRESS_HELP),
) -> None:
    """Train the multi-view UNet (MVDream §3) on 3D shards (+ optional 2D data); resumes an existing run."""
    from mvforge import config as config_mod
    from mvforge.errors import UserError
    from mvforge.train.config import FitConfig

    cfg = config_mod.load(FitConfig, config, set_)
    flags = {
        "pretrained": pretrained,
        "shards": shards,
        "shards_2d": shards_2d,
        "out": out,
        "max_steps": max_steps,
    }
    cfg = config_mod.with_flags(cfg, flags)
    if workers < 0:
        raise UserError(f"--workers {workers}: pass 0 (in-process) or more")
    quiet_libraries()
    if workers == 0:
        from mvforge.train.loop import fit as run_fit

        run_fit(cfg)
    else:
        from mvforge.train.ray_fit import fit_with_ray

        result = fit_with_ray(cfg, workers, use_gpu=use_gpu, address=address, max_failures=max_failures)
        typer.echo(f"ray train result: {result.path}; metrics {result.metrics}")


# One module per command (design §5); each body imports what it needs, so --help stays light.
app.command("make-tiny-sd")(sample_cmd.make_tiny_sd)
app.command("sample")(sample_cmd.sample)
app.command("sds")(sds_cmd.sds)
app.command("convert")(convert_cmd.convert)
app.command("eval")(eval_cmd.eval_)

main = run_app(app)

if __name__ == "__main__":
    main()
