"""Every preset in configs/ loads into its stage's config dataclass (unknown keys would be an error)."""

import dataclasses
from pathlib import Path

import pytest

from mvforge.config import load
from mvforge.render.config import RenderConfig
from mvforge.sds.config import SDSConfig
from mvforge.train.config import FitConfig
from mvforge.train.dreambooth_config import DreamBoothConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KIND = {
    "render": RenderConfig,
    "mvdream": FitConfig,
    "world": FitConfig,
    "sds": SDSConfig,
    "dreambooth": DreamBoothConfig,
}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_preset_loads(path):
    cls = KIND[path.stem.split("-")[0]]
    cfg = load(cls, path)
    assert isinstance(cfg, cls)


def test_presets_carry_the_paper_settings():
    fit = load(FitConfig, CONFIGS / "mvdream-sd21.toml")
    assert (fit.loader.num_views, fit.loader.resolution, fit.loader.p_3d) == (4, 256, 0.7)
    render = load(RenderConfig, CONFIGS / "render-objaverse.toml")
    assert (render.cameras.views, render.orbits, render.resolution) == (32, 2, 256)
    assert render.cameras.framing == "mvdream"  # the paper's distance rule (paper §4.1, design §3)
    db = load(DreamBoothConfig, CONFIGS / "dreambooth-mvdream.toml")
    assert (db.max_steps, db.optim.lr, db.optim.weight_decay, db.batch_size) == (600, 2e-6, 0.01, 4)
    assert db.preservation_lambda == 1.0 and not db.train_camera


def test_sds_preset_is_the_official_setup():
    sds = load(SDSConfig, CONFIGS / "sds-mvdream.toml")
    assert sds == dataclasses.replace(
        SDSConfig(),
        checkpoint_every=1000,
        renderer=sds.renderer,
        export_mesh=sds.export_mesh,
    ), "the preset and the dataclass defaults (both the official settings) disagree"
    assert (sds.guidance.guidance_scale, sds.guidance.recon_std_rescale, sds.max_steps) == (50.0, 0.5, 10000)
    light = load(SDSConfig, CONFIGS / "sds-mvdream-noshading.toml")
    # the official mvdream-sd21.yaml: no lighting, no normals, no orientation loss (tests/sds/test_official.py)
    assert light.material.diffuse_prob == 0.0 and light.loss.lambda_orient == (0.0, 0.0)
