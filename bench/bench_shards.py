"""Shard benchmark (design §8): writer MB/s against plain `tar cf` of the same files; loader samples/s and
PNG decodes/s per core against a bare PIL decode of the same bytes, streamed and with the shards kept in memory.

Run: .venv/bin/python bench/bench_shards.py [--objects 32 --views 16 --resolution 256]
Synthetic views get per-pixel noise so their PNGs are about as large (incompressible) as real renders.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fixtures (the repository root; bench runs as python bench/x.py)


def noisy_render_dir(root: Path, objects: int, views: int, resolution: int) -> list[Path]:
    from mvforge.formats import renders as layout
    from tests.fixtures.synthetic import write_synthetic_render_dir

    write_synthetic_render_dir(root, objects, views=views, resolution=resolution)
    rng = np.random.default_rng(0)
    pngs = []
    for uid in layout.iter_uids(root):
        for i in range(views):
            p = layout.object_dir(root, uid) / layout.view_name(i)
            a = np.asarray(Image.open(p).convert("RGBA")).copy()
            noise = rng.integers(-12, 13, size=a.shape[:2] + (3,))
            a[..., :3] = np.clip(a[..., :3].astype(int) + noise * (a[..., 3:] > 0), 0, 255).astype(np.uint8)
            Image.fromarray(a, "RGBA").save(p)
            pngs.append(p)
    return pngs


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=32)
    ap.add_argument("--views", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from mvforge.shards.config import LoaderConfig, ShardConfig
    from mvforge.shards.loader import MultiViewLoader
    from mvforge.shards.writer import run_shard

    torch.set_num_threads(1)  # figures are per core (a DataLoader worker runs one thread too)
    tmp = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        renders = tmp / "renders"
        pngs = noisy_render_dir(renders, args.objects, args.views, args.resolution)
        data_mb = sum(p.stat().st_size for p in renders.rglob("*") if p.is_file()) / 1e6
        print(f"input: {args.objects} objects x {args.views} views at {args.resolution}^2, {data_mb:.1f} MB")

        # 1. writer vs plain tar of the same files (both single-process, page cache warm after the first run)
        cfg = ShardConfig(max_count=8, val_fraction=0.0, workers=0)

        def ours() -> None:
            shutil.rmtree(tmp / "shards", ignore_errors=True)
            run_shard(renders, str(tmp / "shards"), cfg, show_progress=False)

        def plain_tar() -> None:
            subprocess.run(["tar", "cf", str(tmp / "plain.tar"), "-C", str(renders), "."], check=True)

        t_tar = best_of(args.repeats, plain_tar)
        t_ours = best_of(args.repeats, ours)
        out_mb = sum(p.stat().st_size for p in (tmp / "shards").glob("*.tar")) / 1e6
        tar_bytes = [p.read_bytes() for p in sorted((tmp / "shards").glob("*.tar"))]
        t_sha = best_of(args.repeats, lambda: [hashlib.sha256(b).digest() for b in tar_bytes])
        tar_mb = (tmp / "plain.tar").stat().st_size / 1e6
        print(
            f"writer: mvdata shard {out_mb / t_ours:8.1f} MB/s ({t_ours:.3f} s)   "
            f"tar cf {tar_mb / t_tar:8.1f} MB/s ({t_tar:.3f} s)   ratio {out_mb / t_ours / (tar_mb / t_tar):.2f}"
        )
        print(f"        of which sha256 of the output alone (needed for index.json): {t_sha:.3f} s")

        # 1b. the tar encoder alone: mvforge's hand-built GNU header vs stdlib tarfile with the same fixed TarInfo
        # (docs/bench/shards.md: keep the hand-built header only while this shows it is worth it; bytes are equal,
        # tested).
        from mvforge.formats import renders as layout
        from mvforge.shards import schema

        samples = [
            (u, schema.object_members(layout.load_object(renders, u))) for u in layout.iter_uids(renders)
        ]

        def hand_header() -> None:
            schema.write_samples(schema.HashingWriter(io.BytesIO()), samples)

        def stdlib_tarfile() -> None:
            import tarfile

            with tarfile.open(
                fileobj=schema.HashingWriter(io.BytesIO()), mode="w", format=schema.TAR_FORMAT
            ) as tf:
                for key, members in samples:
                    for ext in sorted(members):
                        data = members[ext]
                        tf.addfile(schema._tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))

        t_hand = best_of(args.repeats, hand_header)
        t_std = best_of(args.repeats, stdlib_tarfile)
        print(
            f"tar encoder: hand-built header {data_mb / t_hand:8.1f} MB/s   stdlib tarfile {data_mb / t_std:8.1f} MB/s"
            f"   speed-up {t_std / t_hand:.2f}x"
        )

        # 2. bare PIL decode of the same PNG bytes (the floor of any loader)
        blobs = [p.read_bytes() for p in pngs]

        def bare() -> None:
            for b in blobs:
                np.asarray(Image.open(io.BytesIO(b)).convert("RGBA"))

        t_bare = best_of(args.repeats, bare)
        bare_rate = len(blobs) / t_bare
        # 3. the loader in the calling process (num_workers=0: one core), V=4 views per sample
        lcfg = LoaderConfig(
            batch_size=8,
            num_views=4,
            resolution=args.resolution,
            num_workers=0,
            batches_per_epoch=args.objects // 8,
        )
        loader = MultiViewLoader(tmp / "shards", lcfg)

        def load() -> None:  # one whole epoch
            for _ in loader:
                pass

        load()  # warm-up

        t_load = best_of(args.repeats, load)
        samples = lcfg.batch_size * loader.batches_per_epoch
        decodes = samples * lcfg.num_views / t_load
        print(
            f"loader: {samples / t_load:8.1f} samples/s   {decodes:8.1f} PNG decodes/s per core "
            f"(composite + [-1,1] included)"
        )
        print(
            f"bare PIL decode: {bare_rate:8.1f} PNG/s per core   loader/bare ratio {decodes / bare_rate:.2f}"
        )

        # 4. the same epochs with every shard kept in memory after its first read (LoaderConfig.cache_mb): what a
        # dataset that fits in memory (the demo world) gains from not parsing its tars again
        cached = MultiViewLoader(tmp / "shards", dataclasses.replace(lcfg, cache_mb=1e6))

        def load_cached() -> None:
            for _ in cached:
                pass

        load_cached()  # the first epoch reads the shards
        t_cached = best_of(args.repeats, load_cached)
        print(
            f"loader, shards kept in memory: {samples / t_cached:8.1f} samples/s   "
            f"speed-up over streaming {t_load / t_cached:.2f}x"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
