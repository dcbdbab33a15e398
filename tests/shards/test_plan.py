"""The shard plan: pure, split stable as data grows, limits respected."""

from __future__ import annotations

import pytest

from mvforge.errors import UserError
from mvforge.shards.config import ShardConfig
from mvforge.shards.plan import plan_shards, split_of


def _uids(n: int, start: int = 0) -> list[str]:
    return [f"u{i:05d}" for i in range(start, start + n)]


def test_plan_is_pure_and_respects_limits():
    uids = _uids(500)
    sizes = {u: 1000 + (i % 7) * 500 for i, u in enumerate(uids)}
    cfg = ShardConfig(max_count=40, max_size_mb=0.05, val_fraction=0.1, seed=3)
    a, b = plan_shards(uids, sizes, cfg), plan_shards(list(reversed(uids)), sizes, cfg)
    assert a == b  # input order does not matter
    assert sorted(u for s in a for u in s.uids) == uids  # every uid exactly once
    for s in a:
        assert len(s.uids) <= 40 and s.est_bytes <= 50_000
        assert s.name.startswith(s.split + "-") and s.name.endswith(".tar")
    val = sum(len(s.uids) for s in a if s.split == "val")
    assert 25 <= val <= 80  # ~10% of 500
    assert (
        plan_shards(uids, sizes, ShardConfig(max_count=40, max_size_mb=0.05, val_fraction=0.1, seed=4)) != a
    )


def test_split_is_stable_as_data_grows():
    cfg = ShardConfig(max_count=10, val_fraction=0.2)
    small = _uids(200)
    big = small + _uids(300, start=200)
    sizes = dict.fromkeys(big, 10)
    split_small = {u: s.split for s in plan_shards(small, sizes, cfg) for u in s.uids}
    split_big = {u: s.split for s in plan_shards(big, sizes, cfg) for u in s.uids}
    assert all(split_big[u] == split_small[u] for u in small)
    # the split ignores the seed too
    assert all(split_of(u, 0.2) == split_small[u] for u in small)


def test_bad_plan_settings_are_user_errors():
    with pytest.raises(UserError, match="max_count"):
        plan_shards(["a"], {"a": 1}, ShardConfig(max_count=0))
    with pytest.raises(UserError, match="val_fraction"):
        plan_shards(["a"], {"a": 1}, ShardConfig(val_fraction=1.5))


def test_held_out_views_add_val_shards_of_the_train_objects_after_the_whole_val_objects():
    uids = _uids(60)
    sizes = dict.fromkeys(uids, 1000)
    plain = plan_shards(uids, sizes, ShardConfig(max_count=10, val_fraction=0.1))
    held = plan_shards(uids, sizes, ShardConfig(max_count=10, val_fraction=0.1, val_views=(6, 2)))
    whole_val = [s for s in plain if s.split == "val"]
    train = [s for s in plain if s.split == "train"]
    # The whole-object shards are the plan without held-out views; train shards drop the views, and the train
    # objects come again, in the same order, as val shards of only those views, numbered after the others.
    assert [(s.name, s.uids) for s in held[: len(plain)]] == [(s.name, s.uids) for s in plain]
    assert all(s.drop_views == (2, 6) for s in held if s.split == "train")
    extra = held[len(plain) :]
    assert [s.uids for s in extra] == [s.uids for s in train] and all(s.keep_views == (2, 6) for s in extra)
    assert [s.name for s in extra] == [
        f"val-{i:06d}.tar" for i in range(len(whole_val), len(whole_val) + len(train))
    ]
    # A plan without held-out views keeps its digests (shards written before the option resume); with them,
    # a train shard's digest differs from the plain one, so its marker is not taken for it.
    assert plan_shards(uids, sizes, ShardConfig(max_count=10, val_fraction=0.1)) == plain
    assert {s.digest for s in held if s.split == "train"}.isdisjoint(s.digest for s in train)
