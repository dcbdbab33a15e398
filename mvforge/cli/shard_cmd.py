"""`mvdata shard` and `mvdata verify` (docs/design.md §2.3). Heavy imports happen inside the command
bodies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mvforge.cli.common import ADDRESS_HELP, set_help


def shard(
    renders: Annotated[Path, typer.Argument(help="Render directory written by `mvdata render`.")],
    out: Annotated[
        str, typer.Option("--out", "-o", help="Output directory or fsspec URL (s3://bucket/shards, ...).")
    ],
    selection: Annotated[
        Path | None,
        typer.Option(
            "--selection",
            help="filter/selection.parquet: shard only its kept rows.",
            show_default="every ok object",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the object order across shards.")] = None,
    max_count: Annotated[int | None, typer.Option("--max-count", help="Most samples per shard.")] = None,
    max_size_mb: Annotated[float | None, typer.Option("--max-size-mb", help="Most MB per shard.")] = None,
    val_fraction: Annotated[
        float | None, typer.Option("--val-fraction", help="Fraction of objects in val.")
    ] = None,
    val_views: Annotated[
        str | None,
        typer.Option(
            "--val-views",
            help="Comma-separated view indices held out of every train object for validation: whole orbits, or "
            "sets of 4 views 90 degrees apart (e.g. 2,6,10,14 of 16); they go to the val split.",
            show_default="none",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Concurrent shard-writing Ray tasks (0: no Ray).")
    ] = None,
    address: Annotated[str | None, typer.Option("--address", envvar="RAY_ADDRESS", help=ADDRESS_HELP)] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file of shard settings (ShardConfig fields).")
    ] = None,
    overrides: Annotated[list[str], typer.Option("--set", help=set_help("max_count=500"))] = [],
    exclude: Annotated[
        list[str],
        typer.Option(
            "--exclude",
            help="Keep this uid out of every split, e.g. a DreamBooth subject (repeatable).",
            show_default="none",
        ),
    ] = [],
    views_2d: Annotated[
        Path | None,
        typer.Option(
            "--views-2d",
            help="Also write every view of the train split as a 2D image-text pair into this directory "
            "(img2dataset layout, for `mvtrain fit --shards-2d DIR/2d-000000.tar`).",
        ),
    ] = None,
) -> None:
    """Write deterministic webdataset shards from a render directory (resumable)."""
    from mvforge.deps import require

    require("mvdata shard")
    from mvforge.config import load
    from mvforge.shards.config import ShardConfig
    from mvforge.shards.writer import run_shard

    flags = {
        "seed": seed,
        "max_count": max_count,
        "max_size_mb": max_size_mb,
        "val_fraction": val_fraction,
        "workers": workers,
        "exclude": tuple(exclude) or None,
        "val_views": _indices(val_views) if val_views is not None else None,
    }
    cfg = load(ShardConfig, config, overrides, flags)
    if views_2d is not None and views_2d.resolve() == Path(out).resolve():
        from mvforge.errors import UserError

        raise UserError(
            "--views-2d must be another directory than --out (2D tars are not part of the 3D index)"
        )
    if views_2d is not None:
        from mvforge.shards.views2d import check_view_dir

        check_view_dir(renders, views_2d, frozenset(cfg.val_views))  # before the 3D shards, not after
    run_shard(renders, out, cfg, selection=selection, address=address)
    if views_2d is not None:
        from mvforge.shards.views2d import train_uids, write_view_shards

        # 1,000 pairs per tar; the held-out views stay out of training in 2D too
        paths = write_view_shards(renders, views_2d, train_uids(out), exclude_views=frozenset(cfg.val_views))
        typer.echo(f"2D view shards: {', '.join(str(p) for p in paths)}")


def _indices(text: str) -> tuple[int, ...]:
    """``--val-views 2,6,10,14`` -> (2, 6, 10, 14); UserError naming the form otherwise."""
    try:
        indices = tuple(int(x) for x in text.split(","))
    except ValueError:
        indices = ()
    if not indices:
        from mvforge.errors import UserError

        raise UserError(f"--val-views {text!r}: pass comma-separated view indices, e.g. 2,6,10,14")
    return indices


def verify(
    directory: Annotated[str, typer.Argument(help="Shard directory or fsspec URL holding index.json.")],
) -> None:
    """Read every shard back: counts, sha256, members, PNG decoding, camera rigidity."""
    from mvforge.deps import require

    require("mvdata verify")
    from mvforge.progress import console, print_summary
    from mvforge.shards.verify import verify as run_verify

    counts, problems = run_verify(directory)
    if problems:
        from rich.table import Table

        table = Table(title=f"{len(problems)} problem(s) in {directory}", header_style="bold red")
        for col in ("shard", "sample", "problem"):
            table.add_column(col)
        for p in problems[:200]:
            table.add_row(p.shard, p.sample, p.problem)
        console.print(table)
        if len(problems) > 200:
            console.print(f"... and {len(problems) - 200} more")
    print_summary(
        f"mvdata verify {directory}",
        [
            ("shards read", counts.get("shards", 0)),
            ("samples", counts.get("samples", 0)),
            ("GB", f"{counts.get('bytes', 0) / 1e9:.3f}"),
            ("problems", len(problems)),
        ],
    )
    if problems:
        raise typer.Exit(1)
