"""The result directory of `mvtrain sds` (docs/design.md §2.6): what the SDS loop and its exporter write and
`mvtrain sds --prompts`, `mvtrain eval --sds` and the report read. Pure Python.

One `--prompt` writes its run directory ``<run>`` into ``--out`` itself (docs/cli.md, "output"); a `--prompts`
batch's ``--out`` holds one run directory per prompt, ``<out>/<prompt-slug>/`` (``<out>/seed-S/<prompt-slug>/``
with several seeds; :func:`batch_run_dir`), the names `mvtrain sample --prompts` gives its prompts.

```
<run>/config.toml                 the resolved SDSConfig (written first; rundir.CONFIG)
<run>/checkpoints/step-NNNNNN.pt  field, background, occupancy grid, optimiser, step
<run>/metrics.csv, tensorboard/   one row / scalars per logged step (mvforge.metrics)
<run>/snapshots/step-NNNNNN.png   the 4 orbit views (azimuths 0/90/180/270) side by side, albedo
<run>/mesh.glb, mesh.obj          marching cubes of the final field, vertex colours
<run>/mesh.mtl, material_*.png    with export_mesh.uv_texture: the OBJ's material and baked texture
<run>/turntable.gif, .mp4         albedo-lit orbit of the final field (.mp4 with export_mesh.mp4)
<run>/preview.png                 `mvtrain sds --preview`: 4 sampled views, no optimisation
<run>/summary.json                written LAST (rundir.DONE): prompt, steps, seconds, peak memory,
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


def batch_run_dir(out: str | Path, prompt: str, seed: int | None = None) -> Path:
    """The run directory of ``prompt`` in the `--prompts` batch directory ``out``: ``<out>/<prompt-slug>/``, or
    ``<out>/seed-S/<prompt-slug>/`` when ``seed`` is given (a batch of several seeds). UserError for a prompt
    that cannot name one."""
    parent = Path(out) if seed is None else Path(out) / f"seed-{seed}"
    return parent / prompt_slug(prompt)


def find_results(root: str | Path, levels: int = 2, marker: str = SUMMARY) -> list[Path]:
    """The finished run directories (summary.json) at or under ``root``, sorted: ``root`` itself when it is one
    run, else those up to ``levels`` directories below it, so a parent of single runs (``sds/<name>/``), a
    `--prompts` batch (``<slug>/``) and a batch of several seeds (``seed-S/<slug>/``) are all found. A run's own
    subdirectories are not searched. ``marker`` CONFIG finds runs begun, finished or not."""
    root = Path(root)
    if (root / marker).is_file():
        return [root]
    if levels < 1 or not root.is_dir():
        return []
    found: list[Path] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        found.extend(find_results(child, levels - 1, marker))
    return sorted(found)


def snapshot_path(result: str | Path, step: int) -> Path:
    """``snapshots/step-NNNNNN.png`` after ``step`` optimisation steps."""
    return Path(result) / SNAPSHOTS / f"step-{step:06d}.png"


def snapshot_step(path: Path) -> int:
    """The step a snapshot file's name holds."""
    return int(path.stem.split("-")[-1])


def snapshots(result: str | Path) -> list[Path]:
    """The snapshot files of a result, oldest first (names sort by step)."""
    return sorted((Path(result) / SNAPSHOTS).glob("step-*.png"))
