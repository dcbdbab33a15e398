"""CLIP score of `mvtrain sds` results against their prompts (``mvtrain eval --sds DIR``).

A result directory holds ``summary.json`` (with ``prompt``, written last), ``turntable.gif`` (a full orbit)
and ``snapshots/step-NNNNNN.png`` (each the V orbit views at azimuths 0/90/180/270 side by side, as
``mvtrain sds`` writes them, docs/design.md §2.6). The scored views are ``views`` frames evenly spaced over
the turntable, else the square tiles of the latest snapshot; both are ring-ordered, so the consistency figure
applies. The names are mvforge/formats/sds_result.py's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from mvforge.errors import UserError
from mvforge.eval import metrics
from mvforge.eval.consistency import adjacent_view_similarity
from mvforge.formats import sds_result as result_format
from mvforge.formats.sds_result import SUMMARY


def find_results(root: str | Path) -> list[Path]:
    """``root`` when it is one SDS run directory (summary.json), else the runs under it: a `--prompts` batch's
    ``<slug>/`` (``seed-S/<slug>/`` with several seeds) or a parent of runs (``result_format.find_results``)."""
    root = Path(root)
    found = result_format.find_results(root)
    if not found:
        raise UserError(
            f"--sds {root}: no summary.json here or up to two levels below; pass `mvtrain sds` output"
        )
    return found


def result_views(result: Path, views: int) -> tuple[list[Image.Image], bool]:
    """(PIL views, whether they are turntable frames) of one result; UserError when it has neither kind."""
    gif = result / result_format.TURNTABLE_GIF
    if gif.is_file():
        with Image.open(gif) as im:
            frames = [f.convert("RGBA") for f in ImageSequence.Iterator(im)]
        n = len(frames)
        idx = list(range(n)) if n <= views else [i * n // views for i in range(views)]
        return [frames[i] for i in idx], True
    snaps = result_format.snapshots(result)
    if not snaps:
        raise UserError(
            f"{result} has no {result_format.TURNTABLE_GIF} and no {result_format.SNAPSHOTS}/*.png; let "
            "`mvtrain sds` finish"
        )
    with Image.open(snaps[-1]) as im:  # step-NNNNNN sorts by step: the latest
        strip = im.convert("RGBA")
    h = strip.height
    return [strip.crop((x, 0, x + h, h)) for x in range(0, strip.width - h + 1, h)], False


def score_sds(roots: list[str | Path], clip, prepare, views: int = 8) -> list[dict]:
    """One row per SDS result: dir, prompt, source (turntable/snapshot), views, CLIP score mean ± std over
    the views (100 · cos clipped at 0) and the consistency figure (None with a single view). ``prepare``:
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
            cons = float(adjacent_view_similarity(emb[None])[0]) if len(images) > 1 else None
            rows.append(
                {
                    "dir": str(result),
                    "prompt": prompt,
                    "source": "turntable" if turntable else "snapshot",
                    "views": len(images),
                    "clip_score": scores.to_dict(),
                    "consistency": cons,
                }
            )
    return rows
