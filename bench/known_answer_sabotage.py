"""Does the known-answer evaluation catch a broken camera convention or CFG? (docs/demo.md)

Each sabotage breaks one stage the way a real bug would, in the sampler that `mvtrain eval --known-answer` runs,
while the trained model keeps the convention it learned, and the evaluation is run again:

- ``azimuth_flipped``: the sampler's cameras mirrored (azimuth a read as -a), as a stage with the other azimuth
  direction would pass them;
- ``c2w_transposed``: the 4x4 camera matrix transposed before the embedding (w2c rotation, translation in the
  bottom row), the c2w/w2c mix-up;
- ``camera_zeroed``: the camera embedding's input all zeros (a model that never receives its camera);
- ``cfg_swapped``: the conditional and unconditional CFG branches exchanged.

The mesh's up axis is a property of the SDS export: bench/mesh_up_sabotage.py breaks it (docs/demo.md).

    .venv/bin/python bench/known_answer_sabotage.py --model RUN --reference RENDERS --out /tmp/sabotage

Prints one markdown row per case: captions retrieving their own object, shifted cameras further, and the objects
whose samples were further at no shift (a mirrored azimuth shows only on objects without a mirror symmetry).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np

from mvforge.eval import known_answer as ka

FLIP_Y = np.diag([1.0, -1.0, 1.0, 1.0])


@contextlib.contextmanager
def sabotage(name: str, model):
    """Patch the sampler for one case; restores everything on exit."""
    real_normalize, real_predict = ka.normalize_camera, model.predict_noise
    if name == "azimuth_flipped":
        ka.normalize_camera = lambda c2w: real_normalize(FLIP_Y @ c2w @ FLIP_Y)
    elif name == "c2w_transposed":
        ka.normalize_camera = lambda c2w: real_normalize(np.ascontiguousarray(np.swapaxes(c2w, -1, -2)))
    elif name == "camera_zeroed":
        ka.normalize_camera = lambda c2w: np.zeros_like(real_normalize(c2w))
    elif name == "cfg_swapped":

        def swapped(latents, t, cond, uncond=None, *args, **kwargs):
            return real_predict(latents, t, uncond, cond, *args, **kwargs)

        model.predict_noise = swapped
    elif name != "none":
        raise ValueError(name)
    try:
        yield
    finally:
        ka.normalize_camera = real_normalize
        model.predict_noise = real_predict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--model", required=True, help="`mvtrain fit` run or pipeline directory")
    ap.add_argument("--reference", required=True, type=Path, help="the render directory it was trained on")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--uids", nargs="*", default=None, help="captions to sample (default: all)")
    ap.add_argument(
        "--cases",
        nargs="*",
        default=["none", "azimuth_flipped", "c2w_transposed", "camera_zeroed", "cfg_swapped"],
    )
    args = ap.parse_args()

    from mvforge.models.pipeline import MultiViewDiffusion

    model = MultiViewDiffusion.from_pretrained(args.model, "cpu")
    cfg = ka.KnownAnswerConfig()
    print(
        "| case | captions retrieving their own object | shifted cameras further | objects with no shift further "
        "| mean IoU | mean object PSNR |"
    )
    print("|---|---|---|---|---|---|")
    for case in args.cases:
        with sabotage(case, model):
            doc = ka.run_known_answer(
                model, args.model, args.reference, args.out / case, cfg, args.uids, show_progress=False
            )
        s = doc["summary"]
        unturned = [
            r["uid"]
            for r in doc["captions"]
            if not any(ka.shift_is_further(v, len(r["views"])) for v in r["shifted"].values())
        ]
        print(
            f"| {case} | {s['retrieved_own']}/{s['captions']} | {s['shifted_cameras_further']} "
            f"| {', '.join(unturned) or '-'} | {s['mean_iou']:.2f} | {s['mean_psnr_object_db']:.1f} dB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
