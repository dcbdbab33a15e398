"""Validation of `mvtrain fit` (docs/design.md §2.5): grids sampled on rank 0 with the EMA weights and a fixed
seed, and the diffusion loss on the shards' val split (the held-out views of `mvdata shard --val-views`).

3D prompts go through the models layer's ``MVDreamPipeline`` (``sample_prompts``: V orbit views, the caption
suffix of training added); 2D prompts are sampled without cameras (one view, ``predict_noise`` in 2D mode), so
forgetting of SD's 2D ability shows. Output: ``validation/step-XXXXXX/<nn>-<slug>/`` with ``grid.png``,
``view_XX.png`` and ``sample.json`` per prompt, plus ``validation.json`` listing them (and ``val_loss``); each grid
also goes to TensorBoard as ``validation/<nn>-<slug>``, the loss as ``val/loss``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mvforge import config as config_mod
from mvforge.errors import UserError
from mvforge.formats import samples as sample_format
from mvforge.fsutil import atomic_write_json
from mvforge.models.config import SampleConfig
from mvforge.models.pipeline import MultiViewDiffusion, make_stepper
from mvforge.models.sample import sample_prompts, save_views


def _sample_2d(mvd: MultiViewDiffusion, prompt: str, cfg: SampleConfig) -> Image.Image:
    """One camera-less image of ``prompt`` (SD's own 2D mode of the multi-view UNet), DDIM with CFG."""
    sched = make_stepper("ddim", mvd.scheduler.config)
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


def check_val_split(cfg) -> None:
    """Refuse, before training, a ``validation.loss_batches`` with no val split to compute it on, or one whose
    first sample gives no set of ``loader.num_views`` views (held-out views fewer than that per orbit)."""
    v = cfg.validation
    if not (v.every and v.loss_batches):
        return
    import numpy as np

    from mvforge.formats.shards import read_shard
    from mvforge.shards.loader import BadSample, decode_3d, resolve_shards

    try:
        urls = resolve_shards(cfg.shards, "val")[0]
    except UserError:
        raise UserError(
            f"validation.loss_batches needs a val split and {cfg.shards} has none; shard with "
            "`mvdata shard --val-views 2,6,10,14` (or --val-fraction), or set validation.loss_batches=0"
        ) from None
    raw = next(read_shard(urls[-1]), None)  # the last: held-out views follow the whole val objects
    try:
        if raw is not None:
            decode_3d(raw, np.random.default_rng(v.seed), cfg.loader)
    except BadSample as e:
        raise UserError(
            f"the val split of {cfg.shards} gives no batch ({e}); hold out "
            f"{cfg.loader.num_views} views per orbit (e.g. `mvdata shard --val-views 2,6,10,14` of a 16-view orbit), "
            "or set validation.loss_batches=0"
        ) from None


@torch.no_grad()
def validation_loss(m, cfg) -> float:
    """Mean diffusion loss (fit's loss: ε/v target, Min-SNR-γ) of the UNet as it is over
    ``cfg.validation.loss_batches`` 3D batches of the val split, float. Views, backgrounds, timesteps and noise
    come from ``validation.seed`` only (no caption dropout, no noise offset), so every call sees the same
    inputs. Runs on the bare UNet, never its DDP wrapper: only rank 0 validates."""
    from mvforge.shards.loader import MultiViewLoader
    from mvforge.train.loop import micro_batch_inputs, micro_batch_loss

    v = cfg.validation
    loader_cfg = config_mod.replace(cfg.loader, num_workers=0, batches_per_epoch=v.loss_batches, seed=v.seed)
    loss_cfg = config_mod.replace(cfg, caption_dropout=0.0, noise_offset=0.0)
    m = dataclasses.replace(m, model=m.unet)
    g = torch.Generator().manual_seed(v.seed)
    losses = []
    for batch in MultiViewLoader(cfg.shards, loader_cfg, rank=0, world_size=1, split="val"):
        losses.append(micro_batch_loss(m, micro_batch_inputs(m, batch, g, loss_cfg), loss_cfg).item())
    return sum(losses) / len(losses)


@torch.no_grad()
def validate(m, ema, cfg, step: int, out: Path, writer=None) -> Path:
    """Sample ``cfg.validation``'s prompts at ``step`` with the EMA weights (when EMA is on; the training
    weights are restored after) into ``out/validation/step-XXXXXX/``, and the val split's loss when
    ``validation.loss_batches`` > 0; returns that directory."""
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
        val_loss = validation_loss(m, cfg) if v.loss_batches else None
    finally:
        if ema is not None:
            ema.restore(unet.parameters())
        unet.train(was_training)
    root.mkdir(parents=True, exist_ok=True)  # (no prompt made it)
    doc = {"step": step, "prompts": entries} | ({"val_loss": val_loss} if val_loss is not None else {})
    atomic_write_json(root / sample_format.VALIDATION_INDEX, doc)
    if writer is not None:
        if val_loss is not None:
            writer.add_scalar("val/loss", val_loss, step)
        for e in entries:
            grid = np.asarray(Image.open(root / e["dir"] / sample_format.GRID).convert("RGB"))
            writer.add_image(f"validation/{e['dir']}", grid, step, dataformats="HWC")
        writer.flush()
    return root
