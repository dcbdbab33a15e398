"""The resumable generate -> score loop of `mvtrain eval` (MVDream §5.1 Table 1).

Output layout (``OUT``, named in mvforge/formats/eval_result.py):

```
OUT/config.toml                       the resolved EvalConfig + model; a resume must match it
OUT/generated/<nnnn>-<slug>/          view_00.png ... grid.png, sample.json written LAST (the prompt is done)
OUT/grids/generated.png, reference.png   the first prompts' views / reference objects' views, one row each
OUT/eval.json                         every metric, N, background, resize, extractors (deterministic)
OUT/eval.csv                          one row per prompt: CLIP score, consistency
OUT/timing.json                       generation and scoring seconds (the benchmark; not in eval.json)
```

Prompt i is sampled from seed ``sample.seed + i``, so its views do not depend on which prompts ran before a
resume: a killed run re-run gives the same eval.json as an uninterrupted one, and a finished prompt is never
generated again.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mvforge import config as config_mod
from mvforge import rundir
from mvforge.errors import UserError
from mvforge.eval import metrics
from mvforge.eval.config import EvalConfig
from mvforge.eval.consistency import adjacent_view_similarity
from mvforge.formats import eval_result as result_format
from mvforge.formats import renders as layout
from mvforge.formats import samples as sample_format
from mvforge.formats import shards as shard_format
from mvforge.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text
from mvforge.models.sample import generate_views, save_views

RESIZE = "PIL bicubic"


@dataclass
class RefObject:
    """A reference object: its key (uid), caption ("" if none) and V views (PIL, RGBA or RGB)."""

    key: str
    caption: str
    views: list


def evenly_spaced(n: int, count: int) -> list[int]:
    """``count`` indices evenly spaced over ``n`` views (all of them when there are fewer)."""
    return list(range(n)) if n <= count else [i * n // count for i in range(count)]


def _open(data_or_path) -> Image.Image:
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(src) as im:
        im.load()
        return im.copy()


def read_reference(root: str | Path, views: int, split: str = "val") -> list[RefObject]:
    """Reference objects of a render directory (docs/design.md §2.1) or a shard directory (§2.3; the ``split``
    shards, or every shard when there are none of that split), ``views`` evenly spaced views each, sorted by
    key. Raises UserError when the directory holds neither."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"reference {root} does not exist; pass an `mvdata render` or `mvdata shard` directory"
        )
    tars = sorted(root.glob("*.tar"))
    if tars:
        chosen = [t for t in tars if t.name.startswith(f"{split}-")] or tars
        out = []
        for tar in chosen:
            for s in shard_format.read_shard(str(tar)):
                exts = shard_format.view_exts(s)
                caption = s.get(shard_format.TXT_EXT, b"").decode("utf-8", "replace").strip()
                picked = [exts[i] for i in evenly_spaced(len(exts), views)]
                try:
                    images = [_open(s[e]) for e in picked]
                except OSError as e:  # PIL's UnidentifiedImageError and a damaged PNG's decode error
                    raise UserError(
                        f"shard {tar}: a view of {s['__key__']} does not decode ({e}); run "
                        f"`mvdata verify {root}`, delete it and rerun `mvdata shard` with the same --out"
                    ) from None
                out.append(RefObject(s["__key__"], caption, images))
        return sorted(out, key=lambda o: o.key)
    out = []
    for obj in layout.iter_objects(root):
        idx = evenly_spaced(obj.num_views, views)
        out.append(RefObject(obj.uid, obj.caption.strip(), [_open(obj.view_path(i)) for i in idx]))
    if not out:
        raise UserError(
            f"reference {root} holds no finished renders and no shards; pass an `mvdata render` output "
            "or an `mvdata shard` directory"
        )
    return out


def prepare(image: Image.Image, background: tuple[int, int, int], size: int) -> Image.Image:
    """The one preparation of every scored image, generated or reference: RGBA composited (straight alpha) on
    ``background``, RGB, resized to ``size`` x ``size`` with PIL bicubic when it differs."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (*background, 255))
        image = Image.alpha_composite(bg, rgba)
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


def _open_run(out: Path, cfg: EvalConfig, model_label: str) -> None:
    """A resumed OUT must have been made with the same model and sampling settings, else its finished prompts
    would be mixed with new ones (``rundir.RunDir.open``; the scoring settings re-score every run); then
    (re)write config.toml."""
    kept = any(
        out.glob(f"{result_format.GENERATED}/*/{sample_format.META}")
    )  # finished prompts, of this prompt list or another
    doc = {"model": model_label, **config_mod.to_dict(cfg)}
    rundir.RunDir.open(out, doc, "mvtrain eval", compare_only=("model", "sample"), kept=kept)


def generate(
    pipe, prompts: list[str], out: Path, cfg: EvalConfig, model_label: str, progress=None
) -> list[float]:
    """Sample every prompt that has no finished directory (``sample.json``), one ``pipe`` call per prompt;
    returns the seconds of each call made. ``pipe``: an ``MVDreamPipeline`` (or a callable with its signature)."""

    s = cfg.sample
    seconds = []
    for i, prompt in enumerate(prompts):
        d = result_format.prompt_dir(out, i, prompt)
        if (d / sample_format.META).is_file():
            if progress is not None:
                progress.advance("resumed")
            continue
        t0 = time.perf_counter()
        images = generate_views(pipe, prompt, s, s.seed + i)
        seconds.append(time.perf_counter() - t0)
        meta = {"model": model_label, "prompt": prompt, "text": prompt + s.prompt_suffix, "seed": s.seed + i}
        save_views(images, d, meta, s)
        if progress is not None:
            progress.advance()
    return seconds


def read_generated(out: Path, prompts: list[str], views: int) -> list[list[Image.Image]]:
    """The saved views of each prompt, in prompt order."""
    result = []
    for i, p in enumerate(prompts):
        d = result_format.prompt_dir(out, i, p)
        result.append([_open(d / sample_format.view_name(v)) for v in range(views)])
    return result


def grid(rows: list[list[Image.Image]], side: int = 128) -> Image.Image:
    """Rows of images (one object per row) as one RGB image of ``side``-px cells."""
    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (cols * side, len(rows) * side), (255, 255, 255))
    for y, row in enumerate(rows):
        for x, im in enumerate(row):
            sheet.paste(im.resize((side, side), Image.Resampling.BICUBIC), (x * side, y * side))
    return sheet


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def score_set(views: list[list[Image.Image]], texts: list[str], features, clip, cfg: EvalConfig) -> dict:
    """Features, logits and CLIP numbers of one set (P objects x V prepared views, each object's text; "" =
    no text: that object gets no CLIP score). Returns arrays and per-object scores for :func:`summarise`."""
    flat = [im for row in views for im in row]
    feats, logits = features(flat)
    emb = clip.images(flat)
    v = len(views[0])
    with_text = [i for i, t in enumerate(texts) if t]
    per_image = np.full(len(flat), np.nan)
    if with_text:
        temb = clip.texts([texts[i] for i in with_text])
        for j, i in enumerate(with_text):
            rows = slice(i * v, (i + 1) * v)
            per_image[rows] = metrics.clip_scores(emb[rows], np.repeat(temb[j : j + 1], v, axis=0))
    uniform = all(len(r) == v for r in views)
    consistency = adjacent_view_similarity(emb.reshape(len(views), v, -1)) if uniform else None
    return {"features": feats, "logits": logits, "clip": per_image, "views": v, "consistency": consistency}


def _clip_block(per_image: np.ndarray, views: int) -> dict:
    ok = per_image[np.isfinite(per_image)]
    per_prompt = per_image.reshape(-1, views).mean(axis=1)
    per_prompt = per_prompt[np.isfinite(per_prompt)]
    return {
        "over_images": metrics.mean_std(ok).to_dict(),
        "over_prompts": metrics.mean_std(per_prompt).to_dict(),
    }


def summarise(gen: dict, ref: dict | None, cfg: EvalConfig) -> dict:
    """The metrics of eval.json from :func:`score_set` results (generated, reference)."""
    out = {
        "generated": {
            "images": int(gen["features"].shape[0]),
            "inception_score": metrics.inception_score(gen["logits"], cfg.is_splits).to_dict(),
            "clip_score": _clip_block(gen["clip"], gen["views"]),
            "consistency": metrics.mean_std(gen["consistency"]).to_dict(),
        }
    }
    if ref is not None:
        kid, size = metrics.kid(gen["features"], ref["features"], cfg.kid_subset_size, cfg.kid_subsets)
        out["generated"]["fid"] = metrics.fid(gen["features"], ref["features"])
        out["generated"]["kid"] = {**kid.to_dict(), "subset_size": size}
        out["reference"] = {
            "images": int(ref["features"].shape[0]),
            "inception_score": metrics.inception_score(ref["logits"], cfg.is_splits).to_dict(),
            "clip_score": _clip_block(ref["clip"], ref["views"]),
            "consistency": (
                metrics.mean_std(ref["consistency"]).to_dict() if ref["consistency"] is not None else None
            ),
        }
    return out


@rundir.locked("mvtrain eval", lambda out, **_: out)
def run_eval(
    pipe,
    model_label: str,
    reference: str | Path,
    out: str | Path,
    cfg: EvalConfig,
    features,
    clip,
    prompts: list[str] | None = None,
    show_progress: bool = False,
) -> dict:
    """Generate the missing prompts with ``pipe``, score everything, write OUT (module docstring); returns the
    eval.json document. ``prompts`` None: the reference objects' captions (paired with them, as Table 1 used
    held-out objects' captions). ``features`` / ``clip``: an ``ImageFeatures`` and a ``ClipEmbedder``."""
    out = Path(out)
    v = cfg.sample.num_views
    refs = read_reference(reference, v, cfg.reference_split)
    source = "prompts file" if prompts is not None else "reference captions"
    if prompts is None:
        prompts = [r.caption for r in refs if r.caption]
        if not prompts:
            raise UserError(f"no reference object in {reference} has a caption; pass --prompts FILE")
    if cfg.max_prompts:
        prompts = prompts[: cfg.max_prompts]
    _open_run(out, cfg, model_label)

    progress = None
    if show_progress:
        from mvforge.progress import StageProgress

        progress = StageProgress("mvtrain eval: generate", len(prompts), unit="prompts").__enter__()
    try:
        gen_seconds = generate(pipe, prompts, out, cfg, model_label, progress)
    finally:
        if progress is not None:
            progress.__exit__(None, None, None)

    t0 = time.perf_counter()
    bg, size = tuple(cfg.background_rgb), cfg.image_size
    gen_views = [[prepare(im, bg, size) for im in row] for row in read_generated(out, prompts, v)]
    ref_views = [[prepare(im, bg, size) for im in r.views] for r in refs]
    gen = score_set(gen_views, prompts, features, clip, cfg)
    ref = score_set(ref_views, [r.caption for r in refs], features, clip, cfg)
    doc = {
        "model": model_label,
        "reference": str(reference),
        "prompts": {"count": len(prompts), "source": source},
        "views_per_prompt": v,
        "preparation": {"background_rgb": list(bg), "image_size": size, "resize": RESIZE},
        "extractors": {"features": features.name, "clip": clip.name},
        # CLIP score text: the prompt as written (MVDream scores against the caption, not the ", 3d asset" text).
        "clip_text": "prompt without sample.prompt_suffix; reference: its caption",
        "metrics": summarise(gen, ref, cfg),
        "config": config_mod.to_dict(cfg),
    }
    score_seconds = time.perf_counter() - t0
    doc = _finite(doc)
    atomic_write_json(out / result_format.EVAL, doc)
    write_csv(out / result_format.EVAL_CSV, prompts, gen, v)
    k = cfg.grid_prompts
    atomic_write_bytes(out / result_format.GRID_GENERATED, _png(grid(gen_views[:k])))
    atomic_write_bytes(out / result_format.GRID_REFERENCE, _png(grid(ref_views[:k])))
    atomic_write_json(
        out / result_format.TIMING,
        {
            "prompts_generated": len(gen_seconds),
            "generation_s_per_prompt": float(np.mean(gen_seconds)) if gen_seconds else None,
            "scoring_s": score_seconds,
            "scoring_s_per_prompt": score_seconds / len(prompts),
        },
    )
    return doc


def _finite(x):
    """NaN (a statistic with nothing to average) as null: eval.json stays strict JSON."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def write_csv(path: Path, prompts: list[str], gen: dict, views: int) -> None:
    per_image = gen["clip"].reshape(-1, views)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "prompt", "clip_score_mean", "clip_score_std", "consistency"])
    for i, p in enumerate(prompts):
        cons = gen["consistency"][i] if gen["consistency"] is not None else float("nan")
        w.writerow([i, p, f"{per_image[i].mean():.4f}", f"{per_image[i].std():.4f}", f"{cons:.4f}"])
    atomic_write_text(path, buf.getvalue())


def load_eval(out: str | Path) -> dict:
    return json.loads((Path(out) / result_format.EVAL).read_text(encoding="utf-8"))
