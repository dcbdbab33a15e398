"""fit never trains on a shard that fails its checksum without saying so: the loader hashes each shard as it
streams it and, at the shard's end, stops (default) or counts (docs/reliability.md)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from mvforge.errors import UserError
from mvforge.shards.config import LoaderConfig
from mvforge.shards.loader import MultiViewLoader


def _flip_a_camera_byte(shard: Path) -> None:
    """One flipped byte inside a sample's cameras.npy payload: still a valid tar and a valid array."""
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".cameras.npy"))
    data = bytearray(shard.read_bytes())
    data[member.offset_data + member.size - 1] ^= 0x01
    shard.write_bytes(bytes(data))


@pytest.fixture
def damaged(shards, tmp_path) -> tuple[Path, Path]:
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    shard = sorted(copy.glob("train-*.tar"))[1]
    _flip_a_camera_byte(shard)
    return copy, shard


def _names(shard: Path) -> list[str]:
    with tarfile.open(shard) as tar:
        return tar.getnames()


def _cfg(**changes) -> LoaderConfig:
    return LoaderConfig(batch_size=2, num_views=4, resolution=16, batches_per_epoch=8, **changes)


def test_a_flipped_byte_stops_the_loader_naming_the_shard_and_mvdata_verify(damaged):
    copy, shard = damaged
    loader = MultiViewLoader(str(copy), _cfg(), rank=0, world_size=1)
    with pytest.raises(
        UserError, match=rf"^shard {shard} does not match the sha256 .*`mvdata verify {copy}`"
    ):
        for _ in loader:
            pass


def test_a_truncated_shard_stops_the_loader_too(shards, tmp_path, caplog):
    """A shard cut short fails to parse before its end; its digest is still checked, so it stops the run."""
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    shard = sorted(copy.glob("train-*.tar"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2 + 3])
    with pytest.raises(UserError, match=rf"^shard {shard} does not match the sha256"):
        for _ in MultiViewLoader(str(copy), _cfg(), rank=0, world_size=1):
            pass
    counting = MultiViewLoader(str(copy), _cfg(on_checksum_mismatch="count"), rank=0, world_size=1)
    assert len(list(counting)) == 8
    assert counting.bad["checksum_mismatch"] == counting.bad["unreadable_shard"] >= 1
    warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert warnings and all("object at 0x" not in w for w in warnings)  # the shard's path, not a repr


def test_a_shard_the_index_lists_but_that_is_gone_stops_the_loader(shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    gone = sorted(copy.glob("train-*.tar"))[1]
    gone.unlink()
    with pytest.raises(
        UserError, match=rf"^shard {gone} is listed in {copy}/index.json but is not there; run"
    ):
        for _ in MultiViewLoader(str(copy), _cfg(), rank=0, world_size=1):
            pass
    counting = MultiViewLoader(str(copy), _cfg(on_checksum_mismatch="count"), rank=0, world_size=1)
    assert len(list(counting)) == 8 and counting.bad["missing_shard"] >= 1


def test_the_count_policy_counts_the_shard_and_goes_on(damaged, shards):
    copy, _ = damaged
    loader = MultiViewLoader(str(copy), _cfg(on_checksum_mismatch="count"), rank=0, world_size=1)
    batches = list(loader)
    assert len(batches) == 8 and loader.bad["checksum_mismatch"] >= 1
    intact = MultiViewLoader(str(shards), _cfg(), rank=0, world_size=1)
    assert len(list(intact)) == 8 and not intact.bad  # intact shards: nothing counted, nothing stops


def test_a_shard_that_fails_its_checksum_is_not_kept_in_the_cache(damaged):
    copy, _ = damaged
    counts = []
    for cache_mb in (0, 100):
        loader = MultiViewLoader(str(copy), _cfg(on_checksum_mismatch="count", cache_mb=cache_mb))
        for _ in range(3):  # three epochs: the damaged shard is visited again, and counted at each visit
            list(loader)
        counts.append(loader.bad["checksum_mismatch"])
    assert counts[0] > 1 and counts[1] == counts[0]


def test_a_resume_at_any_batch_counts_each_mismatch_once(damaged):
    """A resume replays the visit it stopped in; a mismatch met before the checkpoint is not counted again."""
    copy, _ = damaged
    cfg = _cfg(on_checksum_mismatch="count")
    full = MultiViewLoader(str(copy), cfg)
    list(full)
    assert full.bad["checksum_mismatch"] >= 1
    for k in range(1, 8):
        first = MultiViewLoader(str(copy), cfg)
        for i, _ in enumerate(first):
            if i + 1 == k:
                break
        resumed = MultiViewLoader(str(copy), cfg)
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        list(resumed)
        assert resumed.bad == full.bad, k


def test_a_shard_damaged_after_the_checkpoint_stops_the_resume_at_once(shards, tmp_path):
    """The visit a resume replays re-reads its shard: damage done since the checkpoint stops the first batch."""
    cfg = LoaderConfig(batch_size=1, num_views=4, resolution=16, batches_per_epoch=8)  # checkpoints mid-visit
    stopped_at_once = 0
    for k in range(1, 8):
        first = MultiViewLoader(str(shards), cfg)
        for i, _ in enumerate(first):
            if i + 1 == k:
                break
        state = json.loads(json.dumps(first.state_dict()))
        visit, offset = state["streams"]["3d"]["positions"][0]
        copy = tmp_path / f"k{k}"
        shutil.copytree(shards, copy)
        for shard in copy.glob("train-*.tar"):  # every shard: whichever the replayed visit reads is damaged
            shard.write_bytes(shard.read_bytes() + b"appended after the checkpoint")
        resumed = MultiViewLoader(str(copy), cfg)
        resumed.load_state_dict(state)
        if offset == 1:  # one of the shard's two samples consumed: the resume's first batch is its second
            with pytest.raises(UserError, match="does not match the sha256"):
                next(iter(resumed))
            stopped_at_once += 1
    assert stopped_at_once >= 2  # checkpoints inside a visit were met


def test_fit_stops_in_one_line_on_a_damaged_shard_and_loses_no_step(shards, tiny_sd, tmp_path):
    """The stop checkpoints the last finished step; with the shard rewritten the rerun resumes there."""
    import csv

    from mvforge.rundir import RunDir
    from mvforge.train.loop import fit
    from tests.train.conftest import fit_config

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    cfg = fit_config(tiny_sd, copy, tmp_path / "run", max_steps=8, checkpoint_every=8, log_every=1)
    # Damage a shard that the run first reads after some finished steps
    steps = [set(b["uids"]) for b, _ in zip(MultiViewLoader(str(shards), cfg.loader), range(8), strict=False)]
    first_read = {
        t: min((i for i, uids in enumerate(steps) if uids & {n.split(".")[0] for n in _names(t)}), default=99)
        for t in sorted(copy.glob("train-*.tar"))
    }
    shard = next(t for t, i in first_read.items() if 1 <= i < 7)
    _flip_a_camera_byte(shard)
    with pytest.raises(UserError, match=rf"^shard {shard} does not match the sha256"):
        fit(cfg)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    done = int(rows[-1]["step"]) if rows else 0
    assert 0 < done < 8  # the damaged shard is met after some steps, before the end
    assert RunDir(tmp_path / "run").checkpoint_path(done).is_dir()  # not only at checkpoint_every
    with pytest.raises(UserError, match="does not match"):  # unfixed: stops again at once, nothing new
        fit(cfg)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [f"step-{done:06d}"]
    # The stop line's advice (on_checksum_mismatch=count) resumes the same run; so would the shard rewritten
    counting = dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, on_checksum_mismatch="count"))
    records = fit(counting)
    assert [r["step"] for r in records] == list(range(done + 1, 9))
