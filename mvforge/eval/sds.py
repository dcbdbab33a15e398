"""CLIP score of `mvtrain sds` results against their prompts (issue 15, ``mvtrain eval --sds DIR``).

A result directory holds ``summary.json`` (with ``prompt``), ``turntable.gif`` (a full orbit) and/or
``snapshots/*.png``. The scored views are ``views`` frames evenly spaced over the turntable (then the
consistency figure applies: its frames are ring-ordered), else the snapshots in name order (no consistency:
snapshots need not be views of one orbit).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from mvforge.errors import UserError
from mvforge.eval import metrics
from mvforge.eval.consistency import adjacent_view_similarity

SUMMARY = "summary.json"


def find_results(root: str | Path) -> list[Path]:
    """``root`` when it is one SDS result directory (summary.json), else its result subdirectories, sorted."""
    root = Path(root)
    if (root / SUMMARY).is_file():
        return [root]
    found = sorted(p.parent for p in root.glob(f"*/{SUMMARY}")) if root.is_dir() else []
    if not found:
        raise UserError(f"--sds {root}: no summary.json here or one level below; pass `mvtrain sds` output")
    return found


def result_views(result: Path, views: int) -> tuple[list[Image.Image], bool]:
    """(PIL views, whether they are turntable frames) of one result; UserError when it has neither kind."""
    gif = result / "turntable.gif"
    if gif.is_file():
        with Image.open(gif) as im:
            frames = [f.convert("RGBA") for f in ImageSequence.Iterator(im)]
        n = len(frames)
        idx = list(range(n)) if n <= views else [i * n // views for i in range(views)]
        return [frames[i] for i in idx], True
    snaps = sorted((result / "snapshots").glob("*.png"))
    if not snaps:
        raise UserError(f"{result} has no turntable.gif and no snapshots/*.png; let `mvtrain sds` finish")
    out = []
    for p in snaps:
        with Image.open(p) as im:
            out.append(im.convert("RGBA"))
    return out, False


def score_sds(roots: list[str | Path], clip, prepare, views: int = 8) -> list[dict]:
    """One row per SDS result: dir, prompt, source (turntable/snapshots), views, CLIP score mean ± std over
    the views (100 · cos clipped at 0) and the consistency figure (turntable only, else None). ``prepare``:
    the image preparation shared with the main eval (background, resize)."""
    rows = []
    for root in roots:
        for result in find_results(root):
            summary = json.loads((result / SUMMARY).read_text(encoding="utf-8"))
            prompt = str(summary.get("prompt", "")).strip()
            if not prompt:
                raise UserError(f"{result / SUMMARY} has no prompt; pass `mvtrain sds` output")
            images, turntable = result_views(result, views)
            images = [prepare(im) for im in images]
            emb = clip.images(images)
            text = np.repeat(clip.texts([prompt]), len(images), axis=0)
            scores = metrics.mean_std(metrics.clip_scores(emb, text))
            cons = float(adjacent_view_similarity(emb[None])[0]) if turntable and len(images) > 1 else None
            rows.append(
                {
                    "dir": str(result),
                    "prompt": prompt,
                    "source": "turntable" if turntable else "snapshots",
                    "views": len(images),
                    "clip_score": scores.to_dict(),
                    "consistency": cons,
                }
            )
    return rows
