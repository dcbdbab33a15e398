"""`mvdata report` (the run's HTML report).

Nothing heavy is imported at module level: the command imports its modules when it runs (docs/design.md
§5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mvforge.cli.common import set_help


def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding renders/, filter/ and/or shards/.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file of ReportConfig settings.")
    ] = None,
    set_: Annotated[list[str], typer.Option("--set", help=set_help("thumb_px=128"))] = [],
    views: Annotated[
        int | None,
        typer.Option("--views-shown", help="Views per object in the contact sheet (views_per_object)."),
    ] = None,
    embed: Annotated[
        bool | None,
        typer.Option(
            "--embed/--link", help="Embed base64 thumbnails instead of linking the PNGs (embed_images)."
        ),
    ] = None,
) -> None:
    """Write RUN_DIR/report.html: contact sheet, failures, timings, CLIP histogram, shard counts."""
    from mvforge.config import load, replace
    from mvforge.report import ReportConfig, write_report

    cfg = load(ReportConfig, config, set_)
    if views is not None:
        cfg = replace(cfg, views_per_object=views)
    if embed is not None:
        cfg = replace(cfg, embed_images=embed)
    typer.echo(str(write_report(run_dir, cfg)))
