"""`mvtrain`: the training stages (multi-view UNet fit, sampling, SDS).

The data stages are in ``mvdata``; the trainer, sampler and SDS commands register here as they land.
"""

from __future__ import annotations

import typer

from mvforge.cli.common import run_app

app = typer.Typer(
    name="mvtrain",
    help="mvforge training stages: multi-view diffusion fit, sampling and score distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Keep the app a command group even while it has one command."""


@app.command()
def version() -> None:
    """Print the mvforge version."""
    from mvforge import __version__

    typer.echo(f"mvforge {__version__}")


main = run_app(app)

if __name__ == "__main__":
    main()
