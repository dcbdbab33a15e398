"""Validation grids of `mvtrain fit` (docs/design.md §2.5): sampled on rank 0 with the EMA weights and a fixed
seed.

3D prompts go through the models layer's ``MVDreamPipeline`` (``sample_prompts``: V orbit views, the caption
suffix of training added); 2D prompts are sampled without cameras (one view, ``predict_noise`` in 2D mode), so
forgetting of SD's 2D ability shows. Output: ``validation/step-XXXXXX/<nn>-<slug>/`` with ``grid.png``,
``view_XX.png`` and ``sample.json`` per prompt, plus ``validation.json`` listing them; each grid also goes to
TensorBoard as ``validation/<nn>-<slug>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mvforge.formats import samples as sample_format
from mvforge.fsutil import atomic_write_json
from mvforge.models.config import SampleConfig
from mvforge.models.pipeline import MultiViewDiffusion, make_scheduler
from mvforge.models.sample import sample_prompts, save_views


def _sample_2d(mvd: MultiViewDiffusion, prompt: str, cfg: SampleConfig) -> Image.Image:
    """One camera-less image of ``prompt`` (SD's own 2D mode of the multi-view UNet), DDIM with CFG."""
    sched = make_scheduler("ddim", mvd.scheduler.config)
    sched.set_timesteps(cfg.steps, device=mvd.device)
    cond = mvd.encode_prompt([prompt])
    uncond = mvd.encode_prompt([cfg.negative_prompt]) if cfg.guidance_scale != 1.0 else None
    h = cfg.resolution // mvd.vae_scale_factor
    g = torch.Generator().manual_seed(cfg.seed)
    latents = torch.randn((1, mvd.unet.config.in_channels, h, h), generator=g).to(mvd.device)
    for t in sched.timesteps:
        eps = mvd.predict_noise(latents, t, cond, uncond, None, 1, cfg.guidance_scale)
        latents = sched.step(eps, t, latents, eta=0.0).prev_sample
    x = mvd.decode_latents(latents).float()[0]
    arr = ((x + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


@torch.no_grad()
def validate(m, ema, cfg, step: int, out: Path, writer=None) -> Path:
    """Sample ``cfg.validation``'s prompts at ``step`` with the EMA weights (when EMA is on; the training
    weights are restored after) into ``out/validation/step-XXXXXX/``; returns that directory."""
    v = cfg.validation
    unet = m.unet
    root = sample_format.validation_step_dir(out, step)
    sample_cfg = SampleConfig(
        steps=v.steps,
        guidance_scale=v.guidance_scale,
        num_views=cfg.loader.num_views,
        resolution=v.resolution or cfg.loader.resolution,
        seed=v.seed,
        prompt_suffix=cfg.loader.caption_suffix,
    )
    was_training = unet.training
    if ema is not None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
    unet.eval()
    entries = []
    try:
        mvd = MultiViewDiffusion(unet, m.vae, m.text_encoder, m.tokenizer, m.noise_sched)
        amp = torch.autocast(m.device.type, dtype=m.autocast_dtype, enabled=m.autocast_dtype is not None)
        with amp:
            for i, prompt in enumerate(v.prompts):
                d = sample_format.validation_prompt_dir(root, i, prompt)
                sample_prompts(
                    mvd, [prompt], d, sample_cfg, m.device, show_progress=False, label=f"step {step}"
                )
                entries.append({"prompt": prompt, "kind": "3d", "dir": d.name})
            cfg_2d = SampleConfig(**{**sample_cfg.__dict__, "num_views": 1, "prompt_suffix": ""})
            for i, prompt in enumerate(v.prompts_2d, start=len(v.prompts)):
                d = sample_format.validation_prompt_dir(root, i, prompt)
                save_views([_sample_2d(mvd, prompt, cfg_2d)], d, {"prompt": prompt, "text": prompt}, cfg_2d)
                entries.append({"prompt": prompt, "kind": "2d", "dir": d.name})
    finally:
        if ema is not None:
            ema.restore(unet.parameters())
        unet.train(was_training)
    atomic_write_json(root / sample_format.VALIDATION_INDEX, {"step": step, "prompts": entries})
    if writer is not None:
        for e in entries:
            grid = np.asarray(Image.open(root / e["dir"] / sample_format.GRID).convert("RGB"))
            writer.add_image(f"validation/{e['dir']}", grid, step, dataformats="HWC")
        writer.flush()
    return root
