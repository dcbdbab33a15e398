"""Benchmark: `mvtrain fit` throughput, in-process vs N Ray Train CPU workers (docs/bench/train.md).

Builds tiny synthetic 3D shards and the tiny SD model in a temp directory, trains ``--steps`` steps in-process
(--workers 0) and with each worker count of ``--workers``, and prints the median images/s and loader wait share
read back from each run's metrics.csv (the first step, with its warm-up, is left out).

    .venv/bin/python bench/bench_fit.py [--steps 6] [--workers 2] [--resolution 64]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fixtures (the repository root; bench runs as python bench/x.py)

from mvforge.models.tiny import make_tiny_sd  # noqa: E402
from mvforge.shards.config import LoaderConfig, ShardConfig  # noqa: E402
from mvforge.shards.writer import run_shard  # noqa: E402
from mvforge.train.config import FitConfig  # noqa: E402
from mvforge.train.loop import fit  # noqa: E402
from mvforge.train.ray_fit import fit_with_ray  # noqa: E402
from tests.fixtures.synthetic import write_synthetic_render_dir  # noqa: E402


def summarize(run: Path) -> tuple[float, float]:
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))[1:]
    return (
        statistics.median(float(r["images_per_s"]) for r in rows),
        statistics.median(float(r["loader_wait_share"]) for r in rows),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic_render_dir(root / "renders", 8, views=8, resolution=args.resolution)
        run_shard(
            root / "renders",
            str(root / "shards"),
            ShardConfig(max_count=2, val_fraction=0.0, workers=0),
            show_progress=False,
        )
        sd = make_tiny_sd(root / "sd")
        loader = LoaderConfig(batch_size=args.batch_size, num_views=4, resolution=args.resolution)
        base = dict(
            pretrained=str(sd),
            shards=str(root / "shards"),
            max_steps=args.steps,
            checkpoint_every=10**6,
            log_every=1,
            device="cpu",
            tensorboard=False,
            loader=loader,
        )
        results = {}
        fit(FitConfig(out=str(root / "w0"), **base))
        results["in-process"] = summarize(root / "w0")
        for w in args.workers:
            fit_with_ray(FitConfig(out=str(root / f"w{w}"), **base), workers=w)
            results[f"{w} Ray workers"] = summarize(root / f"w{w}")
    print(f"\n{args.steps} steps, {args.batch_size} objects x 4 views x {args.resolution} px per rank:")
    for name, (ips, wait) in results.items():
        print(f"  {name:16s} {ips:8.1f} images/s   loader wait {wait:6.1%}")


if __name__ == "__main__":
    main()
