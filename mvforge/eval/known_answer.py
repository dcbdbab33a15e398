"""Known-answer evaluation: generated views scored against ground-truth renders at the same cameras.

FID, IS and CLIP score (eval/run.py) say whether images look like the data; they cannot say whether the views
of a caption show *its* object from *the requested* cameras. When the reference is a render directory of the
very objects the model was trained on (the demo world, docs/demo.md), every caption has a known answer: its
object's renders. For each caption this module samples ``num_views`` views at cameras taken from the object's
``cameras.json`` (the authors' multi-view setting: one orbit, azimuths 360/V apart) and compares them, composited
on one background, with every reference object's renders at those cameras:

- retrieval: the reference object with the smallest mean squared error over the views (should be its own);
- PSNR over the true object's pixels (its alpha > 0.5) and silhouette IoU (a generated pixel is foreground
  where it differs from the background by more than ``silhouette_tolerance``);
- camera sensitivity: the same caption sampled at azimuths shifted by ``shifts_deg`` must be *further* from the
  ground truth at the true cameras than the unshifted sample (a model that ignores its camera input, or reads
  the azimuth mirrored, fails this for any object without rotational symmetry).

The same scores compare any images with the references (``score_images``), e.g. an SDS mesh rendered back
with `mvdata render` under the ground-truth uid, so its cameras and light are the reference's.

Output (``OUT``, named in mvforge/formats/eval_result.py): ``known_answer/<uid>.png`` (rows: ground truth, the sample at the true cameras, then one row
per shifted azimuth), ``known_answer.json`` (written last; per caption, and a summary beside two baselines: what a
blank image retrieves, and how often the shifted samples are further from the truth). Sampling is seeded per caption, so a rerun gives the same numbers.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mvforge import config as config_mod
from mvforge import rundir
from mvforge.cameras import normalize_camera
from mvforge.errors import UserError
from mvforge.formats import eval_result as result_format
from mvforge.formats import renders as layout
from mvforge.fsutil import atomic_write_bytes, atomic_write_json


@dataclass(frozen=True)
class KnownAnswerConfig:
    """How captions are sampled and scored against their ground truth (module docstring)."""

    num_views: int = 4
    """Views per caption: azimuths 360/V apart on the reference's first orbit."""
    orbit: int = 0
    """The reference orbit the views are taken from. Point it at an orbit `mvdata shard --val-views` held out of
    training to score cameras the model never saw (the demo holds out its third orbit: docs/demo.md)."""
    view_offset: int = 0
    """Position on that orbit of the first evaluation view: views ``offset, offset + N/V, ...`` of its N (e.g. 2
    for views 2, 6, 10, 14 of a 16-view orbit)."""
    steps: int = 20
    """DDIM steps."""
    guidance_scale: float = 5.0
    """Classifier-free guidance scale (a small model trained briefly over-saturates at the authors' 10)."""
    caption_suffix: str = ", 3d asset"
    """Appended to each caption, as in training (loader.caption_suffix)."""
    seed: int = 23
    """Seed of the initial noise (the authors' inference seed); the same noise for every caption and shift."""
    background_grey: int = 128
    """Grey level (0-255) the references are composited on: the model's training background
    (``loader.background = "color"`` with this grey as ``loader.background_rgb``)."""
    silhouette_tolerance: float = 0.1
    """A generated pixel is foreground where some channel differs from ``background`` by more than this."""
    shifts_deg: tuple[float, ...] = (90.0, 180.0)
    """Azimuth shifts of the camera-sensitivity check (empty: skip it)."""

    def __post_init__(self) -> None:
        if self.num_views < 1 or self.steps < 1:
            raise UserError("num_views and steps must be >= 1")
        for key in ("orbit", "view_offset"):
            if getattr(self, key) < 0:
                raise UserError(f"{key} must be >= 0 (got {getattr(self, key)}); pass --set {key}=0")
        if not 0 <= self.background_grey <= 255:
            raise UserError(f"background_grey must be 0-255 (got {self.background_grey})")

    @property
    def background(self) -> float:
        """The background grey in [0, 1]."""
        return self.background_grey / 255


@dataclass
class Reference:
    """One ground-truth object at the evaluation cameras."""

    uid: str
    caption: str
    rgb: np.ndarray
    """(V, H, W, 3) float32 in [0, 1], composited on the background."""
    alpha: np.ndarray
    """(V, H, W) float32 in [0, 1]."""
    c2w: np.ndarray
    """(V, 4, 4) float64 camera-to-world (design §3)."""
    views: list[int]
    """The view indices of ``cameras.json`` used."""


def eval_views(cameras: dict, num_views: int, offset: int = 0, orbit: int = 0) -> list[int]:
    """Indices of ``num_views`` views of orbit ``orbit``, 360/V apart from its view at position ``offset``.
    Raises UserError when the references have no such orbit, when its view count is not a multiple of
    ``num_views``, or when ``offset`` is not below N/V (the sets repeat after it)."""
    ring = [v for v in cameras["views"] if int(v["orbit"]) == orbit]
    if not ring:
        orbits = sorted({int(v["orbit"]) for v in cameras["views"]})
        raise UserError(
            f"orbit {orbit}: the references have orbits {orbits}; pass --set orbit={orbits[0]}..{orbits[-1]}"
        )
    if len(ring) % num_views:
        raise UserError(
            f"an orbit of {len(ring)} views has no {num_views} views 360/{num_views} degrees apart; render a "
            f"multiple of {num_views} views per orbit"
        )
    step = len(ring) // num_views
    if offset >= step:
        raise UserError(
            f"view_offset {offset}: an orbit of {len(ring)} views has {step} sets of {num_views}; pass "
            f"--set view_offset=0..{step - 1}"
        )
    return [int(ring[offset + i * step]["index"]) for i in range(num_views)]


def load_references(
    renders: str | Path, cfg: KnownAnswerConfig, uids: list[str] | None = None
) -> list[Reference]:
    """The finished objects of a render directory (or ``uids`` of it) at their evaluation views, sorted by uid.
    Raises UserError for a directory without finished renders or a uid it lacks."""
    renders = Path(renders)
    available = sorted(layout.iter_uids(renders))
    if not available:
        raise UserError(
            f"{renders} holds no finished render; pass the render directory of the trained objects"
        )
    missing = sorted(set(uids or ()) - set(available))
    if missing:
        raise UserError(f"{renders} has no finished render of {', '.join(missing)}; render it first")
    refs = []
    for uid in uids or available:
        obj = layout.load_object(renders, uid)
        views = eval_views(obj.cameras, cfg.num_views, cfg.view_offset, cfg.orbit)
        refs.append(_load_views(obj, views, cfg))
    for r in refs[1:]:
        if r.rgb.shape != refs[0].rgb.shape or not np.allclose(r.c2w, refs[0].c2w, atol=1e-5):
            raise UserError(
                f"{renders}: {r.uid} and {refs[0].uid} were rendered from different cameras; the known answer "
                "compares objects view by view: render them with `mvdata render --shared-cameras`"
            )
    return refs


def _load_views(obj: layout.RenderedObject, views: list[int], cfg: KnownAnswerConfig) -> Reference:
    """Views ``views`` of a rendered object, composited on the background grey."""
    by_index = {int(v["index"]): v for v in obj.cameras["views"]}
    rgba = np.stack(
        [np.asarray(Image.open(obj.view_path(i)).convert("RGBA"), np.float32) / 255 for i in views]
    )
    alpha = rgba[..., 3]
    rgb = rgba[..., :3] * alpha[..., None] + cfg.background * (1 - alpha[..., None])
    c2w = np.stack([np.asarray(by_index[i]["c2w"], np.float64) for i in views])
    return Reference(obj.uid, obj.caption, rgb, alpha, c2w, views)


def views_at(obj: layout.RenderedObject, c2w: np.ndarray, what: str) -> list[int]:
    """The view indices of ``obj`` whose cameras equal ``c2w`` (V, 4, 4), in that order. Raises UserError
    naming ``what`` when one is missing (rendered with other cameras)."""
    cams = [(int(v["index"]), np.asarray(v["c2w"], np.float64)) for v in obj.cameras["views"]]
    found = []
    for want in c2w:
        hit = next((i for i, have in cams if np.allclose(have, want, atol=1e-4)), None)
        if hit is None:
            raise UserError(
                f"{what}: {obj.uid} has no view at the reference's camera; render it with the reference's "
                "seed, --views, --orbits, --resolution, camera framing and --shared-cameras"
            )
        found.append(hit)
    return found


def rotate_azimuth(c2w: np.ndarray, degrees: float) -> np.ndarray:
    """``c2w`` (V, 4, 4) turned about the world's Z axis (up, design §3) by ``degrees``: the same orbit
    position ``degrees`` further in azimuth."""
    a = math.radians(degrees)
    rz = np.eye(4)
    rz[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    return rz @ c2w


def sample_at_cameras(model, caption: str, c2w: np.ndarray, cfg: KnownAnswerConfig, resolution: int):
    """(V, H, W, 3) float32 in [0, 1]: the authors' DDIM + CFG sampler (eta 0, empty negative prompt, cameras on
    both CFG halves) for ``caption`` + suffix at the cameras ``c2w`` (V, 4, 4), through ``MultiViewDiffusion``'s
    ``predict_noise``."""
    import torch

    from mvforge.models.pipeline import make_stepper

    v = c2w.shape[0]
    scheduler = make_stepper("ddim", model.scheduler.config)
    scheduler.set_timesteps(cfg.steps, device=model.device)
    cond = model.encode_prompt([caption + cfg.caption_suffix]).expand(v, -1, -1)
    uncond = model.encode_prompt([""]).expand(v, -1, -1) if cfg.guidance_scale != 1.0 else None
    cams = torch.from_numpy(normalize_camera(c2w.astype(np.float32))).to(model.device)
    side = resolution // model.vae_scale_factor
    g = torch.Generator().manual_seed(cfg.seed)
    latents = torch.randn((v, model.unet.config.in_channels, side, side), generator=g).to(model.device)
    latents = latents * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(latents, t)
            eps = model.predict_noise(x, t, cond, uncond, cams, v, cfg.guidance_scale)
            latents = scheduler.step(eps, t, latents, eta=0.0).prev_sample
        images = model.decode_latents(latents).float()
    return ((images + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()


def silhouette(rgb: np.ndarray, background: float, tolerance: float) -> np.ndarray:
    """Foreground mask (..., H, W) of images (..., H, W, 3) in [0, 1] on a uniform ``background`` grey."""
    return np.abs(rgb - background).max(axis=-1) > tolerance


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB of images in [0, 1] over the pixels where ``mask`` (..., H, W) is true."""
    if not mask.any():
        return float("nan")
    mse = float(((a - b) ** 2)[mask].mean())
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def score_images(
    images: np.ndarray,
    truth: Reference,
    refs: list[Reference],
    cfg: KnownAnswerConfig,
    mask: np.ndarray | None = None,
) -> dict:
    """Scores of images (V, H, W, 3) in [0, 1], taken at ``truth``'s cameras, against every reference at the
    same cameras (all references of a world share them: `mvdata render --shared-cameras`). ``mask``: the
    images' foreground (V, H, W) bool when known (a render's alpha); else their ``silhouette`` on the grey.

    Returns ``retrieved`` (uid with the smallest MSE), ``views_retrieved`` (the same per view: which object each
    view alone is nearest to; views that disagree are not one object, whatever their mean retrieves), ``mse`` per
    uid, ``psnr_object_db`` (over the true object's pixels), ``iou`` (silhouettes) and ``iou_others`` (the best
    IoU with any other object)."""
    if images.shape != truth.rgb.shape:
        images = _resize(images, truth.rgb.shape[1])
    per_view = {r.uid: ((images - r.rgb) ** 2).mean(axis=(1, 2, 3)) for r in refs}
    mse = {uid: float(err.mean()) for uid, err in per_view.items()}
    uids = list(per_view)
    nearest = np.stack([per_view[u] for u in uids]).argmin(axis=0)
    if mask is None:
        mask = silhouette(images, cfg.background, cfg.silhouette_tolerance)
    ious = {r.uid: iou(mask, r.alpha > 0.5) for r in refs}
    others = [v for k, v in ious.items() if k != truth.uid]
    return {
        "retrieved": min(mse, key=mse.get),
        "views_retrieved": [uids[i] for i in nearest],
        "mse": {k: round(v, 6) for k, v in mse.items()},
        "psnr_object_db": round(masked_psnr(images, truth.rgb, truth.alpha > 0.5), 3),
        "iou": round(ious[truth.uid], 4),
        "iou_others": round(max(others), 4) if others else None,
    }


def views_summary(rows: list[dict]) -> dict:
    """Per-view retrieval over scored rows: ``views_retrieving_own`` ("k/N" views nearest their own object) and
    ``views_agree`` (captions whose views are all nearest one object, right or wrong: multi-view consistency
    without the truth, the property per-image attention loses in paper §5.1)."""
    views = [v for r in rows for v in r["views_retrieved"]]
    own = sum(v == r["uid"] for r in rows for v in r["views_retrieved"])
    agree = sum(len(set(r["views_retrieved"])) == 1 for r in rows)
    return {"views_retrieving_own": f"{own}/{len(views)}", "views_agree": f"{agree}/{len(rows)}"}


def _resize(images: np.ndarray, side: int) -> np.ndarray:
    if images.shape[1] == side:
        return images
    out = [
        np.asarray(Image.fromarray((im * 255).round().astype(np.uint8)).resize((side, side), Image.BICUBIC))
        for im in images
    ]
    return np.stack(out).astype(np.float32) / 255


def _strip(rows: list[np.ndarray]) -> bytes:
    """PNG bytes of rows of views (each (V, H, W, 3) in [0, 1]) tiled into one picture."""
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    import io

    buf = io.BytesIO()
    Image.fromarray((grid.clip(0, 1) * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def shift_is_further(shift: dict, num_views: int) -> bool:
    """Whether one ``known_answer.json`` shift entry (``{"views_nearer_at_true_camera": int, ...}``) counts as
    further from the truth: most of the caption's ``num_views`` views are nearer at the true camera (ties are
    not)."""
    return 2 * shift["views_nearer_at_true_camera"] > num_views


@rundir.locked("mvtrain eval", lambda out, **_: out)
def run_known_answer(
    model,
    model_name: str,
    renders: str | Path,
    out: str | Path,
    cfg: KnownAnswerConfig,
    uids: list[str] | None = None,
    show_progress: bool = True,
    captions: dict[str, str] | None = None,
    weights: str | None = None,
) -> dict:
    """Sample every reference caption at its cameras (and shifted), score it, write ``OUT/known_answer.json``.

    ``model``: a loaded ``MultiViewDiffusion``; ``uids``: the captions to sample (default: every reference
    object; all objects stay candidates of the retrieval); ``captions``: uid -> the prompt to sample instead of
    the reference caption (e.g. a DreamBooth subject's rare-token prompt); ``weights``: the model's
    ``models.resolve.weights_fingerprint``: a result of the same weights, references, settings and prompts is kept
    and returned without sampling again (a rerun of `make demo` takes seconds). Returns the document."""
    from mvforge.progress import StageProgress

    out = Path(out)
    refs = load_references(renders, cfg)
    wanted = uids or [r.uid for r in refs]
    captions = captions or {}
    unknown = sorted((set(wanted) | set(captions)) - {r.uid for r in refs})
    if unknown:
        raise UserError(f"{renders} has no finished render of {', '.join(unknown)}; render it first")
    prompts = {r.uid: captions.get(r.uid, r.caption) for r in refs if r.uid in wanted}
    previous = read_result(out)
    now = {
        "weights": weights,
        "reference": str(renders),
        "config": config_mod.to_dict(cfg),
        "prompts": prompts,
    }
    if previous is not None:
        kept = {
            "weights": previous.get("weights"),
            "reference": previous.get("reference"),
            "config": previous.get("config"),
            "prompts": {r.get("uid"): r.get("caption") for r in previous.get("captions", [])},
        }
        diff = rundir.settings_difference(kept, json.loads(json.dumps(now)))
        if weights is not None and not diff:
            return previous
        _say_replacing(out, diff or "weights not recorded")
    # A run that fails below leaves no result of another run behind.
    (out / result_format.KNOWN_ANSWER).unlink(missing_ok=True)
    resolution = model.resolution
    rows = []
    with StageProgress("known-answer", len(wanted), unit="captions", enabled=show_progress) as progress:
        for truth in (r for r in refs if r.uid in wanted):
            caption = captions.get(truth.uid, truth.caption)
            images = sample_at_cameras(model, caption, truth.c2w, cfg, resolution)
            row = {"uid": truth.uid, "caption": caption, "views": truth.views}
            row |= score_images(images, truth, refs, cfg)
            strip = [truth.rgb, _resize(images, truth.rgb.shape[1])]
            # Per view: the true-camera sample against each shifted one, both scored at the true cameras.
            true_err = ((strip[1] - truth.rgb) ** 2).mean(axis=(1, 2, 3))
            shifted = {}
            for shift in cfg.shifts_deg:
                moved = sample_at_cameras(model, caption, rotate_azimuth(truth.c2w, shift), cfg, resolution)
                moved = _resize(moved, truth.rgb.shape[1])
                moved_err = ((moved - truth.rgb) ** 2).mean(axis=(1, 2, 3))
                shifted[f"{shift:g}"] = {
                    "mse": round(float(moved_err.mean()), 6),
                    "views_nearer_at_true_camera": int((true_err < moved_err).sum()),
                    "iou": round(
                        iou(silhouette(moved, cfg.background, cfg.silhouette_tolerance), truth.alpha > 0.5), 4
                    ),
                }
                strip.append(moved)
            row["shifted"] = shifted
            atomic_write_bytes(result_format.known_answer_strip(out, truth.uid), _strip(strip))
            rows.append(row)
            progress.advance()
    # Baselines a result must beat: a blank image (the background only) retrieves whichever object covers
    # the least of the frame, and samples that ignore the camera are as near at the shifted cameras.
    blank = np.full_like(refs[0].rgb, cfg.background)
    blank_hits = sum(score_images(blank, r, refs, cfg)["retrieved"] == r.uid for r in refs if r.uid in wanted)
    pairs = [(s, len(r["views"])) for r in rows for s in r["shifted"].values()]
    n = len(rows)
    doc = {
        "mode": "sampled",
        "model": model_name,
        "weights": weights,
        # The paper's §5.1 ablations are the model's, recorded so their results cannot be mistaken for the full's.
        "unet": {
            "multiview_attention": bool(getattr(model.unet, "multiview_attention", True)),
            "camera_embedding": bool(getattr(model.unet, "camera_embedding", True)),
        },
        "reference": str(renders),
        "config": config_mod.to_dict(cfg),
        "summary": {
            "captions": n,
            "retrieved_own": sum(r["retrieved"] == r["uid"] for r in rows),
            **views_summary(rows),
            "mean_iou": round(float(np.mean([r["iou"] for r in rows])), 4),
            "mean_psnr_object_db": round(float(np.nanmean([r["psnr_object_db"] for r in rows])), 3),
            "blank_image_retrieves_own": blank_hits,
            "shifted_cameras_further": f"{sum(shift_is_further(s, v) for s, v in pairs)}/{len(pairs)}",
        },
        "captions": rows,
    }
    atomic_write_json(out / result_format.KNOWN_ANSWER, doc)
    return doc


def _load_at(
    root: str | Path, uid: str, truth: Reference, c2w: np.ndarray, cfg: KnownAnswerConfig
) -> Reference:
    """``uid``'s views in render directory ``root`` at the cameras ``c2w``, checked against ``truth``'s size.
    Raises UserError in one line for unreadable files, missing cameras or another resolution."""
    try:
        obj = layout.load_object(root, uid)
        got = _load_views(obj, views_at(obj, c2w, str(root)), cfg)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{root}: the renders of {uid} are unreadable ({type(e).__name__}: {str(e)[:120]}); render it again"
        ) from None
    if got.rgb.shape != truth.rgb.shape:
        raise UserError(
            f"{root}: {uid} was rendered at {got.rgb.shape[1]} px, the reference at {truth.rgb.shape[1]} px; render "
            f"it with --resolution {truth.rgb.shape[1]}"
        )
    return got


@rundir.locked("mvtrain eval", lambda out, **_: out)
def score_renders(
    generated: str | Path,
    renders: str | Path,
    out: str | Path,
    cfg: KnownAnswerConfig,
    baseline: str | Path | None = None,
) -> dict:
    """Score render directories against the references, view for view: e.g. SDS meshes rendered back with
    `mvdata render` under their ground-truth uids, so cameras and light are the reference's (docs/demo.md).

    Every object of ``generated`` whose uid is a reference is scored at the reference's evaluation cameras
    (``score_images``) and, per ``shifts_deg``, at the cameras turned by that azimuth: its IoU there with the
    truth at the true cameras, beside the truth's own (``truth_iou``: 1.0 for a rotationally symmetric object,
    so only ``1 - truth_iou`` of margin exists to beat). ``baseline``: a render directory of a reference shape
    under the same uids (an untrained model's grey blob); its IoU is recorded as ``baseline_iou`` for the uids
    it holds.
    Writes ``OUT/known_answer.json`` (``mode: renders``) and ``OUT/known_answer/<uid>.png``; returns the
    document. Raises UserError when nothing in ``generated`` is a reference uid or a view is missing."""
    out = Path(out)
    refs = load_references(renders, cfg)
    by_uid = {r.uid: r for r in refs}
    uids = [u for u in layout.iter_uids(generated) if u in by_uid]
    if not uids:
        raise UserError(
            f"{generated} holds no render under a uid of {renders}; render the generated meshes with a captions "
            "file that gives each its ground-truth uid"
        )
    previous = read_result(out)
    if previous is not None:
        now = {"generated": str(generated), "reference": str(renders), "config": config_mod.to_dict(cfg)}
        now["baseline"] = str(baseline) if baseline is not None else None
        diff = rundir.settings_difference({k: previous.get(k) for k in now}, json.loads(json.dumps(now)))
        if diff:  # the same inputs are scored again without a word: the result can only be the same
            _say_replacing(out, diff)
    # A run that fails below leaves no result of another run behind.
    (out / result_format.KNOWN_ANSWER).unlink(missing_ok=True)
    base = {}
    if baseline is not None:
        for uid in set(uids) & set(layout.iter_uids(baseline)):
            got = _load_at(baseline, uid, by_uid[uid], by_uid[uid].c2w, cfg)
            base[uid] = iou(got.alpha > 0.5, by_uid[uid].alpha > 0.5)
    rows = []
    for uid in uids:
        truth = by_uid[uid]
        got = _load_at(generated, uid, truth, truth.c2w, cfg)
        row = {"uid": uid, "caption": truth.caption, "views": got.views} | score_images(
            got.rgb, truth, refs, cfg, got.alpha > 0.5
        )
        own = row["mse"][uid]
        others = [v for k, v in row["mse"].items() if k != uid]
        # How much nearer its own object the colours are than any other's (> 1: nearer its own).
        row["mse_ratio_nearest_other"] = round(min(others) / max(own, 1e-10), 3) if others else None
        if uid in base:
            row["baseline_iou"] = round(base[uid], 4)
        truth_obj = layout.load_object(renders, uid)
        strip, shifted = [truth.rgb, got.rgb], {}
        for shift in cfg.shifts_deg:
            turned = rotate_azimuth(truth.c2w, shift)
            moved = _load_at(generated, uid, truth, turned, cfg)
            truth_moved = _load_views(truth_obj, views_at(truth_obj, turned, str(renders)), cfg)
            shifted[f"{shift:g}"] = {
                "iou": round(iou(moved.alpha > 0.5, truth.alpha > 0.5), 4),
                "truth_iou": round(iou(truth_moved.alpha > 0.5, truth.alpha > 0.5), 4),
            }
            strip.append(moved.rgb)
        row["shifted"] = shifted
        atomic_write_bytes(result_format.known_answer_strip(out, uid), _strip(strip))
        rows.append(row)
    doc = {
        "mode": "renders",
        "generated": str(generated),
        "reference": str(renders),
        "baseline": str(baseline) if baseline is not None else None,
        "config": config_mod.to_dict(cfg),
        "summary": {
            "captions": len(rows),
            "retrieved_own": sum(r["retrieved"] == r["uid"] for r in rows),
            **views_summary(rows),
            "mean_iou": round(float(np.mean([r["iou"] for r in rows])), 4),
            "mean_psnr_object_db": round(float(np.nanmean([r["psnr_object_db"] for r in rows])), 3),
        },
        "captions": rows,
    }
    atomic_write_json(out / result_format.KNOWN_ANSWER, doc)
    return doc


def _say_replacing(out: Path, diff: str) -> None:
    """Replacing another run's result is what a rerun asks for, but never silently (as `mvtrain sample`)."""
    print(
        f"mvtrain eval: {out / result_format.KNOWN_ANSWER} was written by another run ({diff}); scoring again "
        "and replacing it",
        file=sys.stderr,
    )


def read_result(out: str | Path) -> dict | None:
    """``OUT/known_answer.json`` or None."""
    path = Path(out) / result_format.KNOWN_ANSWER
    return json.loads(path.read_text()) if path.is_file() else None
