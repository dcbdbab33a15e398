"""Single rendered views as 2D image-text shards (`mvdata shard --views-2d`), read back by the loader's 2D
branch as any img2dataset shard."""

from __future__ import annotations

import subprocess
import tarfile

import pytest

from mvforge.errors import UserError
from mvforge.shards.config import LoaderConfig
from mvforge.shards.loader import MultiViewLoader
from mvforge.shards.views2d import train_uids, write_view_shards


def test_every_view_but_the_held_out_ones_becomes_one_pair(renders, shards, tmp_path):
    uids = train_uids(shards)
    assert len(uids) == 8
    paths = write_view_shards(renders, tmp_path / "2d", uids, exclude_views=frozenset({0, 4}), max_count=20)
    names = []
    for p in paths:
        with tarfile.open(p) as tar:
            names += tar.getnames()
    keys = sorted({n.split(".")[0] for n in names})
    assert len(paths) == 3 and len(keys) == 8 * 6  # 48 pairs over tars of 20
    assert not any(k.endswith(("_000", "_004")) for k in keys)
    again = write_view_shards(renders, tmp_path / "2d", uids, exclude_views=frozenset({0, 4}), max_count=20)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]  # deterministic

    loader = MultiViewLoader(
        str(shards),
        LoaderConfig(batch_size=2, resolution=32, p_3d=0.0, batches_per_epoch=3),
        shards_2d=[str(p) for p in paths],
    )
    batch = next(iter(loader))
    assert batch["kind"] == "2d" and batch["images"].shape[1:] == (1, 3, 32, 32)
    assert all(c.startswith("synthetic object number") for c in batch["captions"])


def test_no_view_left_is_a_one_line_error(renders, tmp_path):
    with pytest.raises(UserError, match="no view"):
        write_view_shards(renders, tmp_path / "2d", ["obj-0000"], exclude_views=frozenset(range(8)))


def test_the_cli_writes_them_beside_the_shards(renders, mvdata_bin, tmp_path):
    out = subprocess.run(
        [
            mvdata_bin,
            "shard",
            str(renders),
            "--out",
            str(tmp_path / "s"),
            "--val-fraction",
            "0",
            "--workers",
            "0",
            "--views-2d",
            str(tmp_path / "s2d"),
            "--exclude",
            "obj-0001",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "2d-000000.tar" in out.stdout and (tmp_path / "s2d" / "2d-000000.tar").is_file()
    # --exclude: the held-out subject (MVDreamBooth) is in neither the 3D nor the 2D shards.
    assert "obj-0001" not in train_uids(tmp_path / "s") and "obj-0000" in train_uids(tmp_path / "s")
    with tarfile.open(tmp_path / "s2d" / "2d-000000.tar") as tar:
        assert not any(n.startswith("obj-0001") for n in tar.getnames())
    # Another shard run may not overwrite these 2D views with another object set (a held-out subject would leak).
    other = subprocess.run(
        [mvdata_bin, "shard", str(renders), "--out", str(tmp_path / "s4"), "--workers", "0"]
        + ["--val-fraction", "0", "--views-2d", str(tmp_path / "s2d")],
        capture_output=True,
        text=True,
    )
    assert other.returncode == 2 and "other uids" in other.stderr and "--views-2d" in other.stderr
    with tarfile.open(tmp_path / "s2d" / "2d-000000.tar") as tar:
        assert not any(n.startswith("obj-0001") for n in tar.getnames())
    bad = subprocess.run(
        [
            mvdata_bin,
            "shard",
            str(renders),
            "--out",
            str(tmp_path / "s3"),
            "--exclude",
            "obj-9",
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--exclude obj-9" in bad.stderr
