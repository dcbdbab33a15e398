"""Benchmark: `mvtrain eval` seconds per prompt, split into generation and scoring (docs/eval.md).

On the demo model (the tiny random multi-view pipeline of ``mvtrain make-tiny-sd --multiview``), a synthetic
reference render directory, the tiny open_clip model loaded from disk and the tiny feature extractor, with the
settings of ``make demo``'s eval step (4 views, 4 DDIM steps, 64 px). Generation is timed per pipeline call; scoring
(reading, preparing, features, CLIP, metrics, writing) once for all prompts.

    .venv/bin/python bench/bench_eval.py [--prompts 4] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fixtures (the repository root; bench runs as python bench/x.py)

from mvforge.eval import extractors, run  # noqa: E402
from mvforge.eval.config import EvalConfig  # noqa: E402
from mvforge.filter.tiny import write_tiny_clip  # noqa: E402
from mvforge.models.config import SampleConfig  # noqa: E402
from mvforge.models.pipeline import MultiViewDiffusion  # noqa: E402
from mvforge.models.tiny import make_tiny_mv_pipeline  # noqa: E402
from tests.fixtures.synthetic import write_synthetic_render_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pipe = MultiViewDiffusion.from_pretrained(make_tiny_mv_pipeline(tmp / "mv"), "cpu").pipeline("ddim")
        pipe.set_progress_bar_config(disable=True)
        clip = extractors.OpenClip("unused", f"local-dir:{write_tiny_clip(tmp / 'clip')}")
        write_synthetic_render_dir(tmp / "ref", args.prompts, views=8, resolution=128)
        cfg = EvalConfig(
            sample=SampleConfig(steps=args.steps, resolution=args.resolution),
            image_size=args.resolution,
            features="tiny",
        )
        run.run_eval(pipe, "tiny", tmp / "ref", tmp / "out", cfg, extractors.TinyFeatures(), clip)
        t = json.loads((tmp / "out" / "timing.json").read_text())
    print(
        f"eval, {args.prompts} prompts x 4 views, {args.steps} DDIM steps, {args.resolution} px, CPU: "
        f"generation {t['generation_s_per_prompt']:.2f} s/prompt, scoring {t['scoring_s_per_prompt']:.2f} s/prompt"
    )


if __name__ == "__main__":
    main()
