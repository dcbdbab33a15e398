"""The paper's §5.1 ablations as UNet config: per-image attention keeps the views of an object independent, no
camera embedding ignores the cameras, and both survive save/load through diffusers' own config."""

from __future__ import annotations

import json

import pytest
import torch

from mvforge.models.model import MultiViewUNet


def _unet(tiny_mv) -> MultiViewUNet:
    return MultiViewUNet.from_pretrained(tiny_mv, subfolder="unet").eval()


def _inputs(v: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(v, 4, 8, 8, generator=g)
    text = torch.randn(v, 77, 32, generator=g)
    return x, torch.full((v,), 500), text, torch.randn(v, 16, generator=g)


def test_per_image_attention_makes_views_independent(tiny_mv):
    unet = _unet(tiny_mv)
    x, t, text, cams = _inputs()
    with torch.no_grad():
        joint = unet(x, t, text, cameras=cams, num_views=4)
        unet.set_ablation(multiview_attention=False)
        ablated = unet(x, t, text, cameras=cams, num_views=4)
        alone = torch.cat(
            [unet(x[i : i + 1], t[:1], text[i : i + 1], cameras=cams[i : i + 1]) for i in range(4)]
        )
    torch.testing.assert_close(ablated, alone, rtol=1e-5, atol=1e-5)
    assert (joint - ablated).abs().max() > 1e-4  # the full model really joins views


def test_no_camera_embedding_ignores_the_cameras(tiny_mv):
    unet = _unet(tiny_mv)  # the tiny pipeline's camera MLP is random: cameras change the output
    x, t, text, cams = _inputs()
    with torch.no_grad():
        assert (
            unet(x, t, text, cameras=cams, num_views=4) - unet(x, t, text, num_views=4)
        ).abs().max() > 1e-4
        unet.set_ablation(camera_embedding=False)
        torch.testing.assert_close(unet(x, t, text, cameras=cams, num_views=4), unet(x, t, text, num_views=4))


def test_ablation_is_saved_and_loaded_with_the_weights(tiny_mv, tmp_path, caplog):
    unet = _unet(tiny_mv)
    unet.set_ablation(multiview_attention=False, camera_embedding=False)
    unet.save_pretrained(tmp_path / "unet")
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert config["multiview_attention"] is False and config["camera_embedding"] is False
    with caplog.at_level("WARNING"):
        again = MultiViewUNet.from_pretrained(tmp_path, subfolder="unet")
    assert not again.multiview_attention and not again.camera_embedding
    assert "not expected" not in caplog.text  # diffusers does not warn about the keys
    # A full model's config stays diffusers' own: no ablation keys written.
    _unet(tiny_mv).save_pretrained(tmp_path / "full")
    assert not {"multiview_attention", "camera_embedding"} & set(
        json.loads((tmp_path / "full/config.json").read_text())
    )
    with pytest.raises(ValueError, match="trained with multiview_attention = false"):
        again.set_ablation(multiview_attention=True, camera_embedding=False)
