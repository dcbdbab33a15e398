"""A pipeline directory is a diffusers pipeline (docs/ecosystem.md): diffusers' own entry points load it in a
fresh interpreter, the EMA state stays out of the UNet config, and mvforge's loaders run no code of a model
directory. Tiny random model on CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mvforge.models import MultiViewDiffusion
from mvforge.models.model import MultiViewUNet
from mvforge.models.pipeline import PIPELINE_MODULE, MVDreamPipeline

REPO = Path(__file__).resolve().parents[2]


def _fresh_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``code`` in a new interpreter that imports nothing of mvforge itself (diffusers must find it), with
    diffusers' module cache in ``tmp_path`` and no network."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(REPO))
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf" / "modules")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, cwd=tmp_path
    )


def test_diffusion_pipeline_from_pretrained_loads_runs_saves_and_offloads(tiny_mv, tmp_path):
    """Fails before: diffusers raised "module diffusers has no attribute MVDreamPipeline"."""
    code = f"""
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        half = DiffusionPipeline.from_pretrained({str(tiny_mv)!r}, trust_remote_code=True, dtype=torch.float16)
        assert type(half).__name__ == "MVDreamPipeline" and half.unet.dtype == torch.float16, type(half)
        pipe = DiffusionPipeline.from_pretrained({str(tiny_mv)!r}, trust_remote_code=True).to("cpu")
        g = torch.Generator().manual_seed(3)
        images = pipe("a chair", num_inference_steps=2, height=16, width=16, generator=g, output_type="np").images
        np.save("direct.npy", images)
        pipe.save_pretrained("again")
        again = DiffusionPipeline.from_pretrained("again", trust_remote_code=True)
        again.enable_model_cpu_offload(device="cpu")  # accelerate's hooks (no accelerator on this machine)
        g = torch.Generator().manual_seed(3)
        images = again("a chair", num_inference_steps=2, height=16, width=16, generator=g, output_type="np")
        np.save("offloaded.npy", images.images)
        """
    proc = _fresh_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not expected and will be ignored" not in proc.stderr
    index = json.loads((tmp_path / "again" / "model_index.json").read_text())
    assert index["_class_name"] == [PIPELINE_MODULE, "MVDreamPipeline"]  # save_pretrained kept the entry
    assert (tmp_path / "again" / f"{PIPELINE_MODULE}.py").is_file()
    # The same images as mvforge's own loader and call, and offloading changes nothing.
    pipe = MVDreamPipeline.from_pretrained(tiny_mv)
    g = torch.Generator().manual_seed(3)
    ours = pipe("a chair", num_inference_steps=2, height=16, width=16, generator=g, output_type="np").images
    np.testing.assert_allclose(np.load(tmp_path / "direct.npy"), ours, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "offloaded.npy"), ours, atol=1e-5)


def test_ema_state_neither_warns_nor_leaks_into_saved_pipelines(tiny_mv, tmp_path, capfd):
    """Fails before: loading unet_ema/ warned that decay, optimization_step, ... are ignored, and a pipeline
    saved from it carried them in unet/config.json (so every later load warned too)."""
    from diffusers.training_utils import EMAModel

    unet = MultiViewDiffusion.from_pretrained(tiny_mv).unet
    ema = EMAModel(unet.parameters(), decay=0.99, model_cls=MultiViewUNet, model_config=unet.config)
    ckpt = tmp_path / "checkpoints" / "step-000001"
    ema.save_pretrained(ckpt / "unet_ema")
    shutil.copytree(tiny_mv / "unet", ckpt / "unet")
    (ckpt / "config.toml").write_text(f'pretrained = "{tiny_mv}"\n')
    capfd.readouterr()
    model = MultiViewDiffusion.from_pretrained(ckpt)
    out = model.save_pretrained(tmp_path / "pipe")
    assert "not expected" not in capfd.readouterr().err
    saved = json.loads((out / "unet" / "config.json").read_text())
    assert not {"decay", "optimization_step"} & set(saved)
    # Training still resumes the average from the same file (EMAModel reads its state as unused keys).
    with warnings.catch_warnings():  # diffusers' own from_config(path) inside EMAModel.from_pretrained warns
        warnings.simplefilter("ignore", FutureWarning)
        assert EMAModel.from_pretrained(ckpt / "unet_ema", MultiViewUNet).decay == 0.99


def test_mvforge_loaders_never_run_code_found_in_a_model_directory(tiny_mv, tmp_path):
    """A pipeline directory whose module writes a marker: sample / sds / eval / dreambooth
    (``MultiViewDiffusion.from_pretrained``), ``MVDreamPipeline.from_pretrained`` and fit's start (the first
    with ``stable_diffusion=True``) leave no marker (every command loads through one of these), while diffusers with trust_remote_code=True does run it (the control: the marker works)."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_mv, model_dir)
    marker = tmp_path / "ran.txt"
    module = model_dir / f"{PIPELINE_MODULE}.py"
    module.write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n" + module.read_text()
    )
    MultiViewDiffusion.from_pretrained(model_dir)
    MVDreamPipeline.from_pretrained(model_dir)
    MultiViewDiffusion.from_pretrained(model_dir, stable_diffusion=True)
    assert not marker.exists()
    code = f"from diffusers import DiffusionPipeline\nDiffusionPipeline.from_pretrained({str(model_dir)!r}, trust_remote_code=True)"
    proc = _fresh_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert marker.read_text() == "ran"


@pytest.fixture(scope="module")
def pipe(tiny_mv) -> MVDreamPipeline:
    pipe = MVDreamPipeline.from_pretrained(tiny_mv)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, 4, 8, 8), generator=torch.Generator().manual_seed(seed))


def test_diffusers_call_keywords(pipe):
    """Fails before: height/width, num_images_per_prompt, prompt_embeds, return_dict and callback_on_step_end
    raised TypeError."""
    kw = dict(num_inference_steps=2, height=16, width=16, output_type="pt")
    x = _noise(8)
    two = pipe("a chair", num_images_per_prompt=2, latents=x, **kw).images
    assert two.shape == (8, 3, 16, 16)
    # Objects are independent and object-major: the second object equals a call with its own noise.
    second = pipe("a chair", latents=x[4:], **kw).images
    torch.testing.assert_close(two[4:], second, atol=1e-5, rtol=0)
    # Embeddings in place of text give the same images; return_dict=False gives a tuple.
    from mvforge.models.model import encode_text

    emb = encode_text(pipe.tokenizer, pipe.text_encoder, ["a chair"], "cpu")
    neg = encode_text(pipe.tokenizer, pipe.text_encoder, [""], "cpu")
    (same,) = pipe(prompt_embeds=emb, negative_prompt_embeds=neg, latents=x[4:], return_dict=False, **kw)
    torch.testing.assert_close(same, second, atol=1e-6, rtol=0)
    # The callback sees every step's latents, and the latents it returns are the ones carried on.
    seen = []

    def zero_at_last(p, i, t, tensors):
        seen.append((i, int(t), tuple(tensors["latents"].shape)))
        return {"latents": torch.zeros_like(tensors["latents"])} if i == 1 else tensors

    lat = pipe("a chair", latents=x[4:], callback_on_step_end=zero_at_last, **{**kw, "output_type": "latent"})
    assert [s[0] for s in seen] == [0, 1] and seen[0][2] == (4, 4, 8, 8)
    assert torch.count_nonzero(lat.images) == 0
    np_out = pipe("a chair", latents=x[4:], **{**kw, "output_type": "numpy"}).images
    assert np_out.shape == (4, 16, 16, 3)
    np.testing.assert_allclose(np_out, second.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_community_port_camera_aliases_and_explicit_c2ws(pipe):
    """Fails before: elevation=, num_frames= and c2ws= raised TypeError."""
    from mvforge.models.camera_batch import orbit_c2w_batch, orthogonal_views

    kw = dict(num_inference_steps=1, height=16, width=16, output_type="pt")
    x = _noise(2, seed=1)
    ours = pipe("a cup", elevation_deg=0.0, num_views=2, latents=x, **kw).images
    port = pipe("a cup", elevation=0.0, num_frames=2, latents=x, **kw).images
    torch.testing.assert_close(port, ours, atol=0, rtol=0)
    c2ws = orbit_c2w_batch(0.0, orthogonal_views(90.0, 2))  # (2, 4, 4), the default start azimuth
    explicit = pipe("a cup", c2ws=c2ws, latents=x, **kw).images
    torch.testing.assert_close(explicit, ours, atol=1e-6, rtol=0)
    other = pipe("a cup", c2ws=orbit_c2w_batch(30.0, orthogonal_views(0.0, 2)), latents=x, **kw).images
    assert not torch.allclose(other, ours, atol=1e-4)  # the matrices are used, not the default orbit
    with pytest.raises(ValueError, match="disagree"):
        pipe("a cup", num_views=4, num_frames=2, **kw)
    with pytest.raises(ValueError, match="c2ws"):
        pipe("a cup", num_views=4, c2ws=c2ws, **kw)
    with pytest.raises(ValueError, match="exactly one"):
        pipe(**kw)
