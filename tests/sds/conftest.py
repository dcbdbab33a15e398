"""Fixtures of the SDS tests: a tiny random multi-view pipeline (offline) and a tiny SDS config."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvforge.sds.config import (
    CameraConfig,
    ExportConfig,
    FieldConfig,
    MaterialConfig,
    RendererConfig,
    SDSConfig,
)


@pytest.fixture(scope="session")
def tiny_mv(tmp_path_factory) -> Path:
    from mvforge.models.tiny import make_tiny_mv_pipeline

    return make_tiny_mv_pipeline(tmp_path_factory.mktemp("mv") / "tiny-mv", seed=0)


def tiny_sds_config(model: Path, out: Path, **changes) -> SDSConfig:
    """A few-second SDS run: 4-level grid, 16 px renders (resized to the tiny model's 32 px), 16 samples."""
    base = SDSConfig(
        prompt="a red ceramic mug",
        model=str(model),
        out=str(out),
        max_steps=4,
        checkpoint_every=2,
        snapshot_every=2,
        log_every=1,
        device="cpu",
        field=FieldConfig(n_levels=4, log2_hashmap_size=12, max_resolution=64, mlp_hidden=16),
        renderer=RendererConfig(samples_per_ray=16, occupancy_resolution=8, occupancy_update_every=2),
        material=MaterialConfig(ambient_only_steps=2),
        camera=CameraConfig(groups_low_res=1, resolution_low=16, resolution_high=24, resolution_milestone=3),
        export_mesh=ExportConfig(
            mc_resolution=24, iso_level=5.0, turntable_frames=4, turntable_resolution=16, turntable_fps=4
        ),
    )
    import dataclasses

    return dataclasses.replace(base, **changes)
