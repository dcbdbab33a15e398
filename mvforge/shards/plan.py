"""The shard plan: which uid goes to which shard, a pure function of (uids, sizes, config) (docs/design.md
§4).

The train/val split hashes the uid alone, so an object never changes split when objects are added or the
seed changes. Within a split, objects are ordered by a hash of (seed, uid): a shuffle that needs no RNG state
and puts similar uids (one source, one prefix) into different shards.
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

    @property
    def digest(self) -> str:
        """sha256 of the shard's name and uid list: a marker from another plan never matches."""
        return hashlib.sha256("\n".join((self.name, *self.uids)).encode()).hexdigest()


def split_of(uid: str, val_fraction: float) -> str:
    """train or val by a hash of the uid: a uniform number in [0, 1) below val_fraction means val."""
    h = int.from_bytes(hashlib.sha256(SPLIT_SALT + uid.encode()).digest()[:8], "big")
    return "val" if h / 2**64 < val_fraction else "train"


def order_key(seed: int, uid: str) -> bytes:
    return hashlib.sha256(f"{seed}:{uid}".encode()).digest()


def plan_shards(uids: Sequence[str], sizes: Mapping[str, int], cfg: ShardConfig) -> list[ShardSpec]:
    """Shards for ``uids`` (sizes in bytes per uid): split by uid hash, ordered by (seed, uid) hash, packed
    greedily so no shard passes max_count samples or max_size_mb (a single larger object gets its own)."""
    # cfg's own ranges are checked by ShardConfig.__post_init__.
    if len(set(uids)) != len(uids):
        raise UserError("duplicate uids in the input; each object must appear once")
    max_bytes = int(cfg.max_size_mb * 1e6)
    out: list[ShardSpec] = []
    for split in schema.SPLITS:
        members = sorted(
            (u for u in uids if split_of(u, cfg.val_fraction) == split), key=lambda u: order_key(cfg.seed, u)
        )
        groups: list[list[str]] = []  # uids per shard of this split, and their estimated bytes
        group_bytes: list[int] = []
        for uid in members:
            s = int(sizes[uid])
            if not groups or len(groups[-1]) >= cfg.max_count or group_bytes[-1] + s > max_bytes:
                groups.append([])
                group_bytes.append(0)
            groups[-1].append(uid)
            group_bytes[-1] += s
        out += [
            ShardSpec(schema.shard_name(split, i), split, tuple(g), b)
            for i, (g, b) in enumerate(zip(groups, group_bytes, strict=True))
        ]
    return out
