"""Fixtures of the training tests: tiny synthetic 3D/2D shards (the tiny SD model is in tests/conftest.py)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from mvforge.shards.config import LoaderConfig, ShardConfig
from mvforge.shards.writer import run_shard
from mvforge.train.config import FitConfig
from tests.fixtures.synthetic import write_synthetic_render_dir


@pytest.fixture(scope="session")
def shards_3d(tmp_path_factory) -> Path:
    """4 objects x 8 views at 32 px in 2 train shards."""
    root = tmp_path_factory.mktemp("train-data")
    write_synthetic_render_dir(root / "renders", 4, views=8, resolution=32)
    run_shard(
        root / "renders",
        str(root / "shards"),
        ShardConfig(max_count=2, val_fraction=0.0, workers=0),
        show_progress=False,
    )
    return root / "shards"


@pytest.fixture(scope="session")
def shards_2d(tmp_path_factory) -> str:
    """One img2dataset-layout tar of 8 JPEG + caption pairs."""
    path = tmp_path_factory.mktemp("data-2d") / "00000.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(8):
            buf = io.BytesIO()
            Image.new("RGB", (40, 32), (30 * i, 90, 200 - 20 * i)).save(buf, format="JPEG")
            for ext, data in (("jpg", buf.getvalue()), ("txt", f"a photo number {i}".encode())):
                info = tarfile.TarInfo(f"img-{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.fixture(scope="session")
def make_fit_config():
    return fit_config


def fit_config(tiny_sd: Path, shards: Path, out: Path, **changes) -> FitConfig:
    """A few-step CPU run: batch 2 objects x 4 views at 32 px, checkpoints every 2 steps."""
    loader = changes.pop(
        "loader", LoaderConfig(batch_size=2, num_views=4, resolution=32, batches_per_epoch=3)
    )
    base = dict(
        pretrained=str(tiny_sd),
        shards=str(shards),
        out=str(out),
        max_steps=4,
        checkpoint_every=2,
        log_every=1,
        ema_decay=0.9,
        device="cpu",
        loader=loader,
    )
    base.update(changes)
    return FitConfig(**base)


@pytest.fixture(scope="session")
def step_inputs():
    """(injected_inputs, cat_inputs): hand-built micro-batches for the step tests (t and noise injected)."""
    return injected_inputs, cat_inputs


def injected_inputs(objects: int, views: int = 4, seed: int = 0, cameras: bool = True) -> dict:
    """A multi-view micro-batch with fixed latents (8 x 8), text, cameras, timesteps and noise."""
    g = torch.Generator().manual_seed(seed)
    n = objects * views
    return {
        "latents": torch.randn(n, 4, 8, 8, generator=g),
        "text": torch.randn(n, 77, 32, generator=g),
        "cameras": torch.randn(n, 16, generator=g) if cameras else None,
        "num_views": views,
        "t": torch.randint(0, 1000, (objects,), generator=g).repeat_interleave(views),
        "noise": torch.randn(n, 4, 8, 8, generator=g),
    }


def cat_inputs(parts: list[dict]) -> dict:
    out = {k: torch.cat([p[k] for p in parts]) for k in ("latents", "text", "cameras", "t", "noise")}
    return out | {"num_views": parts[0]["num_views"]}
