"""Multi-view SDS guidance against a hand computation (paper §3.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvforge.models import MultiViewDiffusion
from mvforge.sds.background import EnvironmentBackground
from mvforge.sds.cameras import orbit_cameras, sample_cameras
from mvforge.sds.config import BackgroundConfig, CameraConfig, FieldConfig, GuidanceConfig, RendererConfig
from mvforge.sds.field import HashGridField
from mvforge.sds.guidance import MultiViewSDS
from mvforge.sds.material import Shading
from mvforge.sds.renderer import VolumeRenderer


@pytest.fixture(scope="module")
def model(tiny_mv):
    return MultiViewDiffusion.from_pretrained(tiny_mv)


def test_latent_gradient_is_z_minus_guided_rescaled_x0_over_batch(model):
    torch.manual_seed(0)
    cfg = GuidanceConfig(guidance_scale=7.5, recon_std_rescale=0.5)
    sds = MultiViewSDS(model, cfg)
    assert sds.image_size == model.resolution  # 0 = the model's native resolution
    text = sds.encode_text("a red ceramic mug")
    n = 8  # two groups of 4 views
    rgb = torch.rand(n, 20, 20, 3, requires_grad=True)  # resized to the model's 32 px before the VAE
    cams = sample_cameras(np.random.default_rng(0), CameraConfig(), groups=2).embedding
    t, noise = 640, torch.randn(n, 4, sds.latent_size, sds.latent_size)
    out = sds(rgb, cams, text, t, noise, vae_generator=torch.Generator().manual_seed(0))
    out.loss.backward()

    # by hand, with the UNet called separately on each half and our own formulas
    z = out.latents.detach()
    a = model.scheduler.alphas_cumprod[t].float()
    zt = a.sqrt() * z + (1 - a).sqrt() * noise
    tt = torch.full((n,), t)
    with torch.no_grad():
        emb = model.encode_prompt(["a red ceramic mug", cfg.negative_prompt])
        eps_c = model.unet(zt, tt, emb[:1].expand(n, -1, -1), cams, 4)
        eps_u = model.unet(zt, tt, emb[1:].expand(n, -1, -1), cams, 4)
    eps = eps_u + 7.5 * (eps_c - eps_u)
    x0 = (zt - (1 - a).sqrt() * eps) / a.sqrt()
    x0_c = (zt - (1 - a).sqrt() * eps_c) / a.sqrt()
    ratio = torch.stack([x0_c[g * 4 : g * 4 + 4].std() / x0[g * 4 : g * 4 + 4].std() for g in range(2)])
    x0 = 0.5 * x0 * ratio.repeat_interleave(4)[:, None, None, None] + 0.5 * x0
    expected = (z - x0) / n
    torch.testing.assert_close(out.latents.grad, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.loss, 0.5 * ((z - x0) ** 2).sum() / n, rtol=1e-4, atol=1e-4)
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0  # through the VAE encoder to the renders


def test_gradients_reach_every_trainable_parameter_group(model):
    torch.manual_seed(0)
    field = HashGridField(FieldConfig(n_levels=4, log2_hashmap_size=10, max_resolution=64, mlp_hidden=16))
    background = EnvironmentBackground(BackgroundConfig())
    renderer = VolumeRenderer(field, background, RendererConfig(samples_per_ray=16))
    sds = MultiViewSDS(model, GuidanceConfig())
    cams = orbit_cameras(15.0, [0.0, 90.0, 180.0, 270.0], fov_deg=40.0, distance=2.5)
    out = renderer.render(
        cams, 16, Shading("lambertian", 0.5, 0.5), generator=torch.Generator().manual_seed(0)
    )
    t, noise = sds.draw(4, (20, 980), torch.Generator().manual_seed(0))
    sds(out.rgb, cams.embedding, sds.encode_text("a mug"), t, noise).loss.backward()
    groups = {**field.param_groups(), "background": list(background.parameters())}
    for name, params in groups.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name


def test_empty_prompt_is_a_user_error(model):
    from mvforge.errors import UserError

    with pytest.raises(UserError, match="prompt is empty"):
        MultiViewSDS(model, GuidanceConfig()).encode_text("  ")


def test_preview_writes_the_four_views_of_the_prompt(model, tmp_path):
    from PIL import Image

    from mvforge.sds.config import SDSConfig
    from mvforge.sds.preview import preview_views

    cfg = SDSConfig(prompt="a red ceramic mug", out=str(tmp_path), device="cpu")
    path = preview_views(cfg, steps=2, model=model)
    assert path == tmp_path / "preview.png"  # --out is the run directory (docs/cli.md, "output")
    with Image.open(path) as im:
        assert im.size == (4 * model.resolution, model.resolution)


@pytest.fixture(scope="module")
def v_model(tmp_path_factory):
    from mvforge.models.tiny import make_tiny_mv_pipeline

    path = make_tiny_mv_pipeline(tmp_path_factory.mktemp("v") / "v", seed=1, prediction_type="v_prediction")
    return MultiViewDiffusion.from_pretrained(path)


@pytest.mark.parametrize("which", ["epsilon", "v_prediction"])
def test_ddim_x0_is_the_end_of_a_guided_ddim_run_from_the_snapped_timestep(model, v_model, which):
    model = v_model if which == "v_prediction" else model
    assert model.scheduler.config.prediction_type == which
    torch.manual_seed(0)
    cfg = GuidanceConfig(guidance_scale=5.0, x0_ddim_steps=10)
    sds = MultiViewSDS(model, cfg)
    t, noise = sds.draw(4, (640, 640), torch.Generator().manual_seed(0))
    grid = [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]  # 10 DDIM steps, LDM's offset 1
    assert t == 601  # snapped down to the grid, so the DDIM run starts exactly at t
    rgb = torch.rand(4, 32, 32, 3, requires_grad=True)
    cams = orbit_cameras(20.0, [0.0, 90.0, 180.0, 270.0], fov_deg=50.0, distance=2.0).embedding
    out = sds(
        rgb, cams, sds.encode_text("a red mug"), t, noise, vae_generator=torch.Generator().manual_seed(0)
    )
    out.loss.backward()

    # by hand: DDIM (eta 0) with CFG at each step, down to alphas_cumprod[0] (set_alpha_to_one=False)
    ac = model.scheduler.alphas_cumprod.float()
    z = out.latents.detach()
    zt = ac[t].sqrt() * z + (1 - ac[t]).sqrt() * noise
    with torch.no_grad():
        emb = model.encode_prompt(["a red mug", cfg.negative_prompt])
        for s in grid[grid.index(t) :]:
            v_c = model.unet(zt, torch.full((4,), s), emb[:1].expand(4, -1, -1), cams, 4)
            v_u = model.unet(zt, torch.full((4,), s), emb[1:].expand(4, -1, -1), cams, 4)
            v = v_u + 5.0 * (v_c - v_u)
            if model.scheduler.config.prediction_type == "v_prediction":
                eps = ac[s].sqrt() * v + (1 - ac[s]).sqrt() * zt
            else:
                eps = v
            x0 = (zt - (1 - ac[s]).sqrt() * eps) / ac[s].sqrt()
            prev = ac[s - 100] if s - 100 >= 0 else ac[0]
            zt = prev.sqrt() * x0 + (1 - prev).sqrt() * eps
    torch.testing.assert_close(out.x0, zt, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.latents.grad, (z - zt) / 4, rtol=1e-4, atol=1e-5)


def test_fixed_background_color_replaces_the_mlp_everywhere():
    from mvforge.errors import UserError
    from mvforge.sds.background import draw_background_color

    cfg = BackgroundConfig(random_color_prob=0.5, color=(0.5, 0.25, 0.0))
    draws = [draw_background_color(np.random.default_rng(s), cfg) for s in range(8)]
    assert draws == [(0.5, 0.25, 0.0)] * 8
    with pytest.raises(UserError, match=r"background.color \[1.5, 0, 0\]: give three values in \[0, 1\]"):
        BackgroundConfig(color=(1.5, 0, 0))
    with pytest.raises(UserError, match="guidance.x0_ddim_steps"):
        GuidanceConfig(x0_ddim_steps=-3)
