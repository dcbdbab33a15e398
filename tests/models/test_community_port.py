"""The community diffusers port of the released weights (ashawkey/mvdream_diffusers layout, as on the Hub's
ashawkey/mvdream-sd2.1-diffusers): a tiny directory in that layout, written from the tiny multi-view model with
the official LDM key names (``ldm_layout``, independent of the converter), converts to the same model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from mvforge.cli.mvtrain import app
from mvforge.errors import UserError
from mvforge.models import MultiViewDiffusion
from tests.fixtures.ldm_layout import unet_to_ldm

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def _community_dir(tiny_mv, root):
    """``tiny_mv`` as the community port stores it: unet/ = the LDM UNet's parameters + its state dict without
    the ``model.diffusion_model.`` prefix (class MultiViewUNetModel); the other folders standard diffusers."""
    root.mkdir()
    for sub in ("vae", "text_encoder", "tokenizer", "scheduler"):
        shutil.copytree(tiny_mv / sub, root / sub)
    (root / "unet").mkdir()
    unet = MultiViewDiffusion.from_pretrained(tiny_mv).unet
    save_file(
        {k: v.contiguous() for k, v in unet_to_ldm(unet).items()},
        root / "unet" / "diffusion_pytorch_model.safetensors",
    )
    config = {
        "_class_name": "MultiViewUNetModel", "_diffusers_version": "0.25.0", "image_size": 16,
        "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": 1,
        "attention_resolutions": [1], "channel_mult": [1, 2], "num_heads": 8, "context_dim": 32,
        "transformer_depth": 1, "use_checkpoint": False, "camera_dim": 16,
    }  # fmt: skip
    (root / "unet" / "config.json").write_text(json.dumps(config))
    index = {
        "_class_name": ["pipeline_mvdream", "MVDreamPipeline"], "_diffusers_version": "0.25.0",
        "unet": ["mv_unet", "MultiViewUNetModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"], "feature_extractor": [None, None], "image_encoder": [None, None],
    }  # fmt: skip
    (root / "model_index.json").write_text(json.dumps(index))
    return unet.eval()


def test_the_community_port_converts_to_the_same_model(tiny_mv, tmp_path, monkeypatch):
    """Fails before: mvforge could not read the layout (convert took files only; loading said "no camera
    embedding")."""
    from huggingface_hub import constants

    port = tmp_path / "port"
    reference = _community_dir(tiny_mv, port)
    with pytest.raises(UserError, match="convert it once"):
        MultiViewDiffusion.from_pretrained(port)
    # By Hub id, through a cache the test fills in huggingface_hub's layout (no network).
    repo = tmp_path / "hub" / "models--ashawkey--mvdream-sd2.1-diffusers"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(port, repo / "snapshots" / COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    result = CliRunner().invoke(
        app, ["convert", "ashawkey/mvdream-sd2.1-diffusers", "--out", str(tmp_path / "mv")]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    model = MultiViewDiffusion.from_pretrained(tmp_path / "mv")
    g = torch.Generator().manual_seed(5)
    x, text = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 77, 32, generator=g)
    cams, t = torch.randn(4, 16, generator=g), torch.tensor([999, 600, 200, 1])
    with torch.no_grad():
        got = model.unet(x, t, text, cameras=cams, num_views=4)
        want = reference(x, t, text, cameras=cams, num_views=4)
    assert float((got - want).abs().max()) < 1e-5
    assert type(model.unet).__name__ == "MultiViewUNet" and model.unet.config.sample_size == 16
    # The copied parts are the port's own bytes.
    for sub in ("vae", "text_encoder"):
        for f in (port / sub).iterdir():
            assert (tmp_path / "mv" / sub / f.name).read_bytes() == f.read_bytes()
