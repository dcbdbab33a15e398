"""What can the SDS field hold at all? Fit it to the true renders, no prior, and score it as SDS is scored.

A diagnostic for the demo world's SDS (docs/demo.md, "SDS"): the field, renderer and mesh export of `mvtrain sds`
(`configs/sds-world-cpu.toml`'s sizes) are fitted by photometric L2, albedo only, to an object's 32 ground-truth
renders at their true cameras, composited on the world's grey. The object's half-size in field units is
``--half-size`` (the renders' unit-extent object scaled by 2 x half-size). The mesh is then exported and scored
exactly as `make demo` scores SDS meshes: rendered back under the object's uid with the demo's render settings,
then `mvtrain eval --known-answer`'s scoring. The IoU is the ceiling any prior can reach with these settings.

    .venv/bin/python bench/sds_field_ceiling.py --world WORLD --uid demo-chair --half-size 0.7 --out /tmp/ceiling

WORLD: a `make demo` output (its renders/). Prints IoU, the nearest other object's IoU, and the retrieval.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from renderback import render_and_score  # bench/renderback.py, beside this script

from mvforge import cameras as camlib
from mvforge import config as config_mod
from mvforge.eval.known_answer import KnownAnswerConfig
from mvforge.sds.cameras import CameraBatch
from mvforge.sds.config import SDSConfig
from mvforge.sds.export import extract_mesh, write_mesh
from mvforge.sds.loop import build_state
from mvforge.sds.material import ALBEDO

ROOT = Path(__file__).resolve().parents[1]
GREY = KnownAnswerConfig().background  # the world's grey, 128/255 (configs/world-fit.toml: background_rgb)


def true_views(object_dir: Path, half_size: float) -> tuple[CameraBatch, torch.Tensor]:
    """The object's cameras in field units and its renders (V, H, W, 3) in [0, 1] on grey."""
    views = json.loads((object_dir / "cameras.json").read_text())["views"]
    c2w = np.array([v["c2w"] for v in views], dtype=np.float32)
    c2w[:, :3, 3] *= 2.0 * half_size  # the renders' object has unit extent: half-size 0.5
    cams = CameraBatch(
        c2w=torch.from_numpy(c2w),
        fov_deg=torch.tensor([v["fov_deg"] for v in views], dtype=torch.float32),
        elevation_deg=torch.tensor([v["elevation_deg"] for v in views], dtype=torch.float32),
        azimuth_deg=torch.tensor([v["azimuth_deg"] for v in views], dtype=torch.float32),
        distance=torch.tensor([v["distance"] * 2.0 * half_size for v in views], dtype=torch.float32),
        light_position=torch.from_numpy(c2w[:, :3, 3].copy()),
        embedding=torch.from_numpy(camlib.normalize_camera(c2w)),
        n_view=4,
    )
    rgba = np.stack([np.asarray(Image.open(object_dir / v["file"]).convert("RGBA")) for v in views])
    rgba = rgba.astype(np.float32) / 255.0
    rgb = rgba[..., :3] * rgba[..., 3:] + GREY * (1.0 - rgba[..., 3:])
    return cams, torch.from_numpy(rgb)


def fit_field(cfg: SDSConfig, cams: CameraBatch, target: torch.Tensor, steps: int, seed: int = 0):
    """The SDS state after ``steps`` Adam steps of photometric L2 on 4 random true views per step."""
    torch.manual_seed(seed)
    state = build_state(cfg, torch.device("cpu"))
    rng = np.random.default_rng(seed)
    bg = torch.full((3,), GREY)
    for step in range(steps):
        state.renderer.update_occupancy(step, torch.Generator().manual_seed(2 * (seed * 100003 + step)))
        idx = torch.from_numpy(rng.choice(len(target), 4, replace=False))
        sub = CameraBatch(**{k: v[idx] if torch.is_tensor(v) else v for k, v in cams.__dict__.items()})
        # Samples jittered inside their bins, as the SDS loop renders (at fixed bin centres a field can hide
        # density between the samples)
        jitter = torch.Generator().manual_seed(2 * (seed * 100003 + step) + 1)
        out = state.renderer.render(sub, target.shape[1], ALBEDO, bg_color=bg, generator=jitter)
        loss = torch.nn.functional.mse_loss(out.rgb, target[idx])
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
    return state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--world", type=Path, required=True, help="a `make demo` output (renders/)")
    ap.add_argument("--uid", default="demo-chair")
    ap.add_argument("--half-size", type=float, default=0.7, help="the object's half-size in field units")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "sds-world-cpu.toml")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    found = sorted(args.world.glob(f"renders/*/{args.uid}/meta.json"))
    if not found:
        sys.exit(f"error: no renders of {args.uid} under {args.world}/renders; run `make demo` first")
    cfg = config_mod.load(SDSConfig, args.config)
    cams, target = true_views(found[0].parent, args.half_size)
    state = fit_field(cfg, cams, target, args.steps)
    mesh_dir = args.out / args.uid
    mesh_dir.mkdir(parents=True, exist_ok=True)
    field = state.field
    glb, _ = write_mesh(extract_mesh(field.density, field.albedo, field.radius, cfg.export_mesh), mesh_dir)
    entry = {"uid": args.uid, "path": str(glb.resolve()), "caption": "the field fitted to its renders"}
    r = render_and_score([entry], args.out, args.world)[args.uid]
    print(
        f"{args.uid}, half-size {args.half_size}, {args.steps} steps: IoU {r['iou']:.2f} "
        f"(nearest other object {r['iou_others']:.2f}), retrieves {r['retrieved']}"
    )


if __name__ == "__main__":
    main()
