"""`mvdata shard`: exact member format, byte-identical output, selection, resume, SIGKILL, S3, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mvforge.errors import UserError
from mvforge.formats import renders as layout
from mvforge.shards import schema
from mvforge.shards.config import ShardConfig
from mvforge.shards.verify import verify
from mvforge.shards.writer import run_shard
from tests.fixtures.synthetic import write_synthetic_render_dir


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tars(root: Path) -> dict[str, str]:
    return {p.name: _sha(p) for p in sorted(root.glob("*.tar"))}


def test_members_are_the_original_files(renders, shards):
    index = json.loads((shards / "index.json").read_text())
    assert index["totals"]["samples"] == 8 and index["totals"]["shards"] == 4
    seen = set()
    for entry in index["shards"]:
        path = shards / entry["name"]
        assert entry["bytes"] == path.stat().st_size and entry["sha256"] == _sha(path)
        assert json.loads((shards / f"{entry['name']}.stats.json").read_text())["sha256"] == entry["sha256"]
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            by_key: dict[str, list[str]] = {}
            for m in members:
                assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o444)
                key, ext = schema.split_key(m.name)
                by_key.setdefault(key, []).append(ext)
            assert len(by_key) == entry["nsamples"]
            for uid, exts in by_key.items():
                seen.add(uid)
                assert exts == sorted(exts)  # members sorted within a sample
                assert exts == [f"{i:03d}.png" for i in range(8)] + ["cameras.npy", "json", "txt"]
                obj = layout.load_object(renders, uid)
                for i in range(8):  # PNG bytes never re-encoded
                    assert tar.extractfile(f"{uid}.{i:03d}.png").read() == obj.view_path(i).read_bytes()
                cams = schema.load_npy(tar.extractfile(f"{uid}.cameras.npy").read())
                assert cams.dtype == np.float32 and cams.shape == (8, 4, 4)
                np.testing.assert_array_equal(
                    cams, np.asarray([v["c2w"] for v in obj.cameras["views"]], np.float32)
                )
                doc = json.loads(tar.extractfile(f"{uid}.json").read())
                assert doc["views"] == obj.cameras["views"] and doc["meta"] == schema.public_meta(obj.meta)
                assert tar.extractfile(f"{uid}.txt").read().decode() == obj.caption
    assert seen == set(layout.iter_uids(renders))


def test_two_runs_byte_identical_with_ray(renders, shards, tmp_path):
    """Ray tasks (2 workers) and the in-driver writer give the same bytes and the same index.json."""
    from mvforge.raytools import init_ray

    init_ray(num_cpus=2)
    cfg = ShardConfig(max_count=2, val_fraction=0.0, workers=2)
    run_shard(renders, str(tmp_path / "a"), cfg, show_progress=False)
    run_shard(renders, str(tmp_path / "b"), cfg, show_progress=False)
    assert _tars(tmp_path / "a") == _tars(tmp_path / "b") == _tars(shards)
    index = (shards / "index.json").read_text()
    assert (tmp_path / "a" / "index.json").read_text() == (tmp_path / "b" / "index.json").read_text() == index


def test_selection_keeps_only_kept_rows(renders, tmp_path):
    sel = tmp_path / "selection.parquet"
    pd.DataFrame(
        {
            "uid": ["obj-0001", "obj-0003", "obj-0005", "nope"],
            "kept": [True, False, True, True],
            "score": [0.3, 0.1, 0.4, 0.5],
        }
    ).to_parquet(sel)
    index = run_shard(
        renders,
        str(tmp_path / "s"),
        ShardConfig(val_fraction=0.0, workers=0),
        selection=sel,
        show_progress=False,
    )
    keys = set()
    for entry in index["shards"]:
        with tarfile.open(tmp_path / "s" / entry["name"]) as tar:
            keys |= {schema.split_key(n)[0] for n in tar.getnames()}
    assert keys == {"obj-0001", "obj-0005"}
    assert index["source"]["not_rendered"] == ["nope"]


def test_resume_skips_done_shards_and_redoes_partial_tmp(renders, shards, tmp_path):
    out = tmp_path / "s"
    cfg = ShardConfig(max_count=2, val_fraction=0.0, workers=0)
    run_shard(renders, str(out), cfg, show_progress=False)
    # a killed run: one shard's marker and tar gone, a partial tar left as *.tmp-<pid>
    (out / "train-000001.tar.stats.json").unlink()
    (out / "train-000001.tar").unlink()
    (out / "train-000001.tar.tmp-424242").write_bytes(b"partial")
    (out / "train-000003.tar.stats.json.tmp-424242").write_bytes(b"{")  # killed while writing a marker
    (out / "index.json").unlink()
    kept_mtime = (out / "train-000000.tar").stat().st_mtime_ns
    run_shard(renders, str(out), cfg, show_progress=False)
    assert (out / "train-000000.tar").stat().st_mtime_ns == kept_mtime  # skipped, not rewritten
    assert not list(out.glob("*.tmp-*"))
    assert _tars(out) == _tars(shards)
    assert (out / "index.json").read_text() == (shards / "index.json").read_text()


def test_resume_into_the_output_of_another_plan_is_a_user_error(renders, shards, tmp_path):
    """Markers of another plan, whether of a planned shard name or not, must not mix into the new set."""
    cfg = ShardConfig(max_count=2, val_fraction=0.0, workers=0)
    out = tmp_path / "s"
    shutil.copytree(shards, out)
    with pytest.raises(UserError, match="new --out directory"):  # same names, other uids
        run_shard(
            renders, str(out), ShardConfig(max_count=8, val_fraction=0.0, workers=0), show_progress=False
        )
    # a marker this plan does not have (an earlier run with a val split), every planned shard matching
    shutil.copy(out / "train-000000.tar.stats.json", out / "val-000000.tar.stats.json")
    with pytest.raises(UserError, match="val-000000.tar.stats.json"):
        run_shard(renders, str(out), cfg, show_progress=False)
    assert _tars(out) == _tars(shards)  # nothing overwritten


def test_selection_with_a_duplicate_uid_is_a_user_error(renders, tmp_path):
    sel = tmp_path / "selection.parquet"
    pd.DataFrame({"uid": ["obj-0001", "obj-0001"], "kept": [True, True]}).to_parquet(sel)
    with pytest.raises(UserError, match="more than once"):
        run_shard(renders, str(tmp_path / "s"), ShardConfig(workers=0), selection=sel, show_progress=False)


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, mvdata_bin):
    """Kill the whole `mvdata shard` process group mid-run, re-run through the entry point: same output."""
    renders = tmp_path / "r"
    write_synthetic_render_dir(renders, 40, views=4, resolution=16)
    ref = tmp_path / "ref"
    run_shard(renders, str(ref), ShardConfig(max_count=1, val_fraction=0.25, workers=0), show_progress=False)
    out = tmp_path / "out"
    cmd = [
        mvdata_bin,
        "shard",
        str(renders),
        "--out",
        str(out),
        "--max-count",
        "1",
        "--val-fraction",
        "0.25",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.stats.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray processes, as a crashed node would
    proc.wait()
    done = len(list(out.glob("*.stats.json")))
    assert not (out / "index.json").exists() and 2 <= done < 40, f"kill came too late ({done} markers)"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "40" in r.stderr  # the summary table counts samples
    assert (out / "index.json").read_text() == (ref / "index.json").read_text()
    assert _tars(out) == _tars(ref)
    assert not list(out.glob("*.tmp-*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server(monkeypatch):
    from moto.server import ThreadedMotoServer

    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_s3_output_against_a_local_s3_server(renders, shards, s3_server):
    import s3fs

    from mvforge.shards.config import LoaderConfig
    from mvforge.shards.loader import MultiViewLoader

    opts = {"endpoint_url": s3_server}
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("bucket")
    cfg = ShardConfig(max_count=2, val_fraction=0.0, workers=0)
    index = run_shard(renders, "s3://bucket/shards", cfg, storage_options=opts, show_progress=False)
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("bucket/shards"))
    assert "index.json" in names and not [n for n in names if ".tmp-" in n]
    for entry in index["shards"]:
        remote = fs.cat(f"bucket/shards/{entry['name']}")
        assert remote == (shards / entry["name"]).read_bytes()
    assert json.loads(fs.cat("bucket/shards/index.json"))["shards"] == index["shards"]
    counts, problems = verify("s3://bucket/shards", opts)
    assert problems == [] and counts["samples"] == 8
    # resume on S3: everything is skipped, nothing rewritten
    assert run_shard(renders, "s3://bucket/shards", cfg, storage_options=opts, show_progress=False) == index
    loader = MultiViewLoader(
        "s3://bucket/shards", LoaderConfig(batch_size=2, resolution=16), storage_options=opts
    )
    batch = next(iter(loader))
    assert batch["images"].shape == (2, 4, 3, 16, 16)


def test_bad_input_is_a_user_error(tmp_path, renders, mvdata_bin):
    with pytest.raises(UserError, match="does not exist"):
        run_shard(tmp_path / "missing", str(tmp_path / "o"), ShardConfig(workers=0))
    mvdata = mvdata_bin
    r = subprocess.run(
        [mvdata, "shard", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    sel = tmp_path / "empty.parquet"
    pd.DataFrame({"uid": ["obj-0001"], "kept": [False]}).to_parquet(sel)
    r = subprocess.run(
        [mvdata, "shard", str(renders), "--out", str(tmp_path / "o"), "--selection", str(sel)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "keeps no object" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        [mvdata, "shard", str(renders), "--out", str(tmp_path / "o"), "--set", "max_cont=3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "max_cont" in r.stderr


def test_tar_bytes_equal_stdlib_tarfile():
    """The chunked writer emits exactly the bytes of stdlib tarfile for the same members (long names too)."""
    import io

    samples = [
        ("a" * 120, {"000.png": b"x" * 1000, "txt": b"hi"}),
        ("b", {"json": b"{}" * 3000, "txt": b""}),
        ("c" * 96, {"txt": b"\xc3\xa9" * 700}),
    ]
    mine = io.BytesIO()
    schema.write_samples(schema.HashingWriter(mine), samples)
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for key, members in samples:
            for ext in sorted(members):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode = len(members[ext]), 0o444
                tar.addfile(info, io.BytesIO(members[ext]))
    assert mine.getvalue() == ref.getvalue()


def test_unreadable_object_is_skipped_and_listed(tmp_path):
    renders = tmp_path / "r"
    write_synthetic_render_dir(renders, 3, views=4, resolution=16)
    (layout.object_dir(renders, "obj-0001") / "002.png").unlink()
    index = run_shard(
        renders, str(tmp_path / "s"), ShardConfig(val_fraction=0.0, workers=0), show_progress=False
    )
    assert index["totals"]["samples"] == 2
    assert index["skipped"] == [{"uid": "obj-0001", "reason": "missing_file", "message": "002.png"}]
    assert verify(str(tmp_path / "s"))[1] == []


def test_views_that_are_not_whole_pngs_are_skipped_not_packed(tmp_path):
    """An overwritten or truncated view is skipped and counted (the verifier would otherwise find it later)."""
    from mvforge.formats import renders as layout
    from mvforge.shards.config import ShardConfig
    from mvforge.shards.writer import run_shard
    from tests.fixtures.synthetic import write_synthetic_render_dir

    renders = tmp_path / "renders"
    uids = write_synthetic_render_dir(renders, 4, views=2, resolution=8)
    (layout.object_dir(renders, uids[0]) / layout.view_name(1)).write_text("not a png")
    png = layout.object_dir(renders, uids[1]) / layout.view_name(0)
    png.write_bytes(png.read_bytes()[:-20])
    index = run_shard(
        renders, str(tmp_path / "shards"), ShardConfig(val_fraction=0.0, workers=0), show_progress=False
    )
    assert sorted((s["uid"], s["reason"]) for s in index["skipped"]) == sorted(
        [(uids[0], "unreadable_view"), (uids[1], "unreadable_view")]
    )
    assert index["totals"]["samples"] == 2


@pytest.mark.parametrize("where", ["local", "memory"])
def test_resume_with_other_settings_is_refused_naming_the_key_also_at_a_url(renders, tmp_path, where):
    """The shard set's config.toml, read through fsspec (``--out`` may be a URL), is compared by the one check
    every stage shares (rundir.check_resume): a setting that leaves the plan as it was is refused too."""
    out = str(tmp_path / "s") if where == "local" else f"memory://mvforge-resume-{os.getpid()}/s"
    cfg = ShardConfig(max_count=2, val_fraction=0.0, workers=0)
    try:
        first = run_shard(renders, out, cfg, show_progress=False)
        assert "workers" not in first["config"]  # execution settings (rundir.EXECUTION_KEYS) are not content
        with pytest.raises(
            UserError,
            match=r"holds shards made with other settings \(max_size_mb was 1000.0, now 500.0\); pass the "
            r"same settings to resume it, or use a new --out directory",
        ):
            run_shard(
                renders,
                out,
                ShardConfig(max_count=2, val_fraction=0.0, max_size_mb=500.0, workers=0),
                show_progress=False,
            )
        # the same settings under another worker count resume (nothing left to write: no Ray started)
        again = ShardConfig(max_count=2, val_fraction=0.0, workers=3)
        assert run_shard(renders, out, again, show_progress=False) == first
    finally:
        if where == "memory":
            import fsspec

            fsspec.filesystem("memory").rm(out.removeprefix("memory://"), recursive=True)


def test_a_run_killed_before_its_first_shard_takes_the_new_settings(renders, tmp_path):
    out = tmp_path / "s"
    run_shard(renders, str(out), ShardConfig(max_count=2, val_fraction=0.0, workers=0), show_progress=False)
    for p in out.iterdir():
        if p.name != "config.toml":
            p.unlink()
    index = run_shard(
        renders, str(out), ShardConfig(max_count=3, val_fraction=0.0, workers=0), show_progress=False
    )
    assert index["config"]["max_count"] == 3 and "max_count = 3" in (out / "config.toml").read_text()


def test_held_out_views_form_a_val_sample_of_each_train_object(renders, tmp_path, mvdata_bin):
    # 8 views of one orbit: 1,3,5,7 is one orthogonal set of 4; 0,2,4,6 (the other) is left to train on.
    out = tmp_path / "s"
    r = subprocess.run(
        [mvdata_bin, "shard", str(renders), "--out", str(out), "--workers", "0", "--val-fraction", "0"]
        + ["--max-count", "3", "--val-views", "7,3,5,1", "--views-2d", str(tmp_path / "s2d")],  # a set
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["totals"]["train"]["samples"] == 8 and index["totals"]["val"]["samples"] == 8
    assert index["config"]["val_views"] == [1, 3, 5, 7]
    assert "validation split holds views 1, 3, 5, 7 of the train objects" in (out / "README.md").read_text()
    import datasets  # the card still reads: a view a sample lacks is None

    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    row = ds["validation"][0]
    assert row["001.png"].size == (32, 32) and row["000.png"] is None and ds["train"][0]["001.png"] is None
    views_of = {"train": {}, "val": {}}
    for entry in index["shards"]:
        with tarfile.open(out / entry["name"]) as tar:
            for m in tar.getmembers():
                key, ext = schema.split_key(m.name)
                if ext == "json":
                    doc = json.loads(tar.extractfile(m).read())
                    cams = schema.load_npy(tar.extractfile(f"{key}.cameras.npy").read())
                    want = [v["c2w"] for v in doc["views"]]
                    np.testing.assert_array_equal(
                        cams, np.asarray(want, np.float32)
                    )  # cameras follow the views
                    views_of[entry["split"]][key] = [int(v["index"]) for v in doc["views"]]
                elif ext.endswith(".png"):
                    assert int(ext[:3]) in ({1, 3, 5, 7} if entry["split"] == "val" else {0, 2, 4, 6})
    assert len(views_of["train"]) == 8 and all(v == [0, 2, 4, 6] for v in views_of["train"].values())
    assert len(views_of["val"]) == 8 and all(v == [1, 3, 5, 7] for v in views_of["val"].values())
    assert verify(str(out))[1] == []
    with tarfile.open(tmp_path / "s2d" / "2d-000000.tar") as tar:  # not trained on in 2D either
        assert {n.split(".")[0][-3:] for n in tar.getnames()} == {"000", "002", "004", "006"}
    # The standard loader reads both splits: training never sees a held-out view, the val split only them.
    from mvforge.shards.config import LoaderConfig
    from mvforge.shards.loader import MultiViewLoader

    for split, want in (("train", {0, 2, 4, 6}), ("val", {1, 3, 5, 7})):
        cfg = LoaderConfig(batch_size=2, resolution=32, p_3d=1.0, batches_per_epoch=4)
        for batch in MultiViewLoader(str(out), cfg, split=split):
            assert set(batch["views"].flatten().tolist()) == want

    # Bad input: one line naming the fix, nothing written.
    bad = [
        ("1,x", "comma-separated"),
        ("", "--val-views is given an empty value"),
        ("9", "rendered with views 0-7"),
    ]
    bad += [
        ("1,1", "distinct"),
        (
            "1,3",
            "not whole sets of 4 views 90° apart, nor the whole orbit; the loader draws such sets: hold out e.g. --val-views 1,3,5,7",
        ),
        ("2,6", "the 2 views held out of orbit 0 are not whole sets of 4"),
    ]
    for arg, msg in bad:
        r = subprocess.run(
            [mvdata_bin, "shard", str(renders), "--out", str(tmp_path / "bad"), "--workers", "0"]
            + ["--val-views", arg],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (arg, r.stderr)
    assert not (tmp_path / "bad" / "index.json").exists()


def test_an_object_without_a_held_out_view_is_skipped_once_in_both_splits(tmp_path):
    from tests.fixtures.synthetic import write_synthetic_object

    write_synthetic_render_dir(tmp_path / "r", 3, views=8, resolution=16)
    write_synthetic_object(tmp_path / "r", "short-one", "four views only", views=4, resolution=16)
    held = ShardConfig(val_fraction=0.0, val_views=(1, 3, 5, 7), workers=0)
    index = run_shard(tmp_path / "r", str(tmp_path / "s"), held, show_progress=False)
    assert [(x["uid"], x["reason"]) for x in index["skipped"]] == [("short-one", "missing_val_view")]
    assert index["totals"]["train"]["samples"] == index["totals"]["val"]["samples"] == 3


def test_a_whole_orbit_can_be_held_out_and_its_train_samples_are_the_other_orbits(tmp_path):
    from tests.fixtures.synthetic import write_synthetic_object

    for uid in ("a", "b"):  # views 0-7 on one orbit, 8-15 on another
        write_synthetic_object(tmp_path / "r", uid, f"object {uid}", views=8, resolution=16, orbits=2)
    held = ShardConfig(val_fraction=0.0, val_views=tuple(range(8, 16)), workers=0)
    run_shard(tmp_path / "r", str(tmp_path / "s"), held, show_progress=False)
    for name, want in (("train-000000.tar", set(range(8))), ("val-000000.tar", set(range(8, 16)))):
        with tarfile.open(tmp_path / "s" / name) as tar:
            assert {int(n.split(".")[1]) for n in tar.getnames() if n.endswith(".png")} == want


def test_a_rerun_rewrites_a_deleted_or_resized_shard_and_nothing_else(renders, tmp_path):
    """The loader's advice for a damaged shard: delete it and rerun `mvdata shard` with the same --out."""
    out = tmp_path / "s"
    cfg = ShardConfig(max_count=2, val_fraction=0.0, workers=0)
    run_shard(renders, str(out), cfg, show_progress=False)
    tars = sorted(out.glob("train-*.tar"))
    before = {t.name: t.read_bytes() for t in tars}
    tars[0].unlink()
    tars[1].write_bytes(before[tars[1].name][:1000])  # truncated
    untouched = tars[2].stat().st_mtime_ns
    run_shard(renders, str(out), cfg, show_progress=False)
    assert {t.name: t.read_bytes() for t in sorted(out.glob("train-*.tar"))} == before  # the same bytes
    assert tars[2].stat().st_mtime_ns == untouched and verify(str(out))[1] == []
