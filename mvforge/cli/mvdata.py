"""`mvdata`: the data stages — render, filter, shard, verify — and demo helpers.

Each stage registers its command from its own module (``mvforge.cli.<stage>_cmd``); those modules import
nothing heavy at import time, so ``mvdata --help`` stays fast and imports no torch, bpy or ray.
"""

from __future__ import annotations

import typer

from mvforge.cli.common import run_app

app = typer.Typer(
    name="mvdata",
    help="mvforge data stages: render 3D objects with Blender, CLIP-filter them, write webdataset shards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Keep the app a command group even while it has one command."""


@app.command()
def version() -> None:
    """Print the versions of mvforge and its main dependencies."""
    from mvforge.fsutil import versions

    for k, v in versions("bpy", "torch", "ray", "open_clip_torch", "diffusers", "webdataset").items():
        typer.echo(f"{k} {v}")


def _register() -> None:
    import importlib

    for name in ("render_cmd", "filter_cmd", "shard_cmd", "demo_cmd"):
        try:
            module = importlib.import_module(f"mvforge.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"mvforge.cli.{name}":
                continue  # that stage is not built in this checkout
            raise
        module.register(app)


_register()
main = run_app(app)

if __name__ == "__main__":
    main()
