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
    run_dir: Annotated[
        Path, typer.Argument(help="Where report.html goes; the stages' outputs are found in it or given.")
    ],
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
    stage: Annotated[
        list[str],
        typer.Option(
            "--stage",
            help="STAGE=DIR: a stage's output kept outside RUN_DIR, e.g. renders=/data/renders (repeatable; "
            "stages: renders, filter, shards, train, samples, sds, dreambooth, eval).",
        ),
    ] = [],
    known_answer: Annotated[
        list[Path],
        typer.Option(
            "--known-answer",
            help="An `mvtrain eval --known-answer` output kept outside RUN_DIR, shown beside those under it "
            "(repeatable).",
        ),
    ] = [],
) -> None:
    """Write RUN_DIR/report.html: every stage found in RUN_DIR (by name, else by its contents) or given.

    Renders (contact sheet, failures, timings), filter (CLIP histogram), shards (counts), fit (loss curves,
    validation), SDS (turntables), DreamBooth, eval and known-answer results.
    """
    from mvforge.config import load, replace
    from mvforge.errors import UserError
    from mvforge.report import ReportConfig, write_report

    cfg = load(ReportConfig, config, set_)
    if views is not None:
        cfg = replace(cfg, views_per_object=views)
    if embed is not None:
        cfg = replace(cfg, embed_images=embed)
    given = {}
    for item in stage:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--stage {item!r}: write STAGE=DIR, e.g. --stage renders=/data/renders")
        if name in given:
            raise UserError(f"--stage {name} is given twice; keep one")
        given[name] = Path(path)
    say = lambda line: typer.echo(line, err=True)  # noqa: E731
    typer.echo(str(write_report(run_dir, cfg, given, say=say, known_answer=known_answer)))
