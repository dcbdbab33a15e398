"""`mvdata shard` and `mvdata verify` (design §2.3). Heavy imports happen inside the command bodies."""

from __future__ import annotations

from pathlib import Path

import typer

from mvforge.cli.common import ADDRESS_HELP, set_help


def register(app: typer.Typer) -> None:
    @app.command()
    def shard(
        renders: Path = typer.Option(..., "--renders", help="Render directory written by `mvdata render`."),
        out: str = typer.Option(
            ..., "--out", help="Output directory or fsspec URL (s3://bucket/shards, ...)."
        ),
        selection: Path | None = typer.Option(
            None,
            "--selection",
            help="filter/selection.parquet: shard only its kept rows (default: every ok object).",
        ),
        seed: int | None = typer.Option(None, help="Seed of the object order across shards."),
        max_count: int | None = typer.Option(None, "--max-count", help="Most samples per shard."),
        max_size_mb: float | None = typer.Option(None, "--max-size-mb", help="Most MB per shard."),
        val_fraction: float | None = typer.Option(None, "--val-fraction", help="Fraction of objects in val."),
        workers: int | None = typer.Option(None, help="Concurrent shard-writing Ray tasks (0: no Ray)."),
        address: str | None = typer.Option(None, "--address", envvar="RAY_ADDRESS", help=ADDRESS_HELP),
        config: Path | None = typer.Option(
            None, "--config", help="TOML file of shard settings (ShardConfig fields)."
        ),
        overrides: list[str] = typer.Option([], "--set", help=set_help("max_count=500")),
    ) -> None:
        """Write deterministic webdataset shards from a render directory (resumable)."""
        from mvforge.config import load, with_flags
        from mvforge.shards.config import ShardConfig
        from mvforge.shards.writer import run_shard

        cfg = load(ShardConfig, config, overrides)
        flags = {
            "seed": seed,
            "max_count": max_count,
            "max_size_mb": max_size_mb,
            "val_fraction": val_fraction,
            "workers": workers,
        }
        cfg = with_flags(cfg, flags)
        run_shard(renders, out, cfg, selection=selection, address=address)

    @app.command()
    def verify(
        directory: str = typer.Argument(..., help="Shard directory or fsspec URL holding index.json."),
    ) -> None:
        """Read every shard back: counts, sha256, members, PNG decoding, camera rigidity."""
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
