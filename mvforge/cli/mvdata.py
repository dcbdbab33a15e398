"""`mvdata`: the data stages — render, filter, shard, verify — and demo helpers.

Each command is a module-level function in its own module (``mvforge.cli.<stage>_cmd``), registered below;
those modules import nothing heavy at import time, so ``mvdata --help`` stays fast and imports no torch, bpy
or ray. ``mvdata doctor`` says which extras are installed and which commands work.
"""

from __future__ import annotations

from mvforge.cli import demo_cmd, filter_cmd, render_cmd, shard_cmd
from mvforge.cli.common import make_app, reflow_help, run_app

app = make_app(
    "mvdata",
    "mvforge data stages: render 3D objects with Blender, CLIP-filter them, write webdataset shards.",
)


@app.command()
def doctor() -> None:
    """Which mvforge extras are installed here and which commands work (no heavy import)."""
    from rich.console import Console

    from mvforge import deps

    console = Console()  # stdout: `mvdata doctor | grep train` works
    from mvforge.progress import summary_table as table

    rep = deps.report()
    console.print(
        table(
            "extras",
            [(e, "ok" if not miss else f"missing {', '.join(miss)}") for e, miss in rep.extras.items()],
        )
    )
    console.print(
        table(
            "commands",
            [
                (c, "ok" if ok else f"needs mvforge[{','.join(deps.COMMANDS[c])}]")
                for c, ok in rep.commands.items()
            ],
        )
    )


# One module per command (docs/design.md §5); each body imports what it needs, so --help stays light.
app.command("render", help=render_cmd.RENDER_HELP, no_args_is_help=True)(render_cmd.render)
app.command("filter", help=filter_cmd.FILTER_HELP)(filter_cmd.filter_cmd)
app.command("make-tiny-clip")(filter_cmd.make_tiny_clip)
app.command("shard")(shard_cmd.shard)
app.command("verify")(shard_cmd.verify)
app.command("report")(demo_cmd.report)

reflow_help(app)
main = run_app(app)

if __name__ == "__main__":
    main()
