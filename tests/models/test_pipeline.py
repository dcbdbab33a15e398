"""MultiViewDiffusion and MVDreamPipeline on the tiny multi-view model (CPU): sampling and the
pipeline directory (docs/sample.md).

References are independent computations: a hand-written DDIM loop (the formulas of Song et al. 2021, eq. 12
with eta 0, LDM's uniform timesteps + 1), guidance from two separate UNet calls, diffusers' own
StableDiffusionPipeline loop for every scheduler, and cameras from ``mvforge.cameras``.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from mvforge.cameras import normalize_camera, orbit_c2w
from mvforge.errors import UserError
from mvforge.models import MultiViewDiffusion, resolve_model
from mvforge.models.pipeline import SCHEDULERS, MVDreamPipeline, make_scheduler

RES, STEPS = 16, 3  # tiny: latents 8 x 8 (the VAE downsamples x2)


@pytest.fixture(scope="module")
def model(tiny_mv) -> MultiViewDiffusion:
    return MultiViewDiffusion.from_pretrained(tiny_mv)


def _hand_cameras(v: int, elevation: float, start: float) -> torch.Tensor:
    return torch.from_numpy(
        normalize_camera(np.stack([orbit_c2w(elevation, start + 360 * i / v) for i in range(v)]))
    )


def _hand_text(model, prompts: list[str]) -> torch.Tensor:
    ids = model.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model.text_encoder(ids.input_ids)[0]


def test_ddim_equals_a_hand_written_ddim_loop(model):
    """The pipeline's DDIM (eta 0, CFG 10, 4 views, elevation 15, start 90) against the loop
    written out by hand: uncond-then-cond batch, x0 from ε, x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) ε."""
    v, s = 4, 10.0
    x = torch.randn(v, 4, RES // 2, RES // 2, generator=torch.Generator().manual_seed(5))
    pipe = model.pipeline("ddim")
    got = pipe("a chair", num_inference_steps=STEPS, resolution=RES, latents=x, output_type="latent").images

    unet, ac = model.unet, model.scheduler.alphas_cumprod.double()
    text = _hand_text(model, ["", "a chair"]).repeat_interleave(v, dim=0)  # [uncond x V, cond x V]
    cams = _hand_cameras(v, 15.0, 90.0).repeat(2, 1)
    stride = 1000 // STEPS
    ts = [int(t) + 1 for t in np.arange(0, STEPS)[::-1] * stride]  # LDM "uniform" + 1
    lat = x.clone()
    with torch.no_grad():
        for t in ts:
            out = unet(torch.cat([lat, lat]), torch.full((2 * v,), t), text, cameras=cams, num_views=v)
            eps_u, eps_c = out.chunk(2)
            eps = eps_u + s * (eps_c - eps_u)
            a, a_prev = ac[t], (ac[t - stride] if t - stride >= 0 else ac[0])
            x0 = (lat.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()
            lat = (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps.double()).float()
    assert list(pipe.scheduler.timesteps) == ts
    torch.testing.assert_close(got, lat, rtol=1e-5, atol=1e-5)  # |latents| reach ~5: float32 vs float64
    # ... and decoding: the pipeline's [0, 1] images are the VAE decode of those latents.
    images = pipe("a chair", num_inference_steps=STEPS, resolution=RES, latents=x, output_type="pt").images
    with torch.no_grad():
        ref = (model.vae.decode(lat / model.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(images, ref, rtol=0, atol=1e-5)


def test_guidance_is_uncond_plus_scale_times_difference_on_one_step(model):
    """predict_noise with CFG against two separate 4-view UNet calls combined by hand."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, 8, 8, generator=g)  # 2 objects x 4 views
    cond = _hand_text(model, ["a chair", "a lamp"]).repeat_interleave(4, dim=0)
    uncond = _hand_text(model, [""]).expand(8, -1, -1)
    cams = _hand_cameras(4, 15.0, 90.0).repeat(2, 1)
    t = torch.tensor(700)
    with torch.no_grad():
        got = model.predict_noise(x, t, cond, uncond, cams, num_views=4, guidance_scale=7.0)
        c = model.unet(x, t.expand(8), cond, cameras=cams, num_views=4)
        u = model.unet(x, t.expand(8), uncond, cameras=cams, num_views=4)
        torch.testing.assert_close(got, u + 7.0 * (c - u), rtol=1e-5, atol=1e-5)
        assert (c - u).abs().max() > 1e-4  # the two halves really differ
        # guidance_rescale (diffusers'): guided ε rescaled per image to the conditional ε's std, mixed 0.7.
        r = model.predict_noise(x, t, cond, uncond, cams, 4, 7.0, guidance_rescale=0.7)
        guided = u + 7.0 * (c - u)
        std = lambda z: z.reshape(8, -1).std(dim=1).reshape(8, 1, 1, 1)  # noqa: E731
        torch.testing.assert_close(
            r, 0.7 * guided * std(c) / std(guided) + 0.3 * guided, rtol=1e-5, atol=1e-5
        )
        # return_cond (SDS's x0 rescale needs the conditional half): the same guided ε and the conditional ε.
        both, cond_eps = model.predict_noise(x, t, cond, uncond, cams, 4, 7.0, return_cond=True)
        assert torch.equal(both, got)
        torch.testing.assert_close(cond_eps, c, rtol=1e-5, atol=1e-5)
        # No guidance: one conditional call.
        torch.testing.assert_close(model.predict_noise(x, t, cond, None, cams, 4), c, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="uncond"):
        model.predict_noise(x, t, cond, None, cams, 4, guidance_scale=7.0)
    with pytest.raises(ValueError, match="uncond"):
        model.predict_noise(x, t, cond, None, cams, 4, return_cond=True)


def test_x0_and_the_multiview_x0_rescale_against_hand_formulas(model):
    g = torch.Generator().manual_seed(2)
    x, eps = torch.randn(8, 4, 4, 4, generator=g), torch.randn(8, 4, 4, 4, generator=g)
    a = model.scheduler.alphas_cumprod[300]
    torch.testing.assert_close(model.predict_x0(x, 300, eps), (x - (1 - a).sqrt() * eps) / a.sqrt())
    x0_g, x0_c = 3 * torch.randn(8, 4, 4, 4, generator=g), torch.randn(8, 4, 4, 4, generator=g)
    got = MultiViewDiffusion.rescale_x0_multiview(x0_g, x0_c, num_views=4, factor=0.5)
    for obj in range(2):  # std over each object's 4 views together, not per image
        sl = slice(4 * obj, 4 * obj + 4)
        ratio = (x0_c[sl].std() + 1e-8) / (x0_g[sl].std() + 1e-8)
        torch.testing.assert_close(got[sl], 0.5 * x0_g[sl] * ratio + 0.5 * x0_g[sl])


def test_encode_images_with_and_without_gradient(model):
    images = torch.rand(2, 3, RES, RES, generator=torch.Generator().manual_seed(3)) * 2 - 1
    lat = model.encode_images(images, generator=torch.Generator().manual_seed(0))
    assert lat.shape == (2, 4, RES // 2, RES // 2) and not lat.requires_grad
    again = model.encode_images(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(lat, again)  # the posterior sample is seeded
    src = images.clone().requires_grad_(True)
    model.encode_images(src, grad=True, generator=torch.Generator().manual_seed(0)).sum().backward()
    assert src.grad is not None and src.grad.abs().max() > 0
    decoded = model.decode_latents(lat)
    assert decoded.shape == images.shape and decoded.min() >= -1 and decoded.max() <= 1


def _run(model, name: str, seed: int, steps: int = STEPS) -> torch.Tensor:
    pipe = model.pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(seed)
    return pipe("a chair", num_inference_steps=steps, resolution=RES, generator=gen, output_type="pt").images


def test_every_scheduler_is_deterministic_and_distinct(model):
    """Same seed -> the same images; another seed or another scheduler -> different images."""
    outs = {}
    for name in SCHEDULERS:
        a, b, c = _run(model, name, 0, 2), _run(model, name, 0, 2), _run(model, name, 1, 2)
        assert torch.equal(a, b), name
        assert (a - c).abs().max() > 1e-3, name
        outs[name] = a
    names = list(outs)
    for i, m in enumerate(names):
        for n in names[i + 1 :]:
            assert (outs[m] - outs[n]).abs().max() > 1e-4, (m, n)


@pytest.fixture(scope="module")
def sd_and_fresh_mv(tiny_sd):
    sd = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    unet = MultiViewDiffusion.from_pretrained(tiny_sd, stable_diffusion=True).unet  # fit's start: SD + camera
    return sd, MultiViewDiffusion(unet, sd.vae, sd.text_encoder, sd.tokenizer, sd.scheduler)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_one_view_without_camera_effect_equals_diffusers_sd_pipeline(sd_and_fresh_mv, name):
    """With V = 1 and the fresh (zero) camera MLP the model is SD's UNet, so every scheduler must give what
    diffusers' own StableDiffusionPipeline gives from the same noise: the loop drives schedulers as diffusers."""
    sd, mv = sd_and_fresh_mv
    pipe = mv.pipeline(name)
    sd.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    x = torch.randn(2, 4, RES // 2, RES // 2, generator=torch.Generator().manual_seed(4))
    kw = dict(num_inference_steps=STEPS, guidance_scale=5.0, output_type="latent")
    prompts = ["a chair", "a lamp"]
    got = pipe(
        prompts, num_views=1, latents=x, resolution=RES, generator=torch.Generator().manual_seed(0), **kw
    )
    # SD pads prompts with the tokenizer's pad id too; the tiny tokenizer pads with 0 like mvforge.
    gen = torch.Generator().manual_seed(0)
    want = sd(prompts, latents=x.clone(), height=RES, width=RES, generator=gen, **kw)
    torch.testing.assert_close(got.images, want.images, rtol=1e-4, atol=1e-4)


def test_a_v_prediction_model_samples_through_the_pipeline_as_through_its_own_predictions(tmp_path):
    """A v-prediction model: the pipeline's DDIM equals a loop over ``predict_noise`` (v converted to ε) with the
    model's training schedule; the saved pipeline keeps ``v_prediction`` and samples the same latents when loaded
    (by the one loader, or as the pipeline directory)."""
    from mvforge.models.tiny import make_tiny_mv_pipeline

    source = make_tiny_mv_pipeline(tmp_path / "v", seed=1, prediction_type="v_prediction")
    model = MultiViewDiffusion.from_pretrained(source)
    assert model.scheduler.config.prediction_type == "v_prediction"
    v, s = 4, 5.0
    x = torch.randn(v, 4, RES // 2, RES // 2, generator=torch.Generator().manual_seed(5))
    call = dict(num_inference_steps=STEPS, guidance_scale=s, resolution=RES, latents=x, output_type="latent")
    got = model.pipeline("ddim")("a chair", **call).images

    text = _hand_text(model, ["a chair"]).repeat(v, 1, 1)
    unc = _hand_text(model, [""]).repeat(v, 1, 1)
    cams = _hand_cameras(v, 15.0, 90.0)
    ac, stride = model.scheduler.alphas_cumprod.double(), 1000 // STEPS
    lat = x.clone()
    with torch.no_grad():
        for t in [int(t) + 1 for t in np.arange(0, STEPS)[::-1] * stride]:
            eps = model.predict_noise(lat, t, text, unc, cams, v, guidance_scale=s).double()
            a, a_prev = ac[t], (ac[t - stride] if t - stride >= 0 else ac[0])
            x0 = (lat.double() - (1 - a).sqrt() * eps) / a.sqrt()
            lat = (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps).float()
    torch.testing.assert_close(got, lat, rtol=1e-5, atol=1e-5)

    # The known-answer sampler steps the same DDIM by hand: the same latents, decoded.
    from mvforge.eval.known_answer import KnownAnswerConfig, sample_at_cameras
    from mvforge.models.camera_batch import orbit_c2w_batch

    c2w = orbit_c2w_batch(15.0, 90.0 + 90.0 * np.arange(v), 1.0)
    ka = KnownAnswerConfig(steps=STEPS, guidance_scale=s, caption_suffix="", seed=5)
    views = sample_at_cameras(model, "a chair", c2w, ka, RES)
    with torch.no_grad():
        decoded = ((model.decode_latents(got) + 1) / 2).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(views, decoded, atol=1e-4)

    saved = model.save_pretrained(tmp_path / "pipe")
    for loaded in (
        MultiViewDiffusion.from_pretrained(saved).pipeline("ddim"),
        MVDreamPipeline.from_pretrained(saved),
    ):
        assert loaded.scheduler.config.prediction_type == "v_prediction"
        torch.testing.assert_close(loaded("a chair", **call).images, got, rtol=0, atol=0)


def test_scheduler_settings_hold_for_any_source_config():
    """The official DDIM settings (design §10) override whatever the model's scheduler config says."""
    src = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )  # clip_sample default
    ddim = make_scheduler("ddim", src.config)
    assert (ddim.config.clip_sample, ddim.config.set_alpha_to_one, ddim.config.prediction_type) == (
        False,
        False,
        "epsilon",
    )
    # The model's prediction type is kept: it is what a saved pipeline tells its loaders the UNet outputs.
    v_src = DDPMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction")
    assert make_scheduler("euler", v_src.config).config.prediction_type == "v_prediction"
    assert make_scheduler("dpm++", src.config).config.algorithm_type == "dpmsolver++"
    assert make_scheduler("pndm", src.config).config.skip_prk_steps
    with pytest.raises(UserError, match="not offered"):
        make_scheduler("lms", src.config)


def test_save_pretrained_round_trip_is_bit_identical_and_unet_is_vanilla(model, tiny_mv, tmp_path):
    """Pipeline directory: save -> load gives the same bits; diffusers alone loads unet/."""
    out = model.save_pretrained(tmp_path / "pipe")
    assert sorted(p.name for p in out.iterdir()) == [
        "model_index.json",
        "mvforge_pipeline.py",
        "scheduler",
        "text_encoder",
        "tokenizer",
        "unet",
        "vae",
    ]
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    again = MultiViewDiffusion.from_pretrained(out)
    for name in ("ddim", "euler-a"):
        assert torch.equal(_run(model, name, 0), _run(again, name, 0)), name
    plain = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    assert type(plain) is UNet2DConditionModel and plain.config.class_embed_type == "projection"
    ref = model.unet.state_dict()
    assert all(torch.equal(w, ref[k]) for k, w in plain.state_dict().items())
    # The standard diffusers entry point loads it too (the classes resolve through their import paths).
    pipe = MVDreamPipeline.from_pretrained(out)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and not pipe.scheduler.config.clip_sample
    with pytest.raises(UserError, match="not empty"):
        model.save_pretrained(out)


def test_resolve_model_and_bad_input(tiny_mv, tiny_sd, tmp_path):
    assert resolve_model(tiny_mv) == tiny_mv
    ckpt = tmp_path / "run" / "checkpoints" / "step-000002"
    shutil.copytree(tiny_mv / "unet", ckpt / "unet")
    (ckpt / "config.toml").write_text("")
    (ckpt / "COMMITTED").write_text("2\n")
    (tmp_path / "run" / "checkpoints" / "step-000004.tmp" / "unet").mkdir(parents=True)  # unfinished write
    assert resolve_model(tmp_path / "run") == ckpt and resolve_model(ckpt) == ckpt
    with pytest.raises(UserError, match="does not exist"):
        resolve_model(tmp_path / "nope")
    with pytest.raises(UserError, match="holds no model"):
        resolve_model(tmp_path)
    with pytest.raises(UserError, match="no camera embedding"):
        MultiViewDiffusion.from_pretrained(tiny_sd)  # a plain SD pipeline directory
