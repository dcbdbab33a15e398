"""Shared fixtures of the filter tests: one tiny CLIP model and one local Ray per session (Ray starts slowly)."""

from __future__ import annotations

import pytest

from mvforge.filter.config import ClipModelConfig, FilterConfig, RunConfig, SelectConfig
from mvforge.filter.tiny import TINY_NAME, WEIGHTS, write_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """Directory of the tiny random-init model (config JSON, open_clip_config.json, safetensors weights)."""
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), seed=0)


def _tiny_cfg(tiny_dir, *, local_dir: bool = False, **sections) -> FilterConfig:
    """A FilterConfig scoring with the tiny model, loaded as a checkpoint file (default) or as local-dir:."""
    if local_dir:
        model = ClipModelConfig(pretrained=f"local-dir:{tiny_dir}")
    else:
        model = ClipModelConfig(
            name=TINY_NAME,
            pretrained=str(tiny_dir / WEIGHTS),
            model_config_file=tiny_dir / f"{TINY_NAME}.json",
        )
    defaults = {
        "model": model,
        "select": SelectConfig(keep_fraction=0.5),
        "run": RunConfig(engine="local", objects_per_batch=4),
    }
    defaults.update(sections)
    return FilterConfig(**defaults)


@pytest.fixture(scope="session")
def make_cfg(tiny_clip):
    """``make_cfg(local_dir=False, **sections)``: a FilterConfig that scores with the tiny model."""
    return lambda **kw: _tiny_cfg(tiny_clip, **kw)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for every test of the session that needs it (2 CPUs, as the CI machine has)."""
    import ray

    from mvforge.raytools import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()
