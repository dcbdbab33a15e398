"""Shards that can be published (docs/ecosystem.md §4): no machine-local data in a sample, the same bytes from
renders in any folder, and a dataset card that ``datasets.load_dataset(<shard dir>)`` reads."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np

from mvforge.formats import renders as layout
from mvforge.shards.config import ShardConfig
from mvforge.shards.verify import verify
from mvforge.shards.writer import run_shard
from tests.fixtures.synthetic import write_synthetic_render_dir

CFG = ShardConfig(max_count=3, val_fraction=0.4, workers=0)


def _renders_as_rendered_here(root: Path, pid: int) -> Path:
    """Synthetic renders whose meta.json carries what a real render records about its machine: the input's
    absolute path, size and mtime, the Blender process, CPU numbers and timings (runner._meta)."""
    write_synthetic_render_dir(root, 6, views=4, resolution=16)
    for uid in layout.iter_uids(root):
        path = layout.object_dir(root, uid) / layout.META
        meta = json.loads(path.read_text())
        meta["source"] = {
            "kind": "local", "ext": "glb", "path": str(root.parent / "inputs" / f"{uid}.glb"),
            "sha256": "ab" * 32, "size": 1234, "mtime_ns": 1_700_000_000_000_000_000 + pid,
        }  # fmt: skip
        meta["process"] = {"pid": pid, "position": 1, "reused": False, "cpus": [pid % 2]}
        meta["timings"] = {"render_s": pid / 1000}
        meta["peak_rss_mb"] = float(pid)
        path.write_text(json.dumps(meta))
    return root


def test_shards_of_the_same_renders_are_byte_identical_anywhere_and_hold_no_local_data(tmp_path):
    """Fails before: each sample's json held the source path, pid, CPUs and timings, so bytes differed."""
    a = _renders_as_rendered_here(tmp_path / "alice" / "renders", pid=111)
    b = _renders_as_rendered_here(tmp_path / "bob" / "deep" / "renders", pid=222)
    run_shard(a, str(tmp_path / "alice" / "shards"), CFG, show_progress=False)
    run_shard(b, str(tmp_path / "bob" / "out"), CFG, show_progress=False)
    names = sorted(p.name for p in (tmp_path / "alice" / "shards").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "bob" / "out").iterdir())
    assert "README.md" in names and sum(n.endswith(".tar") for n in names) >= 2
    for name in names:
        left = (tmp_path / "alice" / "shards" / name).read_bytes()
        assert str(tmp_path).encode() not in left and b"alice" not in left, name
        if not name.endswith(".stats.json"):  # build markers: they time the write
            assert left == (tmp_path / "bob" / "out" / name).read_bytes(), name
    with tarfile.open(tmp_path / "alice" / "shards" / "train-000000.tar") as tar:
        doc = json.loads(next(tar.extractfile(m) for m in tar if m.name.endswith(".json")).read())
    meta = doc["meta"]
    assert not {"timings", "process", "peak_rss_mb", "attempts", "device"} & set(meta)
    assert meta["source"] == {"kind": "local", "ext": "glb", "sha256": "ab" * 32, "file": f"{doc['uid']}.glb"}
    assert meta["seed"] is not None and meta["caption"].startswith("synthetic object")


def test_load_dataset_reads_the_shard_directory_and_verify_still_passes(tmp_path):
    """Fails before: load_dataset(dir) took train-000000.tar.stats.json for data (ReadError)."""
    import datasets

    renders = tmp_path / "renders"
    write_synthetic_render_dir(renders, 6, views=4, resolution=16)
    out = tmp_path / "shards"
    index = run_shard(renders, str(out), CFG, show_progress=False)
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {"train", "validation"}
    assert len(ds["train"]) == index["totals"]["train"]["samples"] > 0
    assert len(ds["validation"]) == index["totals"]["val"]["samples"] > 0
    for row in ds["train"]:
        obj = layout.load_object(renders, row["__key__"])
        assert row["txt"] == obj.caption and row["json"]["uid"] == obj.uid
        assert row["000.png"].size == (16, 16) and row["003.png"].mode == "RGBA"
        np.testing.assert_array_equal(
            np.asarray(row["cameras.npy"], np.float32),
            np.asarray([v["c2w"] for v in obj.cameras["views"]], np.float32),
        )
        assert row["json"]["views"][2]["azimuth_deg"] == obj.cameras["views"][2]["azimuth_deg"]
    summary, problems = verify(str(out))
    assert problems == [], problems
