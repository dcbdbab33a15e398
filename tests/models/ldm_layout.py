"""A tiny MVDream checkpoint in the official LDM layout, for the converter's tests (issue 10).

The independent reference of tests/models/test_convert.py: tiny diffusers/transformers/open_clip models are
written out under the key names of the official modules by a mapping written here from the LDM module layout
(bytedance/MVDream ``openaimodel.py`` ``MultiViewUNetModel.__init__``'s block numbering, ``model.py``
``Encoder``/``Decoder``, ``interface.py`` ``register_schedule``), not from diffusers' conversion tables. The
text towers are the real libraries' modules (open_clip ``TextTransformer``, transformers ``CLIPTextModel``),
whose own state-dict names the official checkpoint holds.
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


def openclip_penultimate(tower, ids: torch.Tensor) -> torch.Tensor:
    """The official ``FrozenOpenCLIPEmbedder`` (layer "penultimate") on an open_clip text tower: token +
    positional embedding, every residual block but the last with the causal mask, then ``ln_final``."""
    x = tower.token_embedding(ids) + tower.positional_embedding
    batch_first = getattr(tower.transformer, "batch_first", False)
    if not batch_first:
        x = x.permute(1, 0, 2)
    for block in tower.transformer.resblocks[:-1]:
        x = block(x, attn_mask=tower.attn_mask)
    if not batch_first:
        x = x.permute(1, 0, 2)
    return tower.ln_final(x)


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Add seeded noise to every parameter: no zero-initialised or identity weight hides a mapping error."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
