"""`mvtrain sds --preview`: the prompt's 4 views sampled through the multi-view pipeline.

The MVDream authors' advice: look at the model's multi-view samples of a prompt before a long SDS run; views
with several faces (the Janus problem) or inconsistent across views predict a failed distillation. The views
are sampled as the official inference does (DDIM 50 steps, CFG 10, elevation 15, start azimuth 90;
docs/design.md §10.10) from the prompt exactly as SDS conditions on it (with ``guidance.prompt_suffix``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from mvforge.devices import resolve_device
from mvforge.formats import sds_result as result_format
from mvforge.fsutil import atomic_write_bytes
from mvforge.sds.config import SDSConfig
from mvforge.sds.loop import load_guidance_model

PREVIEW_STEPS = 50
PREVIEW_GUIDANCE = 10.0


def preview_views(cfg: SDSConfig, steps: int = PREVIEW_STEPS, model=None) -> Path:
    """Write ``<out>/preview.png`` (4 views side by side at the model's resolution); returns its path."""
    from PIL import Image

    device = resolve_device(cfg.device)
    model = model or load_guidance_model(cfg, device)
    pipe = model.pipeline("ddim")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        cfg.prompt + cfg.guidance.prompt_suffix,
        num_views=cfg.camera.n_view,
        num_inference_steps=steps,
        guidance_scale=PREVIEW_GUIDANCE,
        generator=torch.Generator().manual_seed(cfg.seed),
        output_type="np",
    ).images
    grid = (np.concatenate(list(images), axis=1).clip(0, 1) * 255).round().astype(np.uint8)
    path = Path(cfg.out) / result_format.PREVIEW
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path
