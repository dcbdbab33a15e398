"""The result directory of `mvtrain sds` (docs/design.md §2.6): what the SDS loop and its exporter write and
`mvtrain sds --prompts`, `mvtrain eval --sds` and the report read. Pure Python.

```
<out>/<prompt-slug>/config.toml                 the resolved SDSConfig (written first; rundir.CONFIG)
<out>/<prompt-slug>/checkpoints/step-NNNNNN.pt  field, background, occupancy grid, optimiser, step
<out>/<prompt-slug>/metrics.csv, tensorboard/   one row / scalars per logged step (mvforge.metrics)
<out>/<prompt-slug>/snapshots/step-NNNNNN.png   the 4 orbit views (azimuths 0/90/180/270) side by side, albedo
<out>/<prompt-slug>/mesh.glb, mesh.obj          marching cubes of the final field, vertex colours
<out>/<prompt-slug>/mesh.mtl, material_*.png    with export_mesh.uv_texture: the OBJ's material and baked texture
<out>/<prompt-slug>/turntable.gif, .mp4         albedo-lit orbit of the final field (.mp4 with export_mesh.mp4)
<out>/<prompt-slug>/preview.png                 `mvtrain sds --preview`: 4 sampled views, no optimisation
<out>/<prompt-slug>/summary.json                written LAST (rundir.DONE): prompt, steps, seconds, peak memory,
                                                backend, device, model, weights, outputs {file name: file name}
```
"""

from __future__ import annotations

from pathlib import Path

from mvforge.formats.samples import prompt_slug
from mvforge.rundir import CONFIG, DONE  # noqa: F401  (every model-wing run's names)

SUMMARY = DONE
CKPT_SUFFIX = ".pt"
"""Checkpoints are single files ``checkpoints/step-NNNNNN.pt`` (``rundir.RunDir(dir, CKPT_SUFFIX)``)."""
SNAPSHOTS = "snapshots"
MESH_GLB = "mesh.glb"
MESH_OBJ = "mesh.obj"
MESH_MTL = "mesh.mtl"
"""The OBJ's material library; written only with a baked UV texture."""
TEXTURE_GLOB = "material_*.png"
"""The baked texture trimesh writes beside the OBJ (its name is trimesh's: ``material_0.png``)."""
TURNTABLE_GIF = "turntable.gif"
TURNTABLE_MP4 = "turntable.mp4"
PREVIEW = "preview.png"


def result_dir(out: str | Path, prompt: str) -> Path:
    """``<out>/<prompt_slug(prompt)>``: the run directory of ``prompt`` (UserError for a prompt that cannot name
    one)."""
    return Path(out) / prompt_slug(prompt)


def snapshot_path(result: str | Path, step: int) -> Path:
    """``snapshots/step-NNNNNN.png`` after ``step`` optimisation steps."""
    return Path(result) / SNAPSHOTS / f"step-{step:06d}.png"


def snapshot_step(path: Path) -> int:
    """The step a snapshot file's name holds."""
    return int(path.stem.split("-")[-1])


def snapshots(result: str | Path) -> list[Path]:
    """The snapshot files of a result, oldest first (names sort by step)."""
    return sorted((Path(result) / SNAPSHOTS).glob("step-*.png"))
