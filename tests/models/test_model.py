"""The multi-view UNet (paper §3.1): 3D self-attention against a hand computation, camera zero-init, 2D path,
loading, gradient checkpointing, the tokenizer's padding."""

from __future__ import annotations

import copy
import inspect
import json
import math
import shutil

import open_clip
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor

from mvforge.errors import UserError
from mvforge.models.convert import clip_tokenizer
from mvforge.models.model import (
    CrossAttnProcessor,
    MultiViewAttnProcessor,
    MultiViewUNet,
    tokenize,
)
from mvforge.models.pipeline import MultiViewDiffusion


def load_unet(sd) -> MultiViewUNet:
    """SD's UNet made multi-view as `mvtrain fit` starts (through the one loader), trainable again."""
    return MultiViewDiffusion.from_pretrained(sd, stable_diffusion=True).unet.train().requires_grad_(True)


def _reference_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Plain softmax(q k^T / sqrt(d)) v over (batch, tokens, dim), written out by hand."""
    b, n, _ = x.shape
    h = attn.heads
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    d = q.shape[-1] // h
    q, k, v = (t.view(b, n, h, d).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    out = (w @ v).transpose(1, 2).reshape(b, n, h * d)
    return attn.to_out[0](out)


def test_multiview_processor_equals_attention_over_all_views():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    b, v, n = 2, 4, 5
    x = torch.randn(b * v, n, 16)
    with torch.no_grad():
        got = MultiViewAttnProcessor()(attn, x, num_views=v)
        # Reference: every object's V*n tokens in one attention, then split back per view.
        ref = _reference_attention(attn, x.reshape(b, v * n, 16)).reshape(b * v, n, 16)
        per_view = _reference_attention(attn, x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert (got - per_view).abs().max() > 1e-3  # it really mixes views


def test_multiview_processor_with_one_view_is_the_plain_processor():
    torch.manual_seed(1)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        got = MultiViewAttnProcessor()(attn, x)
        torch.testing.assert_close(got, AttnProcessor()(attn, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got, _reference_attention(attn, x), rtol=1e-5, atol=1e-5)


def test_processors_attn1_multiview_attn2_plain_all_take_num_views(tiny_sd):
    unet = load_unet(tiny_sd)
    procs = unet.attn_processors
    assert procs and all(
        type(p) is (MultiViewAttnProcessor if k.endswith("attn1.processor") else CrossAttnProcessor)
        for k, p in procs.items()
    )
    assert any(k.endswith("attn2.processor") for k in procs)
    # diffusers drops (and warns about) a cross_attention_kwargs key missing from a processor's signature.
    assert all("num_views" in inspect.signature(p.__call__).parameters for p in procs.values())


def test_cross_attention_processor_equals_the_plain_one():
    torch.manual_seed(2)
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8).eval()
    x, text = torch.randn(4, 7, 16), torch.randn(4, 5, 8)
    with torch.no_grad():
        got = CrossAttnProcessor()(attn, x, text, num_views=4)
        torch.testing.assert_close(got, AttnProcessor()(attn, x, text), rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_sd):
    """num_views travels with the call, so the recomputation in backward sees 4 views.
    (With num_views as processor state reset after forward, torch raised CheckpointError here.)"""
    plain = load_unet(tiny_sd).train()
    with torch.no_grad():  # a trained camera MLP, so the camera path is in the gradients too
        plain.class_embedding.linear_2.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    ckpt = copy.deepcopy(plain)
    ckpt.enable_gradient_checkpointing()
    x, t, text, cams = _inputs(v=4, b=2)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    losses, grads = [], []
    for unet in (plain, ckpt):
        loss = (unet(x, t, text, cameras=cams, num_views=4) - target).pow(2).mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append({k: p.grad for k, p in unet.named_parameters()})
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    assert grads[0].keys() == grads[1].keys()
    for k, g in grads[0].items():
        torch.testing.assert_close(grads[1][k], g, rtol=1e-5, atol=1e-7, msg=k)
    attn1 = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert grads[0][attn1].abs().max() > 0


def _inputs(v: int = 4, b: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b * v, 4, 8, 8, generator=g)
    t = torch.full((b * v,), 500)
    text = torch.randn(b * v, 77, 32, generator=g)
    cams = torch.randn(b * v, 16, generator=g)
    return x, t, text, cams


def test_2d_path_with_one_view_equals_the_plain_sd_unet(tiny_sd):
    """No camera + num_views=1 is exactly SD's UNet: the camera MLP is skipped, not fed a fake camera."""
    plain = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet").eval()
    mv = load_unet(tiny_sd).eval()
    x, t, text, _ = _inputs(v=3)
    with torch.no_grad():
        torch.testing.assert_close(mv(x, t, text), plain(x, t, text).sample, rtol=1e-5, atol=1e-5)
        assert (mv(x, t, text, num_views=3) - plain(x, t, text).sample).abs().max() > 1e-4


def test_camera_is_zero_at_init_and_learns_after_one_step(tiny_sd):
    unet = load_unet(tiny_sd)
    assert torch.count_nonzero(unet.class_embedding.linear_2.weight) == 0
    assert torch.count_nonzero(unet.class_embedding.linear_1.weight) > 0  # only the last layer is zero
    x, t, text, cams = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, text, cameras=cams, num_views=4), unet(x, t, text, num_views=4))
    opt = torch.optim.SGD(unet.parameters(), lr=0.1)
    loss = (unet(x, t, text, cameras=cams, num_views=4) - torch.randn_like(x)).pow(2).mean()
    loss.backward()
    opt.step()
    with torch.no_grad():
        diff = unet(x, t, text, cameras=cams, num_views=4) - unet(x, t, text, num_views=4)
    assert diff.abs().max() > 1e-6


def test_saved_multiview_unet_loads_back(tiny_sd, tmp_path):
    unet = load_unet(tiny_sd)
    with torch.no_grad():
        unet.class_embedding.linear_2.weight.fill_(0.01)
    unet.save_pretrained(tmp_path / "unet")
    (tmp_path / "config.toml").write_text("")
    # A fit resume: the checkpoint's UNet loads as is (no new camera MLP).
    again = MultiViewDiffusion.from_pretrained(tiny_sd, stable_diffusion=True, unet_from=tmp_path).unet
    assert isinstance(again, MultiViewUNet)
    for (k, a), (_, b) in zip(unet.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_load_unet_bad_input(tiny_sd, tmp_path):
    with pytest.raises(UserError, match="holds no diffusers UNet"):
        MultiViewDiffusion.from_pretrained(tiny_sd, stable_diffusion=True, unet_from=tmp_path)
    (tmp_path / "unet").mkdir()
    config = json.loads((tiny_sd / "unet" / "config.json").read_text())
    config["class_embed_type"] = "timestep"
    (tmp_path / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="holds config.json but no weights file"):
        MultiViewDiffusion.from_pretrained(tiny_sd, stable_diffusion=True, unet_from=tmp_path)
    for weights in (tiny_sd / "unet").glob("*.safetensors"):
        shutil.copy(weights, tmp_path / "unet")
    with pytest.raises(UserError, match="class_embed_type"):
        MultiViewDiffusion.from_pretrained(tiny_sd, stable_diffusion=True, unet_from=tmp_path)


def test_tokenizer_matches_open_clip_padding_included(tiny_mv):
    """All 77 ids equal open_clip's ``tokenize`` (pad id 0, as SD 2.x), also for the
    tokenizer saved in a pipeline directory and for a prompt longer than 77 tokens (truncated alike)."""
    from transformers import CLIPTokenizer

    saved = CLIPTokenizer.from_pretrained(tiny_mv, subfolder="tokenizer")
    texts = ["a red chair, 3d asset", "Hello World!! 123", "", " ".join(["word"] * 100)]
    want = open_clip.tokenize(texts).tolist()
    for tok in (clip_tokenizer(), saved):
        assert tokenize(tok, texts).tolist() == want
        assert tok.pad_token_id == 0 and tok.model_max_length == 77
    assert want[0][-1] == 0  # the padding really is compared


def test_unet_attends_across_views_of_one_object_only(tiny_sd):
    """Order check of ``(b v) l c -> b (v l) c``: with 2 objects x 4 views flattened as the loop does, changing
    object 1's last view changes object 1's other views but none of object 0's."""
    unet = load_unet(tiny_sd).eval()
    x, t, text, cams = _inputs(v=4, b=2)
    x2 = x.clone()
    x2[7] += 1.0  # object 1, view 3
    with torch.no_grad():
        a = unet(x, t, text, cameras=cams, num_views=4)
        b = unet(x2, t, text, cameras=cams, num_views=4)
        single = unet(x, t, text, cameras=cams, num_views=1) - unet(x2, t, text, cameras=cams, num_views=1)
    torch.testing.assert_close(a[:4], b[:4], rtol=0, atol=0)
    assert (a[4:7] - b[4:7]).abs().amax(dim=(1, 2, 3)).min() > 1e-5
    assert single[:7].abs().max() == 0  # sanity: without multi-view attention views are independent
