"""The streaming loader: exact pixels and cameras, DDP ranks, 2D mixing, exact resume, bad samples."""

from __future__ import annotations

import json
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from mvforge.cameras import normalize_camera
from mvforge.errors import UserError
from mvforge.render import layout
from mvforge.shards import schema
from mvforge.shards.config import LoaderConfig
from mvforge.shards.loader import MultiViewLoader, step_is_3d


def _take(loader: MultiViewLoader, n: int) -> list[dict]:
    out = []
    while len(out) < n:
        for batch in loader:
            out.append(batch)
            if len(out) == n:
                break
    return out


@pytest.mark.parametrize("background", ["random_grey", "white", "color"])
def test_round_trip_pixels_and_cameras(renders, shards, background):
    """Native resolution (no resize): every view equals PIL's composite of the original PNG."""
    cfg = LoaderConfig(
        batch_size=2, num_views=4, resolution=32, background=background, background_rgb=(10, 200, 30)
    )
    batches = _take(MultiViewLoader(shards, cfg), 4)
    for batch in batches:
        assert batch["images"].shape == (2, 4, 3, 32, 32) and batch["images"].dtype == torch.float32
        assert batch["cameras"].shape == (2, 4, 16)
        for b, uid in enumerate(batch["uids"]):
            obj = layout.load_object(renders, uid)
            views = batch["views"][b].tolist()
            azimuths = [obj.cameras["views"][i]["azimuth_deg"] for i in views]
            for j in range(4):  # orthogonal: +90 deg steps on the one orbit
                assert (azimuths[j] - azimuths[0]) % 360 == pytest.approx(90.0 * j, abs=1e-6)
            bg = np.round(batch["backgrounds"][b].numpy() * 255).astype(np.uint8)
            assert {"white": (255,) * 3, "color": (10, 200, 30)}.get(background, (bg[0],) * 3) == tuple(bg)
            for j, i in enumerate(views):
                png = Image.open(obj.view_path(i)).convert("RGBA")
                ref = Image.alpha_composite(Image.new("RGBA", png.size, (*bg.tolist(), 255)), png).convert(
                    "RGB"
                )
                expected = torch.from_numpy(np.asarray(ref, np.float32) / 127.5 - 1.0).permute(2, 0, 1)
                got = batch["images"][b, j]
                # PIL rounds its composite to 8 bits; the loader keeps float: at most one 8-bit level apart,
                # and exactly equal where the PNG is opaque or transparent.
                assert (got - expected).abs().max() <= 1 / 127.5 + 1e-6
                alpha = np.asarray(png)[..., 3]
                hard = torch.from_numpy((alpha == 0) | (alpha == 255))
                assert hard.any()
                torch.testing.assert_close(got[:, hard], expected[:, hard], atol=1e-6, rtol=0)
            c2w = np.asarray([obj.cameras["views"][i]["c2w"] for i in views])
            np.testing.assert_allclose(batch["cameras"][b].numpy(), normalize_camera(c2w), atol=1e-6)
            assert batch["captions"][b] == obj.caption + ", 3d asset"


def test_resize_and_random_view_mode(shards):
    cfg = LoaderConfig(batch_size=2, resolution=16, view_mode="random", num_views=3, caption_suffix="")
    batch = next(iter(MultiViewLoader(shards, cfg)))
    assert batch["images"].shape == (2, 3, 3, 16, 16)
    assert batch["images"].min() >= -1 and batch["images"].max() <= 1
    assert all(len(set(v)) == 3 for v in batch["views"].tolist())
    assert not batch["captions"][0].endswith(", 3d asset")


def _loader(shards, tars_2d, **kw):
    cfg = LoaderConfig(batch_size=2, resolution=16, batches_per_epoch=kw.pop("bpe", 8), **kw)
    return MultiViewLoader(shards, cfg, shards_2d=tars_2d)


def test_two_ranks_disjoint_equal_length_same_branch(shards, tmp_path, monkeypatch, make_2d_shards):
    tars_2d = make_2d_shards(tmp_path / "laion")
    runs = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = _loader(shards, tars_2d, bpe=12)
        assert (loader.rank, loader.world_size) == (rank, 2)
        runs[rank] = [b for _ in range(2) for b in loader]  # two epochs
    assert len(runs[0]) == len(runs[1]) == 24
    kinds = [[b["kind"] for b in runs[r]] for r in (0, 1)]
    assert kinds[0] == kinds[1] and {"3d", "2d"} == set(kinds[0])
    assert kinds[0] == ["3d" if step_is_3d(0, s, 0.7) else "2d" for s in range(24)]
    for kind in ("3d", "2d"):
        seen = [{u for b in runs[r] if b["kind"] == kind for u in b["uids"]} for r in (0, 1)]
        assert seen[0] and seen[1] and not seen[0] & seen[1]
    b2d = next(b for b in runs[0] if b["kind"] == "2d")
    assert b2d["cameras"] is None and b2d["images"].shape == (8, 1, 3, 16, 16)  # B x V images, no camera


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_equals_uninterrupted(shards, tmp_path, make_2d_shards, workers):
    tars_2d = make_2d_shards(tmp_path / "laion")
    full = _take(_loader(shards, tars_2d, bpe=5, num_workers=workers, shuffle_buffer=3), 11)
    first = _loader(shards, tars_2d, bpe=5, num_workers=workers, shuffle_buffer=3)
    _take(first, 7)  # crosses an epoch boundary
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    assert state["epoch"] == 1 and state["batch_in_epoch"] == 2
    resumed = _loader(shards, tars_2d, bpe=5, num_workers=workers, shuffle_buffer=3)
    resumed.load_state_dict(state)
    rest = _take(resumed, 4)
    for a, b in zip(full[7:], rest, strict=True):
        assert (a["kind"], a["uids"], a["step"], a["epoch"]) == (b["kind"], b["uids"], b["step"], b["epoch"])
        torch.testing.assert_close(a["images"], b["images"], atol=0, rtol=0)
        if a["kind"] == "3d":
            torch.testing.assert_close(a["cameras"], b["cameras"], atol=0, rtol=0)
    other = _loader(shards, tars_2d, bpe=5, num_workers=workers, seed=1)
    with pytest.raises(UserError, match="seed"):
        other.load_state_dict(state)


def test_bad_samples_are_skipped_and_counted(renders, tmp_path):
    """A shard holding an object without views and one with corrupt PNGs: both skipped, both counted."""
    objs = list(layout.iter_objects(renders))[:4]
    samples = []
    for k, obj in enumerate(objs):
        members = schema.object_members(obj)
        if k == 1:
            members = {e: d for e, d in members.items() if not e.endswith(".png")}
        if k == 2:
            members = {e: (b"not a png" if e.endswith(".png") else d) for e, d in members.items()}
        samples.append((obj.uid, members))
    path = tmp_path / "train-000000.tar"
    with open(path, "wb") as f:
        schema.write_samples(f, samples)
    loader = MultiViewLoader(
        [str(path)], LoaderConfig(batch_size=2, resolution=16, batches_per_epoch=3, shuffle_buffer=0)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(loader)
    uids = {u for b in batches for u in b["uids"]}
    assert uids == {objs[0].uid, objs[3].uid}
    assert loader.bad["missing_view"] >= 1 and loader.bad["undecodable_image"] >= 1
    assert loader.state_dict()["bad"] == dict(loader.bad)


def test_too_few_shards_for_ranks(shards):
    with pytest.raises(UserError, match="ranks"):
        MultiViewLoader(shards, LoaderConfig(), rank=0, world_size=5)
    with pytest.warns(UserWarning, match="n_shards < ranks x workers"):
        MultiViewLoader(shards, LoaderConfig(num_workers=3), rank=0, world_size=2)


def test_index_gives_epoch_length(shards):
    loader = MultiViewLoader(shards, LoaderConfig(batch_size=3), rank=0, world_size=2)
    assert len(loader) == 8 // (3 * 2)
    with tarfile.open(next(shards.glob("*.tar"))) as tar:
        assert tar.getnames()  # the fixture wrote real tars
