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
from mvforge.formats import renders as layout
from mvforge.shards import schema
from mvforge.shards.config import LoaderConfig
from mvforge.shards.loader import (
    BadSample,
    MultiViewLoader,
    batch_images,
    choose_views,
    decode_2d,
    step_is_3d,
)


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


def test_break_after_an_epochs_last_batch_starts_the_next_epoch(shards):
    """A trainer that stops its loop right after the last batch of an epoch gets a whole epoch next time."""
    loader = MultiViewLoader(shards, LoaderConfig(batch_size=2, resolution=16, batches_per_epoch=2))
    for batch in loader:
        if batch["step"] == 1:
            break
    state = loader.state_dict()
    assert (state["epoch"], state["batch_in_epoch"]) == (0, 2)
    nxt = list(loader)
    assert [(b["epoch"], b["step"]) for b in nxt] == [(1, 2), (1, 3)]
    restored = MultiViewLoader(shards, LoaderConfig(batch_size=2, resolution=16, batches_per_epoch=2))
    restored.load_state_dict(state)
    again = list(restored)
    assert [b["uids"] for b in again] == [b["uids"] for b in nxt]


def _orbit_views(azimuths_per_orbit: list[list[float]]) -> list[dict]:
    views: list[dict] = []
    for orbit, azimuths in enumerate(azimuths_per_orbit):
        for a in azimuths:
            views.append({"index": len(views), "orbit": orbit, "azimuth_deg": a})
    return views


def test_choose_views_orbits_and_odd_view_counts():
    cfg = LoaderConfig(num_views=4)
    views = _orbit_views([[30.0 * k for k in range(12)], [15.0 + 60.0 * k for k in range(6)]])
    orbits_seen = set()
    for seed in range(40):
        picked = choose_views(views, np.random.default_rng(seed), cfg)
        orbit = {views[i]["orbit"] for i in picked}
        assert len(orbit) == 1 and len(set(picked)) == 4  # one orbit, distinct views
        orbits_seen |= orbit
        az = np.array([views[i]["azimuth_deg"] for i in picked])
        steps = (az[1:] - az[:-1]) % 360
        if orbit == {0}:  # 12 views: exact +90 steps
            np.testing.assert_allclose(steps, 90.0)
        else:  # 6 views (60 deg apart): the nearest rendered azimuth to each +90 step
            assert all(s in (60.0, 120.0) for s in steps)
    assert orbits_seen == {0, 1}
    with pytest.raises(BadSample, match="too_few_views"):
        choose_views(_orbit_views([[0.0, 120.0, 240.0]]), np.random.default_rng(0), cfg)
    with pytest.raises(BadSample, match="no_orthogonal_views"):  # a partial arc: +90 steps would repeat views
        choose_views(_orbit_views([[0.0, 10.0, 20.0, 30.0]]), np.random.default_rng(0), cfg)


def test_too_few_views_everywhere_is_a_user_error_naming_the_fix(shards):
    loader = MultiViewLoader(
        shards, LoaderConfig(batch_size=1, resolution=16, num_views=9, max_empty_visits=2)
    )
    with warnings.catch_warnings(), pytest.raises(UserError, match="lower num_views"):
        warnings.simplefilter("ignore")
        next(iter(loader))


def test_2d_jpeg_decoded_at_reduced_scale_matches_full_decode(tmp_path):
    """The JPEG draft (decode at 1/4 scale) gives the same crop as a full decode, up to resampling."""
    import io

    yy, xx = np.mgrid[0:192, 0:256]
    rgb = np.stack([xx, yy, (xx + yy) // 2], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    raw = {"__key__": "k", "jpg": buf.getvalue(), "txt": b"a gradient"}
    item = decode_2d(raw, np.random.default_rng(0), LoaderConfig(resolution=32, background="white"))
    assert item["rgba"][0].shape == (48, 48, 4)  # decoded at 1/4 scale (64 x 48), centre crop
    got = batch_images([item["rgba"]], [item["background"]], 32)[0]
    full = np.asarray(Image.open(io.BytesIO(raw["jpg"])).convert("RGB"), np.float32)[:, 32:224]
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(full).permute(2, 0, 1)[None] / 127.5 - 1,
        size=(32, 32),
        mode="bilinear",
        antialias=True,
    )
    assert got.shape == (1, 3, 32, 32)
    assert (got - ref).abs().mean() < 0.02


def test_batch_images_per_sample_backgrounds_and_mixed_sizes():
    """Against the straight-alpha formula in float64; samples of another size take the one-by-one path."""
    rng = np.random.default_rng(0)
    small = [rng.integers(0, 256, (8, 8, 4), dtype=np.uint8) for _ in range(2)]
    large = [rng.integers(0, 256, (16, 16, 4), dtype=np.uint8) for _ in range(2)]
    bgs = [np.array([0, 0, 0]), np.array([255, 10, 20])]

    def reference(views, bg):
        x = np.stack(views).astype(np.float64)
        out = (x[..., :3] * x[..., 3:] + bg * (255.0 - x[..., 3:])) / 65025.0 * 2 - 1
        return torch.from_numpy(out).permute(0, 3, 1, 2).float()

    same = batch_images([small, small[::-1]], bgs, 8)
    torch.testing.assert_close(same[0], reference(small, bgs[0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(same[1], reference(small[::-1], bgs[1]), atol=1e-6, rtol=0)
    mixed = batch_images([small, large], bgs, 8)
    assert mixed.shape == (2, 2, 3, 8, 8)
    torch.testing.assert_close(mixed[0], reference(small, bgs[0]), atol=1e-6, rtol=0)
    resized = torch.nn.functional.interpolate(
        reference(large, bgs[1]), size=(8, 8), mode="bilinear", antialias=True
    )
    torch.testing.assert_close(mixed[1], resized, atol=1e-5, rtol=0)


def _count_opens(monkeypatch) -> dict[str, int]:
    from mvforge.shards import loader as loader_mod

    opens: dict[str, int] = {}
    real = loader_mod._open_samples

    def counted(url, *args, **kwargs):
        opens[url] = opens.get(url, 0) + 1
        return real(url, *args, **kwargs)

    monkeypatch.setattr(loader_mod, "_open_samples", counted)
    return opens


def test_cached_shards_give_the_same_batches_and_are_read_once(shards, tmp_path, make_2d_shards, monkeypatch):
    tars_2d = make_2d_shards(tmp_path / "laion")
    streamed = _take(_loader(shards, tars_2d, bpe=8), 24)  # three epochs: every shard visited again
    opens = _count_opens(monkeypatch)
    cached = _take(_loader(shards, tars_2d, bpe=8, cache_mb=100), 24)
    for a, b in zip(streamed, cached, strict=True):
        assert (a["kind"], a["uids"]) == (b["kind"], b["uids"])
        torch.testing.assert_close(a["images"], b["images"], atol=0, rtol=0)
    assert len(opens) == 4 + len(tars_2d) and set(opens.values()) == {1}


def test_a_cache_smaller_than_the_shards_keeps_what_fits_and_streams_the_rest(shards, monkeypatch):
    from mvforge.shards.loader import _raw_size

    tars = sorted(shards.glob("train-*.tar"))
    with tars[0].open("rb") as f:
        one = sum(_raw_size(raw) for raw in schema.iter_raw_samples(f)) / 1e6
    opens = _count_opens(monkeypatch)
    loader = MultiViewLoader(
        str(shards), LoaderConfig(batch_size=2, resolution=16, cache_mb=one * 1.5)
    )  # one shard, not two
    _take(loader, 24)
    kept, *streamed = sorted(opens.values())
    assert kept == 1 and all(n > 1 for n in streamed)  # the others are streamed at every visit
    with pytest.raises(UserError, match="cache_mb must be >= 0"):
        LoaderConfig(cache_mb=-1)


def test_a_resume_counts_a_replayed_visits_unreadable_shard_once(renders, tmp_path):
    """The shard is read to its (truncated) end before its first batch; a resume replays that visit."""
    objs = list(layout.iter_objects(renders))[:4]
    path = tmp_path / "train-000000.tar"
    with open(path, "wb") as f:
        schema.write_samples(f, [(o.uid, schema.object_members(o)) for o in objs])
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    path.write_bytes(path.read_bytes()[: last.offset_data + last.size // 2])  # cut inside the last member

    def loader():
        cfg = LoaderConfig(batch_size=1, resolution=16, batches_per_epoch=2, shuffle_buffer=10)
        return MultiViewLoader([str(path)], cfg)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = loader()
        _take(full, 2)
        first = loader()
        _take(first, 1)
        resumed = loader()
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        _take(resumed, 1)
    assert full.bad["unreadable_shard"] == 1, dict(full.bad)
    assert resumed.bad == full.bad
