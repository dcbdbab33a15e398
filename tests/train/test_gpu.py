"""Mixed precision on a CUDA GPU (docs/train.md, `mixed_precision`): bf16 autocast and fp16 with the gradient
scaler train with fp32 master weights of the UNet and the frozen VAE and text encoder in the compute dtype.
Skipped without a GPU."""

from __future__ import annotations

import math

import pytest
import torch

from mvforge.models.model import MultiViewUNet
from mvforge.train.loop import Runtime, fit, latest_checkpoint, load_models


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_fit_on_cuda(make_fit_config, tiny_sd, shards_3d, tmp_path, precision):
    cfg = make_fit_config(
        tiny_sd,
        shards_3d,
        tmp_path / "run",
        device="cuda",
        mixed_precision=precision,
        max_steps=2,
        gradient_checkpointing=True,
    )
    m = load_models(cfg, Runtime(device=torch.device("cuda")), None)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert m.vae.dtype == dtype and m.text_encoder.dtype == dtype and m.unet.dtype == torch.float32
    records = fit(cfg)
    assert [r["step"] for r in records] == [1, 2] and all(math.isfinite(r["loss"]) for r in records)
    assert all("gpu_mem_gb" in r for r in records)
    unet = MultiViewUNet.from_pretrained(latest_checkpoint(tmp_path / "run"), subfolder="unet")
    assert unet.dtype == torch.float32
