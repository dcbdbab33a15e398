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
