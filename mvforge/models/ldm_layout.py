"""Checkpoints in the official MVDream (LDM) layout from diffusers models, for tests and benchmarks
(the converter's independent check).

The inverse of what ``mvtrain convert`` does, written independently of it and of diffusers' conversion tables:
from the LDM module layout of bytedance/MVDream (``openaimodel.py`` ``MultiViewUNetModel.__init__``'s block
numbering, ``model.py`` ``Encoder``/``Decoder``, ``interface.py`` ``register_schedule``). The converter's tests
use it as their independent reference (a tiny model written here and converted back must give the same
outputs); ``bench/bench_convert.py`` uses it to write a full-size random checkpoint. The converter itself never
imports this module.
"""

from __future__ import annotations

import numpy as np
import torch

# openaimodel.ResBlock: in_layers = [GroupNorm, SiLU, conv], emb_layers = [SiLU, Linear],
# out_layers = [GroupNorm, SiLU, Dropout, conv], skip_connection (1x1 conv when the width changes).
UNET_RES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# model.py ResnetBlock (norm1, conv1, norm2, conv2, nin_shortcut) and AttnBlock (norm, q, k, v, proj_out: 1x1 convs).
VAE_RES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


class _Writer:
    """Moves keys from a source state dict to LDM names; ``left`` must end empty (every weight placed once)."""

    def __init__(self, sd: dict) -> None:
        self.left = dict(sd)
        self.out: dict[str, torch.Tensor] = {}

    def same(self, src: str, dst: str) -> None:
        """Every key under ``src.`` moves to ``dst.`` with the same sub-path."""
        for k in [k for k in self.left if k.startswith(src + ".")]:
            self.out[dst + k[len(src) :]] = self.left.pop(k)

    def renamed(self, src: str, dst: str, table: dict[str, str], conv1x1: bool = False) -> None:
        """Keys ``src.<module>.<leaf>`` -> ``dst.<table[module]>.<leaf>``; Linear -> 1x1 conv when asked."""
        for k in [k for k in self.left if k.startswith(src + ".")]:
            module, leaf = k[len(src) + 1 :].rsplit(".", 1)
            v = self.left.pop(k)
            if conv1x1 and module != "group_norm" and leaf == "weight":
                v = v[:, :, None, None]
            self.out[f"{dst}.{table[module]}.{leaf}"] = v


def unet_to_ldm(unet) -> dict:
    """``MultiViewUNetModel`` names of a diffusers multi-view UNet's weights (prefix not included)."""
    cfg = unet.config
    levels, n = len(cfg.block_out_channels), cfg.layers_per_block
    attn = ["CrossAttn" in t for t in cfg.down_block_types]
    w = _Writer({k: v.detach().clone() for k, v in unet.state_dict().items()})
    w.same("time_embedding.linear_1", "time_embed.0")
    w.same("time_embedding.linear_2", "time_embed.2")
    w.same("class_embedding.linear_1", "camera_embed.0")
    w.same("class_embedding.linear_2", "camera_embed.2")
    w.same("conv_in", "input_blocks.0.0")
    i = 1  # input_blocks: [conv_in], then per level n x [ResBlock, (SpatialTransformer3D)], then [Downsample]
    for b in range(levels):
        for j in range(n):
            w.renamed(f"down_blocks.{b}.resnets.{j}", f"input_blocks.{i}.0", UNET_RES)
            if attn[b]:
                w.same(f"down_blocks.{b}.attentions.{j}", f"input_blocks.{i}.1")
            i += 1
        if b != levels - 1:
            w.same(f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{i}.0.op")
            i += 1
    w.renamed("mid_block.resnets.0", "middle_block.0", UNET_RES)
    w.same("mid_block.attentions.0", "middle_block.1")
    w.renamed("mid_block.resnets.1", "middle_block.2", UNET_RES)
    o = 0  # output_blocks: deepest level first, n + 1 x [ResBlock, (ST), (Upsample on the level's last)]
    for b in range(levels):
        level_attn = attn[levels - 1 - b]
        for j in range(n + 1):
            w.renamed(f"up_blocks.{b}.resnets.{j}", f"output_blocks.{o}.0", UNET_RES)
            if level_attn:
                w.same(f"up_blocks.{b}.attentions.{j}", f"output_blocks.{o}.1")
            if j == n and b != levels - 1:
                w.same(f"up_blocks.{b}.upsamplers.0.conv", f"output_blocks.{o}.{2 if level_attn else 1}.conv")
            o += 1
    w.same("conv_norm_out", "out.0")
    w.same("conv_out", "out.2")
    assert not w.left, sorted(w.left)
    return w.out


def vae_to_ldm(vae) -> dict:
    """``AutoencoderKL`` (LDM ``Encoder``/``Decoder``) names of a diffusers VAE's weights."""
    cfg = vae.config
    levels, n = len(cfg.block_out_channels), cfg.layers_per_block
    w = _Writer({k: v.detach().clone() for k, v in vae.state_dict().items()})
    for part in ("encoder", "decoder"):
        w.same(f"{part}.conv_in", f"{part}.conv_in")
        w.renamed(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", VAE_RES)
        w.renamed(f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", VAE_ATTN, conv1x1=True)
        w.renamed(f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", VAE_RES)
        w.same(f"{part}.conv_norm_out", f"{part}.norm_out")
        w.same(f"{part}.conv_out", f"{part}.conv_out")
    for i in range(levels):  # Encoder.down[i]: n blocks, then a downsample except on the last level
        for j in range(n):
            w.renamed(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", VAE_RES)
        if i != levels - 1:
            w.same(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
    for i in range(
        levels
    ):  # Decoder.up is indexed by level (up[0] is the full-resolution one), built reversed
        lvl = levels - 1 - i
        for j in range(n + 1):
            w.renamed(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{lvl}.block.{j}", VAE_RES)
        if lvl != 0:
            w.same(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{lvl}.upsample.conv")
    w.same("quant_conv", "quant_conv")
    w.same("post_quant_conv", "post_quant_conv")
    assert not w.left, sorted(w.left)
    return w.out


def schedule_buffers(start: float = 0.00085, end: float = 0.012, steps: int = 1000) -> dict:
    """The 12 buffers of ``LatentDiffusionInterface.register_schedule`` for the "linear" schedule (float64
    numpy, stored float32)."""
    betas = np.linspace(start**0.5, end**0.5, steps, dtype=np.float64) ** 2
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - prev) / (1.0 - ac)
    bufs = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - prev) * np.sqrt(alphas) / (1.0 - ac),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in bufs.items()}


def _fill_random(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Materialise a meta-device module on the CPU with seeded N(0, 0.02) weights (fast; values irrelevant)."""
    module = module.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.normal_(0.0, 0.02, generator=g)
    return module


def random_sd21_checkpoint(
    model_channels: int = 320, text_width: int = 1024, text_layers: int = 24, vae_ch: int = 128
) -> dict:
    """A random checkpoint in the layout of ``sd-v2.1-base-4view.pt`` (defaults: the official sizes, about
    1.3 G parameters, ~5 GB fp32): MultiViewUNetModel (channel_mult 1,2,4,4, 2 res blocks, attention at the
    three upper levels, 64-channel heads, linear projections, context ``text_width``, camera MLP), the SD VAE
    at width ``vae_ch``, an OpenCLIP text tower (ViT-H-14's 16 heads) and the 12 schedule buffers. Built one
    component at a time on the meta device, then filled."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from open_clip.transformer import TextTransformer

    chans = tuple(model_channels * m for m in (1, 2, 4, 4))
    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=32,
            block_out_channels=chans,
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=text_width,
            attention_head_dim=tuple(c // 64 for c in chans),  # diffusers' legacy name: the number of heads
            use_linear_projection=True,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=16,
        )
    sd = {"model.diffusion_model." + k: v for k, v in unet_to_ldm(_fill_random(unet, 0)).items()}
    del unet
    with torch.device("meta"):
        vae = AutoencoderKL(
            block_out_channels=tuple(vae_ch * m for m in (1, 2, 4, 4)),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=256,
        )
    sd |= {"first_stage_model." + k: v for k, v in vae_to_ldm(_fill_random(vae, 1)).items()}
    del vae
    with torch.device("meta"):
        text = TextTransformer(width=text_width, heads=16, layers=text_layers, output_dim=text_width)
    text = _fill_random(text, 2)
    sd |= {"cond_stage_model.model." + k: v for k, v in text.state_dict().items() if k != "attn_mask"}
    sd["cond_stage_model.model.logit_scale"] = torch.tensor(4.6052)
    return sd | schedule_buffers()
