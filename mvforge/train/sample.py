"""`mvtrain sample`: V views of one prompt from a trained multi-view UNet (DDIM + classifier-free guidance).

One loop with numbered steps (diffusers pipeline style, design §9). Views are denoised jointly: the V latents of
the object go through the UNet as one multi-view batch (num_views=V), conditional and unconditional halves
each holding the V views contiguously.
"""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

import numpy as np
import torch

from mvforge.cameras import normalize_camera, orbit_c2w
from mvforge.errors import UserError
from mvforge.fsutil import atomic_write_bytes, atomic_write_json
from mvforge.train.config import SampleConfig
from mvforge.train.loop import encode_text, latest_checkpoint
from mvforge.train.model import load_frozen, load_unet


def orbit_cameras(cfg: SampleConfig) -> np.ndarray:
    """(V, 16) MVDream camera embeddings: V azimuths 360/V apart at one elevation (default: 4 orthogonal views)."""
    c2w = np.stack(
        [
            orbit_c2w(cfg.elevation_deg, cfg.azimuth_start_deg + 360.0 * i / cfg.num_views)
            for i in range(cfg.num_views)
        ]
    )
    return normalize_camera(c2w)


def resolve_checkpoint(run: str | Path) -> Path:
    """A checkpoint directory: ``run`` itself when it holds unet/, else the run's latest checkpoint."""
    run = Path(run)
    if (run / "unet").is_dir() and (run / "config.toml").is_file():
        return run
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise UserError(f"{run} holds no checkpoint; pass a run directory of `mvtrain fit` or a checkpoint")
    return ckpt


@torch.no_grad()
def sample_views(
    run: str | Path, prompt: str, cfg: SampleConfig = SampleConfig(), device: str | torch.device = "cpu"
) -> list:
    """PIL images of the V views of ``prompt``."""
    from diffusers import DDIMScheduler
    from PIL import Image

    if cfg.num_views < 1 or cfg.steps < 1:
        raise UserError(
            f"num_views {cfg.num_views}, steps {cfg.steps}: both must be >= 1 (e.g. --num-views 4 --steps 50)"
        )
    dev = torch.device(device)
    ckpt = resolve_checkpoint(run)
    fit_cfg = tomllib.loads((ckpt / "config.toml").read_text())
    weights = "unet_ema" if cfg.use_ema and (ckpt / "unet_ema").is_dir() else "unet"

    # 1. Models: the trained UNet; the frozen VAE, text encoder and schedule of the SD it was trained from.
    unet = load_unet(ckpt, weights).to(dev).eval()
    vae, text_encoder, tokenizer, train_sched = load_frozen(fit_cfg["pretrained"])
    vae.to(dev)
    text_encoder.to(dev)
    scheduler = DDIMScheduler.from_config(train_sched.config)
    scheduler.set_timesteps(cfg.steps, device=dev)
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    if cfg.resolution % down:
        raise UserError(f"resolution {cfg.resolution} is not a multiple of {down}; pick e.g. {down * 32}")
    v = cfg.num_views

    # 2. Conditions: [uncond x V, cond x V] text and the cameras repeated for both halves.
    text = encode_text(tokenizer, text_encoder, [cfg.negative_prompt, prompt], dev)
    text = text.repeat_interleave(v, dim=0)
    cams = torch.from_numpy(orbit_cameras(cfg)).to(dev).repeat(2, 1)

    # 3. Initial noise, seeded.
    g = torch.Generator().manual_seed(cfg.seed)
    shape = (v, unet.config.in_channels, cfg.resolution // down, cfg.resolution // down)
    latents = torch.randn(shape, generator=g).to(dev) * scheduler.init_noise_sigma

    # 4. DDIM with classifier-free guidance.
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        pred = unet(x, t.expand(2 * v), text, cameras=cams, num_views=v)
        uncond, cond = pred.chunk(2)
        guided = uncond + cfg.guidance_scale * (cond - uncond)
        latents = scheduler.step(guided, t, latents).prev_sample

    # 5. Decode to images.
    images = vae.decode(latents / vae.config.scaling_factor).sample
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(im) for im in images]


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save_views(images: list, out: str | Path, prompt: str, cfg: SampleConfig) -> list[Path]:
    """view_00.png ... and grid.png (the V views side by side), plus sample.json; returns the paths."""
    from PIL import Image

    out = Path(out)
    paths = []
    for i, im in enumerate(images):
        p = out / f"view_{i:02d}.png"
        atomic_write_bytes(p, _png(im))
        paths.append(p)
    w, h = images[0].size
    grid = Image.new("RGB", (w * len(images), h))
    for i, im in enumerate(images):
        grid.paste(im, (i * w, 0))
    atomic_write_bytes(out / "grid.png", _png(grid))
    from mvforge import config as config_mod

    atomic_write_json(out / "sample.json", {"prompt": prompt, "config": config_mod.to_dict(cfg)})
    return [*paths, out / "grid.png"]
