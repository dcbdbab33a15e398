"""`mvtrain sample`: V views of each prompt through ``MVDreamPipeline``; writes views, a grid and sample.json.

Output layout (named in mvforge/formats/samples.py): one prompt -> ``OUT/view_00.png ... view_{V-1}.png``,
``OUT/grid.png`` (the views side by side), ``OUT/sample.json`` (prompt, text sent to the model, model, ``ema``:
whether a checkpoint's EMA weights were used, config) written last; a prompts file (``--prompts FILE``) -> the
same in ``OUT/<slug>/`` per prompt, named by the prompt as
`mvtrain sds --prompts` names its run directories (``prompt_slug``). Every prompt starts from the same seed, so a prompt's
views do not depend on its place in the file, and neither does its directory: a reordered or extended file resumes,
and two prompts that would share a directory (a prompt listed twice, or prompts equal up to case and punctuation)
are refused, as `mvtrain sds --prompts` refuses them. Rerunning the same command resumes (``resume=True``, the CLI):
a prompt whose sample.json records the same model (the same weights, however the path is spelled), prompt and
settings is skipped; any other setting samples it again and overwrites, and the run says (one line on stderr) how
many prompts that re-samples and the first setting that differs. A prompt's sample.json goes before any of its views
changes and comes back last, so a run killed mid-prompt never leaves views from two runs under one marker.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
from pathlib import Path

from mvforge import config as config_mod
from mvforge import rundir
from mvforge.errors import UserError
from mvforge.formats import samples as sample_format
from mvforge.formats.samples import prompt_dirs
from mvforge.fsutil import atomic_write_bytes, atomic_write_json
from mvforge.models.config import SampleConfig

# torch, diffusers and PIL are imported inside the functions that need them: the CLI validates its input with
# this module before paying for those imports (a bad flag fails in well under a second).


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def check_config(cfg: SampleConfig, device_type: str | None = None) -> None:
    """Reject bad sampling settings before any model loads (UserError naming the fix): fewer than one view or
    step, a resolution that is not a multiple of 8, a number that is NaN or infinite, eta outside 0..1, a
    negative seed, and with ``device_type`` ("cpu", "cuda"; None: not known yet) fp16/bf16 off a GPU."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        # NaN guidance samples black images and writes NaN into sample.json, which is not valid JSON.
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{f.name} {value}: pass a finite number, such as {f.default} (the default)")
    if cfg.num_views < 1 or cfg.steps < 1:
        raise UserError(
            f"num_views {cfg.num_views}, steps {cfg.steps}: both must be >= 1 (e.g. --num-views 4 --steps 50)"
        )
    if not 0.0 <= cfg.eta <= 1.0:
        # DDIM's eta scales the noise added back per step: 0 = deterministic DDIM, 1 = DDPM's variance.
        raise UserError(f"eta {cfg.eta}: DDIM's eta must be in 0..1 (0 = deterministic, the default)")
    if cfg.seed < 0:
        # torch would wrap a negative seed silently; sample.json would then record a seed no one can pass again.
        raise UserError(f"seed {cfg.seed}: pass 0 or more, such as 23 (the default)")
    if cfg.resolution != 0 and (cfg.resolution < 8 or cfg.resolution % 8):
        # The VAE downsamples by 8 (SD's latents are resolution / 8), as diffusers' pipelines also require.
        raise UserError(
            f"resolution {cfg.resolution}: pass a multiple of 8 such as 256, or 0 for the model's native side"
        )
    if cfg.precision != "fp32" and device_type not in (None, "cuda"):
        raise UserError(f"--precision {cfg.precision} needs a CUDA GPU; use fp32 on {device_type}")


def generate_views(pipe, prompt: str, cfg: SampleConfig, seed: int) -> list:
    """The V views of ``prompt`` (``cfg.prompt_suffix`` appended) as PIL images, every sampling setting taken
    from ``cfg`` and the noise from ``seed``: the one call `mvtrain sample` and `mvtrain eval` both make."""
    import torch

    return pipe(
        prompt + cfg.prompt_suffix,
        negative_prompt=cfg.negative_prompt,
        num_views=cfg.num_views,
        elevation_deg=cfg.elevation_deg,
        azimuth_start_deg=cfg.azimuth_start_deg,
        num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance_scale,
        guidance_rescale=cfg.guidance_rescale,
        eta=cfg.eta,
        resolution=cfg.resolution,
        generator=torch.Generator().manual_seed(seed),
    ).images


def sample_prompts(
    model,
    prompts: list[str],
    out: str | Path,
    cfg: SampleConfig = SampleConfig(),
    device="cpu",
    show_progress: bool = True,
    label: str | None = None,
    resume: bool = False,
    weights: str | None = None,
    per_prompt: bool | None = None,
) -> list[Path]:
    """Sample every prompt and write its views; returns the output directory of each prompt. ``model``: a
    loaded ``MultiViewDiffusion`` or a path for its ``from_pretrained``; ``device``: a torch device or name; ``label``: the model's name in
    sample.json (default: the path); ``resume``: skip prompts already written with the same settings, and say on
    stderr (one line) how many written with other settings are sampled again (the CLI's behaviour; validation
    during training always samples); ``weights``: the model's ``resolve.weights_fingerprint``, recorded so
    that a resume does not keep views made by other weights, and compared instead of the model's path or
    label when both records carry one;
    ``per_prompt``: write each prompt into ``out/<prompt_slug>/`` (True: the CLI's ``--prompts``, also for a
    file of one prompt) or into ``out`` itself (False, one prompt only); None: per prompt when there are several.
    Raises UserError for bad settings, no prompt, or two prompts naming one directory (``prompt_dirs``), before
    any model loads."""
    import torch

    from mvforge.models.pipeline import MultiViewDiffusion

    device = torch.device(device)
    check_config(cfg, device.type)
    if not prompts:
        raise UserError("no prompt; pass --prompt TEXT or --prompts FILE")
    out = Path(out)
    if per_prompt is None:
        per_prompt = len(prompts) > 1
    if not per_prompt and len(prompts) > 1:
        raise UserError(f"{len(prompts)} prompts cannot share one output directory; pass per_prompt=True")
    dirs = [out / name for name in prompt_dirs(prompts)] if per_prompt else [out]
    source = model if isinstance(model, MultiViewDiffusion) else None
    if source is None:
        source = MultiViewDiffusion.from_pretrained(
            model, device, torch_dtype(cfg.precision), use_ema=cfg.use_ema
        )
    if cfg.resolution == 0:  # the model's native side, recorded as the number sampled at
        cfg = dataclasses.replace(cfg, resolution=source.resolution)
    meta = {"model": label or str(model), "ema": source.ema}  # the weights used (config.use_ema only asks)
    if weights is not None:
        meta["weights"] = weights
    records = {
        d: meta | {"prompt": p, "text": p + cfg.prompt_suffix} for p, d in zip(prompts, dirs, strict=True)
    }
    # Resumable: a prompt whose views were written with these exact settings is not sampled again (save_views
    # removes sample.json before any view changes and writes it last, so its presence means the views are complete).
    diffs = {d: _settings_difference(d, records[d], cfg) if resume else None for d in dirs}
    skips = [diffs[d] == "" and _views_complete(d, cfg) for d in dirs]
    redone = [d for d in dirs if diffs[d]]
    if redone:
        # Overwriting is the documented behaviour, but never silent: one line per run, before any prompt changes.
        print(
            f"mvtrain sample: {len(redone)} prompt(s) written with other settings are sampled again and "
            f"overwritten (first: {redone[0].name}/, {diffs[redone[0]]})",
            file=sys.stderr,
        )
    pipe = source.pipeline(cfg.scheduler)
    pipe.set_progress_bar_config(disable=True)
    progress = None
    if show_progress:
        from mvforge.progress import StageProgress

        progress = StageProgress("mvtrain sample", len(prompts), unit="prompts").__enter__()
    try:
        for prompt, d, skip in zip(prompts, dirs, skips, strict=True):
            if not skip:
                images = generate_views(pipe, prompt, cfg, cfg.seed)
                save_views(images, d, records[d], cfg)
            if progress is not None:
                progress.advance("skipped" if skip else "ok")
    finally:
        if progress is not None:
            progress.__exit__(None, None, None)
    if progress is not None:
        from mvforge.progress import print_summary

        print_summary(
            "mvtrain sample",
            [
                ("prompts sampled", progress.counts["ok"]),
                ("already done (skipped)", progress.counts["skipped"]),
                ("output", str(out)),
            ],
        )
    return dirs


def _settings_difference(out: Path, record: dict, cfg: SampleConfig) -> str | None:
    """How ``out/sample.json`` differs from ``record`` + ``cfg`` (``rundir.settings_difference``, the
    comparison every stage resumes by): "" when it records the same model, prompt and settings, None when
    there is no readable sample.json (nothing finished there). When both carry a weights fingerprint the model
    is compared by it, not by how its path was spelled."""
    try:
        done = json.loads((out / sample_format.META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict):
        return None
    now = json.loads(json.dumps({**record, "config": config_mod.to_dict(cfg)}))
    if "ema" not in done:  # written before sample.json recorded it: it follows from the model and use_ema
        now.pop("ema", None)
    ignore = ("model",) if "weights" in done and "weights" in now else ()
    return rundir.settings_difference(done, now, compared_elsewhere=ignore)


def _views_complete(out: Path, cfg: SampleConfig) -> bool:
    return all((out / sample_format.view_name(i)).is_file() for i in range(cfg.num_views))


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save_views(images: list, out: str | Path, meta: dict, cfg: SampleConfig) -> list[Path]:
    """view_00.png ... and grid.png (the V views side by side), then sample.json; returns the image paths.
    sample.json (the "done" marker that resume trusts) is removed before any view changes and written last,
    and view files beyond ``len(images)`` left by an earlier run with more views are removed."""
    from PIL import Image

    out = Path(out)
    # Marker first: a run killed after rewriting view_00 must not leave the old marker vouching for a mix of
    # new and old views.
    (out / sample_format.META).unlink(missing_ok=True)
    for old in out.glob(f"{sample_format.VIEW_PREFIX}*{sample_format.VIEW_SUFFIX}"):
        index = sample_format.view_index(old.name)
        if index is None or index >= len(images):
            old.unlink(missing_ok=True)
    paths = []
    for i, im in enumerate(images):
        p = out / sample_format.view_name(i)
        atomic_write_bytes(p, _png(im))
        paths.append(p)
    w, h = images[0].size
    grid = Image.new("RGB", (w * len(images), h))
    for i, im in enumerate(images):
        grid.paste(im, (i * w, 0))
    atomic_write_bytes(out / sample_format.GRID, _png(grid))
    atomic_write_json(out / sample_format.META, {**meta, "config": config_mod.to_dict(cfg)})
    return [*paths, out / sample_format.GRID]
