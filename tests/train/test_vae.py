"""`mvtrain fit-vae`: the world model's autoencoder learns to reconstruct the renders it is fitted to, the
latent scale is set from the data (LDM §4.3.2), and the output is complete or absent, resumed as a no-op."""

from __future__ import annotations

import json

import pytest
import torch

from mvforge.errors import UserError
from mvforge.models.tiny import make_tiny_sd
from mvforge.shards.config import LoaderConfig, ShardConfig
from mvforge.shards.loader import MultiViewLoader
from mvforge.shards.writer import run_shard
from mvforge.train.vae import DONE_FILE, VAEFitConfig, fit_vae, psnr
from tests.fixtures.synthetic import write_synthetic_render_dir


def _recon_psnr(model_dir, shards) -> float:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae").eval()
    loader = MultiViewLoader(
        str(shards), LoaderConfig(batch_size=4, resolution=32, batches_per_epoch=1, seed=9)
    )
    x = next(iter(loader))["images"].flatten(0, 1)
    with torch.no_grad():
        return psnr(vae.decode(vae.encode(x).latent_dist.mode()).sample, x)


def test_fitted_vae_reconstructs_and_scales_its_latents(tmp_path):
    renders = tmp_path / "renders"
    write_synthetic_render_dir(renders, 4, views=8, resolution=32)
    shards = tmp_path / "shards"
    run_shard(
        renders, str(shards), ShardConfig(max_count=2, val_fraction=0.0, workers=0), show_progress=False
    )
    init = make_tiny_sd(tmp_path / "init", variant="world")
    cfg = VAEFitConfig(steps=60, batch_size=4, lr=3e-3)

    summary = fit_vae(init, shards, tmp_path / "fitted", cfg, show_progress=False)
    before, after = _recon_psnr(init, shards), _recon_psnr(tmp_path / "fitted", shards)
    assert after > before + 5, (before, after)
    vae_cfg = json.loads((tmp_path / "fitted" / "vae" / "config.json").read_text())
    assert vae_cfg["scaling_factor"] == pytest.approx(summary["scaling_factor"], rel=1e-4)
    assert summary["scaling_factor"] != 0.18215
    unet_cfg = json.loads((tmp_path / "fitted" / "unet" / "config.json").read_text())  # travels along
    assert unet_cfg["attention_head_dim"] == 8  # diffusers' name for the head count

    mtime = (tmp_path / "fitted" / DONE_FILE).stat().st_mtime_ns
    assert fit_vae(init, shards, tmp_path / "fitted", cfg, show_progress=False) == summary  # resume: no-op
    assert (tmp_path / "fitted" / DONE_FILE).stat().st_mtime_ns == mtime
    with pytest.raises(UserError, match="other settings"):
        fit_vae(init, shards, tmp_path / "fitted", VAEFitConfig(steps=61), show_progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(UserError, match="not a fit-vae output"):
        fit_vae(init, shards, tmp_path / "junk", cfg, show_progress=False)
    with pytest.raises(UserError, match="has no vae/"):
        fit_vae(tmp_path / "junk", shards, tmp_path / "new", cfg, show_progress=False)
