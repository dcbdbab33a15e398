"""The shard plan: which uid goes to which shard, a pure function of (uids, sizes, config) (docs/design.md
§4).

The train/val split hashes the uid alone, so an object never changes split when objects are added or the
seed changes. Within a split, objects are ordered by a hash of (seed, uid): a shuffle that needs no RNG state
and puts similar uids (one source, one prefix) into different shards.

With held-out views (``ShardConfig.val_views``) every train object is written twice: its train sample without
those views, and a sample of only those views in val shards of their own, after the val split's whole objects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mvforge.errors import UserError
from mvforge.formats import shards as schema
from mvforge.shards.config import ShardConfig

# Salt of the split hash: a constant so the split never depends on the seed or on other objects.
SPLIT_SALT = b"mvforge-split-v1:"


@dataclass(frozen=True)
class ShardSpec:
    """One planned shard."""

    name: str
    """File name, e.g. train-000000.tar."""
    split: str
    """train | val."""
    uids: tuple[str, ...]
    """Objects in the order they are written."""
    est_bytes: int
    """Estimated size in bytes (file sizes plus tar headers)."""
    keep_views: tuple[int, ...] = ()
    """Only these view indices go into each sample (a held-out-view val shard); empty: every view."""
    drop_views: tuple[int, ...] = ()
    """These view indices are left out of each sample (a train shard with held-out views)."""

    @property
    def digest(self) -> str:
        """sha256 of the shard's name, uid list and view set: a marker from another plan never matches."""
        parts = [self.name, *self.uids]
        if self.keep_views or self.drop_views:  # (a plan without held-out views keeps its digests)
            parts += [f"keep={list(self.keep_views)}", f"drop={list(self.drop_views)}"]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def split_of(uid: str, val_fraction: float) -> str:
    """train or val by a hash of the uid: a uniform number in [0, 1) below val_fraction means val."""
    h = int.from_bytes(hashlib.sha256(SPLIT_SALT + uid.encode()).digest()[:8], "big")
    return "val" if h / 2**64 < val_fraction else "train"


def order_key(seed: int, uid: str) -> bytes:
    return hashlib.sha256(f"{seed}:{uid}".encode()).digest()


def _pack(members: list[str], sizes: Mapping[str, int], cfg: ShardConfig) -> list[tuple[list[str], int]]:
    """``members`` in order, packed greedily into (uids, estimated bytes) groups within max_count and
    max_size_mb (a single larger object gets its own group)."""
    max_bytes = int(cfg.max_size_mb * 1e6)
    groups: list[tuple[list[str], int]] = []
    for uid in members:
        s = int(sizes[uid])
        if not groups or len(groups[-1][0]) >= cfg.max_count or groups[-1][1] + s > max_bytes:
            groups.append(([], 0))
        groups[-1][0].append(uid)
        groups[-1] = (groups[-1][0], groups[-1][1] + s)
    return groups


def plan_shards(uids: Sequence[str], sizes: Mapping[str, int], cfg: ShardConfig) -> list[ShardSpec]:
    """Shards for ``uids`` (sizes in bytes per uid): split by uid hash, ordered by (seed, uid) hash, packed
    greedily so no shard passes max_count samples or max_size_mb. With ``cfg.val_views`` the train objects'
    held-out views follow as val shards (module docstring); their size estimate is the whole object's."""
    # cfg's own ranges are checked by ShardConfig.__post_init__.
    if len(set(uids)) != len(uids):
        raise UserError("duplicate uids in the input; each object must appear once")
    members = {
        split: sorted(
            (u for u in uids if split_of(u, cfg.val_fraction) == split), key=lambda u: order_key(cfg.seed, u)
        )
        for split in schema.SPLITS
    }
    out: list[ShardSpec] = []
    held = cfg.val_views  # sorted by ShardConfig
    for split in schema.SPLITS:
        drop = held if split == "train" else ()
        out += [
            ShardSpec(schema.shard_name(split, i), split, tuple(g), b, drop_views=drop)
            for i, (g, b) in enumerate(_pack(members[split], sizes, cfg))
        ]
    if held:
        first = sum(s.split == "val" for s in out)
        out += [
            ShardSpec(schema.shard_name("val", first + i), "val", tuple(g), b, keep_views=held)
            for i, (g, b) in enumerate(_pack(members["train"], sizes, cfg))
        ]
    return out
