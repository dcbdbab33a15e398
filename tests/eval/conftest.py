"""Fixtures of the eval tests: a tiny open_clip model on disk (loaded like real weights), a synthetic render
directory as the reference, and small generation settings (1 DDIM step, 32 px)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    from mvforge.filter.tiny import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=0)


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory):
    from tests.fixtures.synthetic import write_synthetic_render_dir

    root = tmp_path_factory.mktemp("ref") / "renders"
    write_synthetic_render_dir(root, 3, views=8, resolution=32)
    return root


@pytest.fixture
def small_cfg():
    from mvforge.eval.config import EvalConfig
    from mvforge.models.config import SampleConfig

    return EvalConfig(
        sample=SampleConfig(steps=1, num_views=4, resolution=32), image_size=32, features="tiny", is_splits=2
    )
