"""Fixtures of the shard tests: tiny synthetic render directories (real PNGs, real cameras) and their shards."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from mvforge.shards.config import ShardConfig
from mvforge.shards.writer import run_shard
from tests.fixtures.synthetic import write_synthetic_render_dir


@pytest.fixture(scope="session")
def mvdata_bin() -> str:
    """The `mvdata` entry point of the environment running the tests (.venv, or .venv-train under
    `make test-train`: each environment's tests run its own commands)."""
    return str(Path(sys.executable).with_name("mvdata"))


@pytest.fixture(scope="session")
def make_2d_shards():
    return write_2d_shards


@pytest.fixture(scope="session")
def renders(tmp_path_factory) -> Path:
    """8 objects x 8 views at 32 px."""
    root = tmp_path_factory.mktemp("renders")
    write_synthetic_render_dir(root, 8, views=8, resolution=32)
    return root


@pytest.fixture(scope="session")
def shards(renders, tmp_path_factory) -> Path:
    """4 train shards of 2 objects, no val (written in the driver: workers=0)."""
    out = tmp_path_factory.mktemp("shards")
    run_shard(renders, str(out), ShardConfig(max_count=2, val_fraction=0.0, workers=0), show_progress=False)
    return out


def write_2d_shards(root: Path, n_shards: int = 2, per_shard: int = 4, size: int = 24) -> list[str]:
    """img2dataset-layout shards (key.jpg + key.txt), keys img-<shard>-<i>; returns the tar paths."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(n_shards):
        path = root / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"img-{s}-{i}"
                buf = io.BytesIO()
                Image.new("RGB", (size + 8, size), (10 * i, 20 * s, 100)).save(buf, format="JPEG")
                for ext, data in (("jpg", buf.getvalue()), ("txt", f"a photo {s} {i}".encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths
