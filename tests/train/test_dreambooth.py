"""MVDreamBooth (paper §3.3, docs/dreambooth.md) on the tiny multi-view model, CPU: the preservation term's
gradient, its effect on the drift from θ0, the loss on fixed (t, noise) pairs, exact resume, photo loading, and
the output loading through `mvtrain sample` and ``MultiViewDiffusion.from_pretrained`` (the loading path of
`mvtrain sds`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from mvforge.errors import UserError
from mvforge.models import MultiViewDiffusion
from mvforge.models.resolve import latest_checkpoint
from mvforge.train.config import OptimConfig
from mvforge.train.dreambooth import (
    add_preservation_grad,
    class_captions,
    dreambooth,
    load_dreambooth_models,
    load_photos,
    photo_batch,
)
from mvforge.train.dreambooth_config import DreamBoothConfig
from mvforge.train.loop import FAULT_ENV, Runtime, micro_batch_inputs, micro_batch_loss

LR = 1e-3
PROMPT = "a photo of xjq toy"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two subject photos of different sizes: an RGBA PNG (alpha -> grey background) and an RGB JPEG."""
    d = tmp_path_factory.mktemp("subject")
    a = Image.new("RGBA", (48, 40), (0, 0, 0, 0))
    ImageDraw.Draw(a).ellipse([8, 6, 36, 34], fill=(200, 40, 30, 255))
    a.save(d / "a.png")
    b = Image.new("RGB", (40, 64), (128, 128, 128))
    ImageDraw.Draw(b).rectangle([8, 16, 30, 48], fill=(30, 60, 220))
    b.save(d / "b.jpg", quality=95)
    return d


def db_config(tiny_mv: Path, photos: Path, out: Path, **changes) -> DreamBoothConfig:
    """4 steps of batch 2 at 32 px; no gradient clipping, so Adam sees the preservation gradient as it is."""
    base = dict(
        pretrained=str(tiny_mv),
        images=str(photos),
        prompt=PROMPT,
        out=str(out),
        resolution=32,
        batch_size=2,
        max_steps=4,
        log_every=1,
        checkpoint_every=2,
        device="cpu",
        save_pipeline=False,
        optim=OptimConfig(lr=LR, lr_scheduler="constant", weight_decay=0.01, grad_clip_norm=0),
    )
    return DreamBoothConfig(**(base | changes))


def load_unet(path) -> torch.nn.Module:
    """The raw UNet (``unet/``, not the EMA) of a model or checkpoint through the one loader, trainable."""
    return MultiViewDiffusion.from_pretrained(path, use_ema=False).unet.requires_grad_(True)


def run(cfg: DreamBoothConfig) -> list[dict]:
    return dreambooth(cfg, Runtime(show_progress=False))


def test_preservation_gradient_is_lambda_sign_over_n(tiny_mv):
    """The analytic gradient equals autograd's of λ‖θ − θ0‖₁ / N_θ (added to an existing gradient)."""
    params = [p for n, p in load_unet(tiny_mv).named_parameters() if not n.startswith("class_embedding.")]
    theta0 = [p.detach().clone() for p in params]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params[::2]:  # half moved, half exactly at θ0 (sign 0 there)
            p.add_(1e-3 * torch.randn(p.shape, generator=g))
    n, lam = sum(p.numel() for p in params), 3.0
    existing = [torch.randn(p.shape, generator=g) for p in params]
    term = lam * sum((p - p0).abs().sum() for p, p0 in zip(params, theta0, strict=True)) / n
    auto = torch.autograd.grad(term, params)
    for p, e in zip(params, existing, strict=True):
        p.grad = e.clone()
    add_preservation_grad(params, theta0, lam / n)
    for p, e, a in zip(params, existing, auto, strict=True):
        torch.testing.assert_close(p.grad, e + a, rtol=1e-6, atol=0)
    assert any(torch.count_nonzero(a) for a in auto) and not torch.count_nonzero(auto[1])


def test_large_lambda_bounds_drift_zero_lambda_does_not(tiny_mv, photos, tmp_path):
    """After 4 Adam steps at lr 1e-3: λ = 1e8 (per-parameter gradient ~126, far above the loss's) keeps
    max|θ − θ0| under 2·lr (step 1 moves every parameter by ~lr: θ = θ0 there, sign 0; later steps pull it
    back); with λ = 0 parameters walk ~lr per step and exceed it."""
    bound = 2 * LR
    free = run(db_config(tiny_mv, photos, tmp_path / "free", preservation_lambda=0.0))
    held = run(db_config(tiny_mv, photos, tmp_path / "held", preservation_lambda=1e8))
    assert free[-1]["max_abs_dev"] > bound, free
    assert max(r["max_abs_dev"] for r in held) < bound, held
    assert held[-1]["preservation"] > 0 and free[-1]["preservation"] == 0


def test_resume_equals_uninterrupted_and_subject_loss_falls(tiny_mv, photos, tmp_path):
    """λ = 1 (the paper's). Stopped after step 2 (its checkpoint) and resumed to 4 = 4 steps in one go,
    bit for bit; the subject prompt's loss on fixed (t, noise) pairs is lower after than before."""
    full = run(db_config(tiny_mv, photos, tmp_path / "full"))
    part = run(db_config(tiny_mv, photos, tmp_path / "cut", max_steps=2))
    rest = run(db_config(tiny_mv, photos, tmp_path / "cut"))
    assert [r["step"] for r in rest] == [3, 4]
    assert [r["loss"] for r in part + rest] == [r["loss"] for r in full]
    a = load_unet(latest_checkpoint(tmp_path / "full")).state_dict()
    b = load_unet(latest_checkpoint(tmp_path / "cut")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The camera MLP is frozen: bit-identical to the base model's.
    base = load_unet(tiny_mv).state_dict()
    assert all(torch.equal(a[k], base[k]) for k in a if k.startswith("class_embedding."))

    # Fixed (t, noise) pairs: both photos at t = 100, 400, 700, 950, one noise draw, before and after.
    cfg = db_config(tiny_mv, photos, tmp_path / "full")
    images, _ = load_photos(photos, 32)
    before, _, _ = load_dreambooth_models(cfg, Runtime(), None)
    after, _, _ = load_dreambooth_models(cfg, Runtime(), latest_checkpoint(tmp_path / "full"))
    idx = torch.arange(2).repeat(4)
    inputs = micro_batch_inputs(
        before, photo_batch(images, PROMPT, idx), torch.Generator().manual_seed(5), cfg
    )
    inputs["t"] = torch.tensor([100, 400, 700, 950]).repeat_interleave(2)
    with torch.no_grad():
        loss0, loss1 = (micro_batch_loss(m, inputs, cfg).item() for m in (before, after))
    assert loss1 < loss0, (loss0, loss1)


def test_resume_refuses_other_photos_and_keeps_the_run(tiny_mv, photos, tmp_path):
    """A checkpoint records the photos it was tuned on: a resume with a photo added, or one edited in place,
    is a one-line error naming the fix, and the run's checkpoint is left as it was."""
    import shutil

    subject = tmp_path / "subject"
    shutil.copytree(photos, subject)
    run(db_config(tiny_mv, subject, tmp_path / "run", max_steps=2))
    ckpt = latest_checkpoint(tmp_path / "run")
    Image.new("RGB", (32, 32), (10, 200, 10)).save(subject / "c.png")
    with pytest.raises(
        UserError, match=r"other subject photos than --images holds now \(1 new \(first: c.png\)\)"
    ):
        run(db_config(tiny_mv, subject, tmp_path / "run"))
    (subject / "c.png").unlink()
    edited = Image.open(subject / "a.png")
    edited.putpixel((20, 20), (0, 255, 0, 255))
    edited.save(subject / "a.png")
    with pytest.raises(UserError, match="a file in --images was edited since its last checkpoint") as e:
        run(db_config(tiny_mv, subject, tmp_path / "run"))
    assert "\n" not in str(e.value)
    assert latest_checkpoint(tmp_path / "run") == ckpt
    shutil.copy(photos / "a.png", subject / "a.png")
    assert [r["step"] for r in run(db_config(tiny_mv, subject, tmp_path / "run"))] == [3, 4]

    # Class images trained with their caption files: an edited caption is another recipe too.
    rehearsal = tmp_path / "rehearsal"
    shutil.copytree(photos, rehearsal)
    (rehearsal / "a.txt").write_text("a red ball, 3d asset\n")
    with_class = dict(class_images=str(rehearsal), class_prompt="a photo of a toy")
    run(db_config(tiny_mv, subject, tmp_path / "prior", max_steps=2, **with_class))
    (rehearsal / "a.txt").write_text("a blue ball, 3d asset\n")
    with pytest.raises(UserError, match="tuned with other class captions"):
        run(db_config(tiny_mv, subject, tmp_path / "prior", **with_class))


def test_cross_attention_kv_moves_only_the_text_keys_and_values(tiny_mv, photos, tmp_path, capsys):
    """``trained = "cross_attention_kv"`` (Custom Diffusion): every other weight stays the base model's, bit for
    bit; the text cross-attention's key and value projections move. (At 16 px, not the model's 32: said.)"""
    run(db_config(tiny_mv, photos, tmp_path / "kv", max_steps=2, trained="cross_attention_kv", resolution=16))
    assert "warning: resolution 16 is not the model's native 32 px" in capsys.readouterr().err
    tuned = load_unet(latest_checkpoint(tmp_path / "kv")).state_dict()
    base = load_unet(tiny_mv).state_dict()
    kv = {k for k in base if ".attn2.to_k." in k or ".attn2.to_v." in k}
    assert kv and all(not torch.equal(tuned[k], base[k]) for k in kv)
    assert all(torch.equal(tuned[k], base[k]) for k in base if k not in kv)


def test_photos_exif_mask_and_bad_input(tmp_path, tiny_mv):
    """EXIF orientation is applied before the crop; a mask puts the background on grey; empty or unreadable
    photo directories are one-line UserErrors."""
    d = tmp_path / "p"
    d.mkdir()
    im = Image.new("RGB", (64, 32), (255, 0, 0))
    ImageDraw.Draw(im).rectangle([0, 0, 31, 31], fill=(0, 0, 255))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° CW to display": the left half ends up on top
    im.save(d / "x.jpg", exif=exif, quality=98)
    (tmp_path / "m").mkdir()
    mask = Image.new("L", (32, 64), 0)
    ImageDraw.Draw(mask).rectangle([0, 32, 31, 63], fill=255)  # subject = bottom half of the displayed image
    mask.save(tmp_path / "m" / "x.png")
    x, names = load_photos(d, 16)
    assert names == ["x.jpg"] and x.shape == (1, 3, 16, 16)
    assert x[0, 2, 2, 8] > 0.8 and x[0, 0, 2, 8] < -0.8  # top blue (displayed orientation)
    grey, _ = load_photos(d, 16, masks=tmp_path / "m")
    assert abs(grey[0, :, 2, 8]).max() < 0.05  # masked out -> grey 0.5 = 0 in [-1, 1]
    assert grey[0, 0, 13, 8] > 0.8  # the red subject kept

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no jpg/png/webp"):
        run(db_config(tiny_mv, empty, tmp_path / "o"))
    (empty / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png is not a readable image"):
        load_photos(empty, 16)
    with pytest.raises(UserError, match="class_prompt"):
        db_config(tiny_mv, d, tmp_path / "o", class_images=str(d))


def test_class_images_take_their_sidecar_captions(photos, tmp_path):
    """A class image with a <stem>.txt beside it trains with that caption (a rehearsal of a world's captions),
    the others with the class prompt; a batch gets each drawn image's own caption."""
    d = tmp_path / "class"
    d.mkdir()
    for f in photos.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    (d / "a.txt").write_text("a red ball, 3d asset\n")
    images, names = load_photos(d, 16, None, "keep", "class")  # the .txt is not an image
    assert names == ["a.png", "b.jpg"]
    captions = class_captions(d, names, "a photo of a toy")
    assert captions == ["a red ball, 3d asset", "a photo of a toy"]
    batch = photo_batch(images, captions, torch.tensor([1, 0, 0]))
    assert batch["captions"] == ["a photo of a toy", "a red ball, 3d asset", "a red ball, 3d asset"]
    assert photo_batch(images, "x", torch.tensor([1, 0]))["captions"] == ["x", "x"]
    (d / "b.txt").write_text("  \n")
    with pytest.raises(UserError, match=r"b.txt is empty; write the image's caption in it or remove it"):
        class_captions(d, names, "a photo of a toy")


def test_class_images_are_composited_on_the_runs_background(tiny_mv, photos, tmp_path):
    """An RGBA class image (a world's own render) is trained on the photos' grey, not on the black its
    transparent pixels hold."""
    from mvforge.train.dreambooth import _start

    cfg = db_config(tiny_mv, photos, tmp_path / "o", class_images=str(photos), class_prompt="a toy")
    tu = _start(cfg, Runtime(show_progress=False))
    corner = tu.class_photos[0, :, 0, 0]  # a.png's transparent corner
    assert torch.allclose(corner, torch.zeros(3), atol=0.02)  # grey 0.5 is 0 in [-1, 1]
    assert torch.equal(tu.class_photos, tu.photos)  # the same directory loads the same way as the photos


def test_cli_output_samples_and_loads(tiny_mv, photos, tmp_path):
    """`mvtrain dreambooth` (2 steps, prior preservation and validation on) killed hard after step 2 (before its
    checkpoint) and run again ends with the weights of an uninterrupted in-process run; then
    `mvtrain sample --model OUT`; OUT and OUT/pipeline load through ``MultiViewDiffusion.from_pretrained`` with the same UNet, and predict
    4 views with cameras (what SDS calls)."""
    mvtrain = str(Path(sys.executable).with_name("mvtrain"))
    out = tmp_path / "db"
    args = [mvtrain, "dreambooth", "--model", str(tiny_mv), "--images", str(photos), "--prompt", PROMPT]
    args += ["--out", str(out), "--max-steps", "2", "--device", "cpu", "--class-prompt", "a photo of a toy"]
    args += ["--class-images", str(photos), "--validate-every", "2"]
    args += ["--set", "resolution=32", "--set", "batch_size=1", "--set", "validation.steps=2"]
    args += ["--set", "checkpoint_every=1"]
    env = os.environ | {FAULT_ENV: "kill:0:2"}
    killed = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert killed.returncode == 1 and latest_checkpoint(out).name == "step-000001", killed.stderr[-3000:]
    res = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)  # fires once per run dir
    assert res.returncode == 0, res.stderr[-3000:]
    ref = tmp_path / "ref"
    run(
        db_config(
            tiny_mv,
            photos,
            ref,
            max_steps=2,
            batch_size=1,
            class_prompt="a photo of a toy",
            class_images=str(photos),
            optim=OptimConfig(lr=2e-6, lr_scheduler="constant", weight_decay=0.01),
        )
    )
    a = load_unet(latest_checkpoint(out)).state_dict()
    b = load_unet(latest_checkpoint(ref)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], v) for k, v in load_unet(tiny_mv).state_dict().items())
    assert (out / "validation" / "step-000002" / "01-a-photo-of-a-toy" / "grid.png").is_file()
    res = subprocess.run(
        [mvtrain, "sample", "--model", str(out), "--prompt", PROMPT, "--out", str(tmp_path / "s")]
        + ["--steps", "2", "--resolution", "32", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert Image.open(tmp_path / "s" / "grid.png").size == (4 * 32, 32)
    run_model = MultiViewDiffusion.from_pretrained(out)
    pipe_model = MultiViewDiffusion.from_pretrained(out / "pipeline")
    a, b = run_model.unet.state_dict(), pipe_model.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    from mvforge.models.pipeline import orbit_cameras

    cams = torch.from_numpy(orbit_cameras(4))
    eps = pipe_model.predict_noise(
        torch.randn(4, 4, 4, 4), 500, pipe_model.encode_prompt([PROMPT] * 4), cameras=cams, num_views=4
    )
    assert eps.shape == (4, 4, 4, 4) and torch.isfinite(eps).all()

    bad = subprocess.run(
        [mvtrain, "dreambooth", "--model", str(tiny_mv), "--images", str(tmp_path / "nope")]
        + ["--prompt", PROMPT, "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr
