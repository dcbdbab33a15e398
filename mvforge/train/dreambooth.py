"""MVDreamBooth (paper §3.4 / §5.3; docs/dreambooth.md): the multi-view model fine-tuned on a few photos of
one subject.

The loop reads top to bottom like `mvtrain fit`'s and reuses its step pieces (train/loop.py:
``micro_batch_inputs``, ``micro_batch_loss``, ``make_optimizer``, ``optimizer_step``; train/checkpoint.py).
What DreamBooth adds:

- 2D mode: the photos are single images, so every step is a camera-less batch with per-image attention
  (``num_views`` 1, paper §3.4). The camera MLP stays frozen by default and so does the text encoder; only the
  UNet trains. The multi-view ability lives in the shared self-attention weights, which the preservation term
  below keeps near the base model.
- Parameter preservation: ``L = L_LDM + λ·‖θ − θ0‖₁ / N_θ`` over the trained parameters (paper §3.4). Its
  gradient ``λ·sign(θ − θ0) / N_θ`` is added to ``.grad`` analytically after backward
  (``add_preservation_grad``): no autograd graph over all parameters, one ``_foreach`` pass. θ0 is a copy of the
  base weights on the training device in the parameter dtype (on resume it is taken from the base model again,
  not from the checkpoint). At λ = 1 and SD 2.1's N_θ ≈ 8.7e8 the term's gradient is ~1e-9 per parameter, which
  Adam all but ignores (measured on the tiny model in docs/dreambooth.md).
- Optional prior preservation (diffusers' DreamBooth): class images with the class prompt, weighted loss.

Exact resume: each step's draws (photo indices, timesteps, noise, VAE samples) come from generators seeded by
(seed, step); a checkpoint holds the UNet, optimizer and LR schedule. Output: ``checkpoints/step-NNNNNN/`` (the
UNet only; its ``config.toml`` names the directory of the frozen parts, so ``MultiViewDiffusion.from_pretrained``
loads the run or the checkpoint) and, with ``save_pipeline``, ``pipeline/`` (a full pipeline directory).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mvforge import config as config_mod
from mvforge import rundir
from mvforge.devices import resolve_device
from mvforge.errors import UserError
from mvforge.formats import runs
from mvforge.formats import samples as sample_format
from mvforge.fsutil import atomic_write_json
from mvforge.metrics import RunMetrics
from mvforge.models.resolve import frozen_source, latest_checkpoint, resolve_model
from mvforge.train.checkpoint import check_checkpoint, load_training_state, save_checkpoint
from mvforge.train.dreambooth_config import DreamBoothConfig
from mvforge.train.loop import (  # _fault: the FAULT_ENV test hook of fit (kill/SIGTERM at a step)
    Runtime,
    StepModels,
    _fault,
    make_optimizer,
    micro_batch_inputs,
    micro_batch_loss,
    optimizer_step,
    step_generator,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
"""File suffixes read as subject photos from ``--images``."""

GREY = 0.5
"""Background of MVDream's training renders (objects on grey, docs/design.md §2.4); in [0, 1]."""

METRICS_FIELDS = (
    "step",
    "loss",
    "prior_loss",
    "preservation",
    "mean_abs_dev",
    "max_abs_dev",
    "lr",
    "grad_norm",
    "step_s",
)
"""Columns of metrics.csv: ``preservation`` is λ·‖θ − θ0‖₁ / N_θ, ``mean_abs_dev`` ‖θ − θ0‖₁ / N_θ,
``max_abs_dev`` max|θ − θ0|."""


# ---------------------------------------------------------------- subject photos
def _photo_files(directory: str | Path, what: str) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"{what} directory {d} does not exist; pass a directory of jpg/png/webp files")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{d} holds no jpg/png/webp image; pass a directory with the {what} photos")
    return files


def _centre_square(img, resolution: int):
    from PIL import Image

    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return img.crop(box).resize((resolution, resolution), Image.Resampling.LANCZOS)


def load_photos(
    directory: str | Path,
    resolution: int,
    masks: str | Path | None = None,
    background: str = "grey",
    what: str = "subject",
) -> tuple[torch.Tensor, list[str]]:
    """Photos of ``directory`` as (N, 3, R, R) float32 in [-1, 1] and their file names, sorted by name.

    Each photo: EXIF orientation applied (phones store rotation there), centre-cropped to a square and resized to
    ``resolution`` (Lanczos). ``background="grey"``: the subject is composited on grey 0.5 with its alpha channel
    or, when ``masks`` is given, with ``masks/<stem>.png`` (white = subject; a missing mask is an error). Raises
    UserError for a missing or empty directory and for an unreadable image (naming the file)."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    files = _photo_files(directory, what)
    out, names = [], []
    for f in files:
        try:
            with Image.open(f) as im:
                im = ImageOps.exif_transpose(im)
                im.load()
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"{f} is not a readable image ({e}); remove or replace it") from None
        rgba = im.convert("RGBA")
        alpha = None
        if masks is not None:
            mf = Path(masks) / f"{f.stem}.png"
            if not mf.is_file():
                raise UserError(f"no mask {mf} for {f.name}; add it (white = subject) or drop --masks")
            with Image.open(mf) as mk:
                alpha = ImageOps.exif_transpose(mk).convert("L").resize(rgba.size)
        elif im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            alpha = rgba.getchannel("A")
        rgb = np.asarray(_centre_square(rgba.convert("RGB"), resolution), dtype=np.float32) / 255.0
        if background == "grey" and alpha is not None:
            a = np.asarray(_centre_square(alpha, resolution), dtype=np.float32)[..., None] / 255.0
            rgb = rgb * a + GREY * (1 - a)  # straight alpha (docs/design.md §6)
        out.append(torch.from_numpy(rgb).permute(2, 0, 1) * 2 - 1)
        names.append(f.name)
    return torch.stack(out), names


# ---------------------------------------------------------------- parameter preservation
@torch.no_grad()
def add_preservation_grad(params: list[torch.Tensor], theta0: list[torch.Tensor], coeff: float) -> None:
    """Add the gradient of ``coeff · Σ|θ − θ0|`` to each ``p.grad``: ``coeff · sign(θ − θ0)`` (0 where θ = θ0,
    autograd's choice for |x| at 0). With ``coeff = λ / N_θ`` this is the gradient of MVDreamBooth's
    ``λ‖θ − θ0‖₁ / N_θ`` (paper §3.4), computed without an autograd graph (cheap next to the
    step: docs/dreambooth.md). A parameter without a
    gradient gets one. Temporary memory: one copy of the parameters (the differences)."""
    if coeff == 0 or not params:
        return
    diffs = torch._foreach_sub(params, theta0)
    torch._foreach_sign_(diffs)
    with_grad = [(p.grad, d) for p, d in zip(params, diffs, strict=True) if p.grad is not None]
    for p, d in zip(params, diffs, strict=True):
        if p.grad is None:
            p.grad = d.mul_(coeff)
    if with_grad:
        grads, ds = zip(*with_grad, strict=True)
        torch._foreach_add_(list(grads), list(ds), alpha=coeff)


@torch.no_grad()
def deviation(params: list[torch.Tensor], theta0: list[torch.Tensor]) -> tuple[float, float]:
    """(‖θ − θ0‖₁ / N_θ, max|θ − θ0|) over the trained parameters, as Python floats."""
    diffs = torch._foreach_sub(params, theta0)
    l1 = sum(float(n) for n in torch._foreach_norm(diffs, 1))
    mx = max(float(n) for n in torch._foreach_norm(diffs, float("inf")))
    return l1 / max(1, sum(p.numel() for p in params)), mx


# ---------------------------------------------------------------- models
def trained_parameters(
    unet: torch.nn.Module, train_camera: bool, trained: str = "all"
) -> list[torch.nn.Parameter]:
    """The UNet's parameters DreamBooth trains (``requires_grad`` set accordingly): ``trained="all"``, all but the
    camera MLP (``class_embedding``) unless ``train_camera``; ``"cross_attention_kv"``, only the key and value
    projections of the text cross-attention (``attn2.to_k``, ``attn2.to_v``: Custom Diffusion, Kumari et al.
    2023, §3.2), the only weights that read the text (plus the camera MLP with ``train_camera``); on the demo
    world it kept fewer other captions than ``all`` (docs/demo.md)."""
    params = []
    for name, p in unet.named_parameters():
        if name.startswith("class_embedding."):
            train = train_camera
        elif trained == "cross_attention_kv":
            train = ".attn2.to_k." in name or ".attn2.to_v." in name
        else:
            train = True
        p.requires_grad_(train)
        if train:
            params.append(p)
    return params


def load_dreambooth_models(cfg: DreamBoothConfig, rt: Runtime, resume: Path | None):
    """(StepModels, trained parameters, θ0): the base model through ``MultiViewDiffusion.from_pretrained`` (the
    path `mvtrain sample` and `sds` load with), the UNet from ``resume`` when given; θ0 is always the base's."""
    from mvforge.models.pipeline import MultiViewDiffusion

    dev = rt.device
    if cfg.mixed_precision == "fp16" and dev.type != "cuda":
        raise UserError("mixed_precision fp16 needs a CUDA device; use mixed_precision=bf16 or no")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
        torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    autocast = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.mixed_precision]
    base = MultiViewDiffusion.from_pretrained(cfg.pretrained, dev, torch.float32)
    if cfg.resolution != base.resolution and rt.rank == 0:
        # Legal (the UNet is convolutional), but a configs/ preset made for MVDream's 256 px on a small model
        # costs (256 / side)^2 per step and trains a size the model never sampled.
        print(
            f"warning: resolution {cfg.resolution} is not the model's native {base.resolution} px; "
            f"--set resolution={base.resolution} trains at its own",
            file=sys.stderr,
            flush=True,
        )
    if autocast is not None:
        base.vae.to(autocast)
        base.text_encoder.to(autocast)
    unet = base.unet
    theta0 = [p.detach().clone() for p in trained_parameters(unet, cfg.train_camera, cfg.trained)]
    if resume is not None:
        # The one loader again, for the checkpoint's UNet (θ0 above needs the base's): on the CPU, then moved,
        # so its second copy of the frozen parts never reaches ``dev`` (seconds, once per resume).
        unet = MultiViewDiffusion.from_pretrained(cfg.pretrained, unet_from=resume).unet.to(dev)
    unet.train()
    params = trained_parameters(unet, cfg.train_camera, cfg.trained)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    m = StepModels(
        unet, unet, base.vae, base.text_encoder, base.tokenizer, base.scheduler, dev, autocast_dtype=autocast
    )
    return m, params, theta0


# ---------------------------------------------------------------- validation
@torch.no_grad()
def validate(m: StepModels, cfg: DreamBoothConfig, step: int, out: Path) -> Path:
    """V-view grids of the subject prompt and the class prompt (language drift) at ``step`` into
    ``out/validation/step-XXXXXX/<nn>-<slug>/`` (``grid.png``, ``view_XX.png``, ``sample.json``)."""
    from mvforge.models.config import SampleConfig
    from mvforge.models.pipeline import MultiViewDiffusion
    from mvforge.models.sample import sample_prompts

    v = cfg.validation
    root = sample_format.validation_step_dir(out, step)
    sample_cfg = SampleConfig(
        steps=v.steps,
        guidance_scale=v.guidance_scale,
        num_views=v.num_views,
        resolution=v.resolution or cfg.resolution,
        seed=v.seed,
    )
    prompts = [(cfg.prompt, "subject")] + ([(cfg.class_prompt, "class")] if cfg.class_prompt else [])
    entries = []
    m.unet.eval()
    try:
        mvd = MultiViewDiffusion(m.unet, m.vae, m.text_encoder, m.tokenizer, m.noise_sched)
        amp = torch.autocast(m.device.type, dtype=m.autocast_dtype, enabled=m.autocast_dtype is not None)
        with amp:
            for i, (prompt, kind) in enumerate(prompts):
                d = sample_format.validation_prompt_dir(root, i, prompt)
                sample_prompts(
                    mvd, [prompt], d, sample_cfg, m.device, show_progress=False, label=f"step {step}"
                )
                entries.append({"prompt": prompt, "kind": kind, "dir": d.name})
    finally:
        m.unet.train()
    atomic_write_json(root / sample_format.VALIDATION_INDEX, {"step": step, "prompts": entries})
    return root


# ---------------------------------------------------------------- metrics
def log_validation_images(metrics: RunMetrics, root: Path, step: int) -> None:
    """Each validation prompt's grid (``root/<nn>-<slug>/grid.png``) as TensorBoard image
    ``validation/<nn>-<slug>``."""
    import numpy as np
    from PIL import Image

    for grid in sorted(Path(root).glob(f"*/{sample_format.GRID}")):
        with Image.open(grid) as im:
            metrics.image(f"validation/{grid.parent.name}", np.asarray(im.convert("RGB")), step)


def _draw(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """``k`` indices of ``n`` photos: without replacement when there are enough, else with."""
    return torch.randperm(n, generator=g)[:k] if n >= k else torch.randint(0, n, (k,), generator=g)


def photo_batch(photos: torch.Tensor, captions: str | list[str], idx: torch.Tensor) -> dict:
    """A loader-shaped 2D batch (``micro_batch_inputs``' input): images (B, 1, 3, R, R), no cameras.
    ``captions``: one caption for every photo, or a list with one per photo (indexed like ``photos``)."""
    caps = [captions] * len(idx) if isinstance(captions, str) else [captions[int(i)] for i in idx]
    return {"images": photos[idx].unsqueeze(1), "captions": caps, "cameras": None}


def class_captions(directory: str | Path, names: list[str], class_prompt: str) -> list[str]:
    """The caption of each class image ``names`` (file names in ``directory``): the text of its ``<stem>.txt``
    beside it (img2dataset's caption file) when there is one, else ``class_prompt``. Captions per image make
    the prior-preservation set a rehearsal of many captions (a trained world's own renders), not one class.
    Raises UserError for an empty caption file."""
    out = []
    for name in names:
        sidecar = Path(directory) / f"{Path(name).stem}.txt"
        if not sidecar.is_file():
            out.append(class_prompt)
            continue
        text = sidecar.read_text(encoding="utf-8").strip()
        if not text:
            raise UserError(f"{sidecar} is empty; write the image's caption in it or remove it")
        out.append(text)
    return out


# ---------------------------------------------------------------- the loop
@dataclass
class _Tuning:
    """What the step loop reads and evolves: the photos, models, θ0, optimizer state and the run's logging."""

    photos: torch.Tensor
    """Subject photos (N, 3, R, R) in [-1, 1]."""
    names: list[str]
    """Their file names (the checkpoint's record of the photo set)."""
    class_photos: torch.Tensor | None
    """Class images (M, 3, R, R) in [-1, 1] for prior preservation; None without ``class_images``."""
    class_names: list[str]
    class_captions: list[str]
    """Each class image's caption (``class_captions``)."""
    m: StepModels
    params: list[torch.nn.Parameter]
    """The trained parameters (``trained_parameters``)."""
    theta0: list[torch.Tensor]
    """The base model's values of ``params`` (paper §3.4's θ0)."""
    n_theta: int
    """N_θ: the number of trained parameter elements."""
    optimizer: torch.optim.Optimizer
    lr_sched: object
    scaler: torch.amp.GradScaler | None
    """The fp16 gradient scaler; None for bf16 and fp32."""
    draws: dict
    """The checkpoint's loader state: the photo sets (which photos a step draws is a function of (seed, step))."""
    ckpt_cfg: DreamBoothConfig
    """The config checkpoints record (``pretrained`` names the frozen parts' directory)."""
    metrics: RunMetrics
    out: Path
    step: int
    """Optimizer steps done."""


@rundir.locked("mvtrain dreambooth", lambda cfg, rt: cfg.out if rt is None and cfg.out else None)
def dreambooth(cfg: DreamBoothConfig, rt: Runtime | None = None) -> list[dict]:
    """Fine-tune until ``cfg.max_steps``, resuming from the run's latest checkpoint; returns this call's
    per-step records (step, loss, preservation, mean_abs_dev, max_abs_dev, ...). Raises UserError for bad input
    (no model, no or unreadable photos) and at the first step with NaN/inf gradients without fp16 (a few photos
    and a small LR leave no room for fit's skip-and-count policy; fp16's scaler skips its overflow steps)."""
    rt = rt or Runtime(device=resolve_device(cfg.device))
    for name, fix in (("pretrained", "--model DIR"), ("images", "--images DIR"), ("prompt", "--prompt TEXT")):
        if not getattr(cfg, name):
            raise UserError(f"no {name}; pass {fix}")
    # 1-2. Photos, models, θ0, optimizer and LR schedule, restored from the last checkpoint.
    tu = _start(cfg, rt)

    # 3. Train.
    records: list[dict] = []
    progress = _open_progress(cfg, rt, tu)
    try:
        while tu.step < cfg.max_steps:
            rec = _train_step(cfg, rt, tu)
            records.append(rec)
            _after_step(cfg, rt, tu, rec, progress)
    finally:
        tu.metrics.close()
        if progress is not None:
            progress.__exit__(None, None, None)

    # 4. The full pipeline directory (frozen parts saved in fp32 as loaded).
    pipe_dir = _save_pipeline(cfg, tu.m, tu.out)
    if rt.show_progress and records:
        _summary(cfg, records, tu.out, pipe_dir)
    return records


def _start(cfg: DreamBoothConfig, rt: Runtime) -> _Tuning:
    """Photos, models, θ0, optimizer, LR schedule and gradient scaler, restored from the run's newest intact
    checkpoint when it has one; config.toml written and the metrics (metrics.csv + tensorboard/) opened."""
    out = Path(cfg.out)
    # 1. Photos first (cheap; bad input fails before the model loads), the model, θ0.
    photos, names = load_photos(cfg.images, cfg.resolution, cfg.masks, cfg.background)
    class_photos, class_names, captions = None, [], []
    if cfg.class_images:
        class_photos, class_names = load_photos(
            cfg.class_images, cfg.resolution, None, cfg.background, "class"
        )
        captions = class_captions(cfg.class_images, class_names, cfg.class_prompt)
    base = resolve_model(cfg.pretrained)
    # Checkpoints name the directory of the frozen parts (absolute, for any cwd), as fit's do.
    ckpt_cfg = config_mod.replace(cfg, pretrained=str(frozen_source(base)))
    # Refused here, before the model loads, when ``out`` holds a run with other settings (those in
    # rundir.EXECUTION_KEYS may change: docs/design.md §5); config.toml is written once the run can start.
    run = rundir.RunDir.open(out, cfg, "mvtrain dreambooth", write=False)
    resume = run.latest_intact_checkpoint(check_checkpoint, None if rt.rank == 0 else lambda line: None)
    # Which photos a step trains on is a function of (seed, step): no data position to save, so the
    # checkpoint's loader state records the photo sets, and a resume goes on only with the same photos.
    draws = {
        "kind": "dreambooth",
        "photos": names,
        "photos_sha256": _digest(cfg.images, names, cfg.masks),
        "class_images": class_names,
        "class_images_sha256": _digest(cfg.class_images, class_names) if cfg.class_images else None,
        "class_captions": captions,
    }
    if resume is not None:
        _check_same_photos(cfg, resume, draws)
    m, params, theta0 = load_dreambooth_models(cfg, rt, resume)
    n_theta = sum(p.numel() for p in params)

    # 2. Optimizer and LR schedule (the camera group is empty of gradients unless train_camera).
    optimizer, lr_sched = make_optimizer(m.unet, cfg, m.device)
    scaler = torch.amp.GradScaler("cuda") if cfg.mixed_precision == "fp16" else None
    step = load_training_state(resume, m.device, optimizer, lr_sched, scaler) if resume else 0
    run.write_config(cfg)
    metrics = run.metrics(METRICS_FIELDS, step)  # metrics.csv + tensorboard/, as fit and sds
    return _Tuning(
        photos, names, class_photos, class_names, captions, m, params, theta0, n_theta, optimizer,
        lr_sched, scaler, draws, ckpt_cfg, metrics, out, step,
    )  # fmt: skip


def _digest(directory: str | Path, names: list[str], masks: str | Path | None = None) -> str:
    """SHA-256 over the bytes of the photo files ``names`` in ``directory`` (and of their masks), in order."""
    import hashlib

    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0" + (Path(directory) / name).read_bytes())
        if masks is not None:
            h.update((Path(masks) / f"{Path(name).stem}.png").read_bytes())
    return h.hexdigest()


def _check_same_photos(cfg: DreamBoothConfig, resume: Path, draws: dict) -> None:
    """Refuse to resume ``resume`` when the subject or class photos differ from those it was trained on (files
    added, removed, renamed or edited in ``--images``, their ``--masks``, ``--class-images`` or the class
    captions): the rest of the run would tune on another subject under the same step count. Checkpoints that
    predate the digest compare names only."""
    try:
        saved = json.loads((resume / runs.loader_state_name(0)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(
            f"{resume}: its photo record ({runs.loader_state_name(0)}) is unreadable; remove that checkpoint to "
            "resume from the one before"
        ) from None
    for key, flag in (("photos", "--images"), ("class_images", "--class-images")):
        if key not in saved:
            continue
        what = "subject photos" if key == "photos" else "class photos"
        before, now = list(saved[key] or []), draws[key]
        if before != now:
            gone, new = sorted(set(before) - set(now)), sorted(set(now) - set(before))
            change = (
                ", ".join(
                    part
                    for part in (
                        f"{len(gone)} gone (first: {gone[0]})" if gone else "",
                        f"{len(new)} new (first: {new[0]})" if new else "",
                    )
                    if part
                )
                or "the same files in another order"
            )
            raise UserError(
                f"{cfg.out} was tuned on other {what} than {flag} holds now ({change}); restore them, or pass a "
                "new --out to start over"
            )
        digest = saved.get(f"{key}_sha256")
        if digest is not None and digest != draws[f"{key}_sha256"]:
            where = f"{flag} (or --masks)" if key == "photos" and cfg.masks else flag
            raise UserError(
                f"{cfg.out} was tuned on other {what}: a file in {where} was edited since its last checkpoint; "
                "restore it, or pass a new --out to start over"
            )
    if "class_captions" in saved and saved["class_captions"] != draws["class_captions"]:
        raise UserError(
            f"{cfg.out} was tuned with other class captions: a caption file in --class-images was edited since "
            "its last checkpoint; restore it, or pass a new --out to start over"
        )


def _open_progress(cfg: DreamBoothConfig, rt: Runtime, tu: _Tuning):
    """The progress bar over the steps left (with ``show_progress``; else None), after one line naming the
    photos, N_θ and λ."""
    if not rt.show_progress:
        return None
    from mvforge.progress import StageProgress, console

    console.print(
        f"mvtrain dreambooth: {len(tu.names)} photos, N_θ = {tu.n_theta:,} trained parameters, "
        f"λ = {cfg.preservation_lambda} (per-parameter gradient {cfg.preservation_lambda / tu.n_theta:.1e})"
    )
    return StageProgress("mvtrain dreambooth", max(0, cfg.max_steps - tu.step), unit="steps").__enter__()


def _train_step(cfg: DreamBoothConfig, rt: Runtime, tu: _Tuning) -> dict:
    """One optimizer step (``tu.step`` advances by one); returns its record (step, loss, prior_loss, lr,
    grad_norm, step_s in seconds). Raises UserError for NaN/inf gradients without fp16."""
    t0 = time.monotonic()
    # 3a. The subject batch (and the class batch): draws from (seed, step) only.
    loss, prior = _losses(cfg, rt, tu)
    total = loss + cfg.prior_loss_weight * prior if tu.class_photos is not None else loss
    scaler = tu.scaler
    (scaler.scale(total) if scaler is not None else total).backward()
    # 3b. The preservation term's gradient, analytically (scaled like the loss under fp16).
    coeff = cfg.preservation_lambda / tu.n_theta
    add_preservation_grad(tu.params, tu.theta0, coeff * (scaler.get_scale() if scaler is not None else 1.0))
    lr = tu.lr_sched.get_last_lr()[0]
    grad_norm, finite = optimizer_step(tu.m, tu.optimizer, tu.lr_sched, scaler, cfg)
    if not finite and scaler is None:  # (fp16: the scaler skipped the step and lowered its scale)
        raise UserError(
            f"NaN/inf gradients at step {tu.step + 1}; lower optim.lr or use mixed_precision=bf16"
        )
    tu.step += 1
    rec = {"step": tu.step, "loss": loss.item(), "prior_loss": prior.item(), "lr": lr}
    rec["grad_norm"], rec["step_s"] = grad_norm, time.monotonic() - t0
    return rec


def _losses(cfg: DreamBoothConfig, rt: Runtime, tu: _Tuning) -> tuple[torch.Tensor, torch.Tensor]:
    """(subject loss, prior loss) of step ``tu.step``, both scalar float32 tensors with graphs; the prior loss is
    a constant 0 without class images. Photo indices, timesteps and noise come from (seed, step, rank)."""
    m, step = tu.m, tu.step
    idx = _draw(len(tu.names), cfg.batch_size, step_generator(cfg.seed, step, rt.rank, 1))
    inputs = micro_batch_inputs(
        m, photo_batch(tu.photos, cfg.prompt, idx), step_generator(cfg.seed, step, rt.rank, 0), cfg
    )
    loss = micro_batch_loss(m, inputs, cfg)
    prior = torch.zeros(())
    if tu.class_photos is not None:
        cidx = _draw(len(tu.class_names), cfg.batch_size, step_generator(cfg.seed, step, rt.rank, 3))
        cb = photo_batch(tu.class_photos, tu.class_captions, cidx)
        prior = micro_batch_loss(
            m, micro_batch_inputs(m, cb, step_generator(cfg.seed, step, rt.rank, 2), cfg), cfg
        )
    return loss, prior


def _after_step(cfg: DreamBoothConfig, rt: Runtime, tu: _Tuning, rec: dict, progress) -> None:
    """3c. Metrics (``rec`` gains mean_abs_dev, max_abs_dev and preservation on logged steps), validation grids,
    checkpoints and the progress bar, after step ``tu.step``."""
    step, out = tu.step, tu.out
    if step % cfg.log_every == 0 or step == cfg.max_steps:
        rec["mean_abs_dev"], rec["max_abs_dev"] = deviation(tu.params, tu.theta0)
        rec["preservation"] = cfg.preservation_lambda * rec["mean_abs_dev"]
        tu.metrics.log(rec)
    v = cfg.validation
    if v.every and (step % v.every == 0 or step == cfg.max_steps):
        log_validation_images(tu.metrics, validate(tu.m, cfg, step, out), step)
    _fault(rt.rank, step, out)  # tests only (MVFORGE_FAULT=kill:0:<step>): dies before the checkpoint
    if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
        state = {"unet": tu.m.unet, "ema": None, "optimizer": tu.optimizer, "lr_sched": tu.lr_sched}
        state["scaler"] = tu.scaler
        save_checkpoint(out, step, rt, state, tu.draws, tu.ckpt_cfg)
    if progress is not None:
        progress.advance()


def _save_pipeline(cfg: DreamBoothConfig, m: StepModels, out: Path) -> Path:
    """Write ``out/pipeline/`` (a full pipeline directory, frozen parts back in fp32) with ``save_pipeline``
    unless it is there already; returns its path either way."""
    pipe_dir = out / runs.PIPELINE
    if cfg.save_pipeline and not (pipe_dir / "model_index.json").is_file():
        from mvforge.models.pipeline import MultiViewDiffusion

        if m.autocast_dtype is not None:
            m.vae.float()
            m.text_encoder.float()
        MultiViewDiffusion(m.unet, m.vae, m.text_encoder, m.tokenizer, m.noise_sched).save_pretrained(
            pipe_dir
        )
    return pipe_dir


def _summary(cfg: DreamBoothConfig, records: list[dict], out: Path, pipe_dir: Path) -> None:
    """The closing table: steps of this call, the last loss and deviation, the newest checkpoint, the pipeline."""
    from mvforge.progress import print_summary

    last = records[-1]
    print_summary(
        "mvtrain dreambooth",
        [
            ("steps this run", len(records)),
            ("last loss", f"{last['loss']:.4f}"),
            ("preservation λ‖θ−θ0‖₁/N_θ", f"{last.get('preservation', float('nan')):.3e}"),
            ("max |θ − θ0|", f"{last.get('max_abs_dev', float('nan')):.3e}"),
            ("checkpoint", latest_checkpoint(out) or "-"),
            ("pipeline", pipe_dir if cfg.save_pipeline else "- (UNet checkpoint only)"),
        ],
    )
