"""The streaming multi-view loader (docs/design.md §2.4): shards -> batches of B objects x V views for
training.

Model code knows nothing of it: a batch is a dict of tensors and strings.

Exact resume by construction: no running RNG anywhere. Each rank splits its shards into ``W`` logical streams
(one per DataLoader worker); a stream is an endless sequence of shard *visits* (webdataset's resampled shards),
visit ``k`` choosing its shard and shuffle from ``(seed, kind, rank, stream, k)``, each sample's views and
background from ``(seed, kind, rank, stream, k, i)`` with ``i`` its place in the visit. A batch carries the
position ``(k, i)`` its stream reached, the main process keeps the position of every stream from the batches it
consumed, and a restored loader replays a visit without decoding up to that position. The DataLoader serves
workers round-robin, so after ``n`` consumed batches the loader rotates the stream-to-worker mapping by
``n mod W`` and the next batch comes from the right stream.

3D vs 2D per step comes from ``(seed, step)`` only, so every DDP rank takes the same branch (docs/design.md
§2.4). Every rank yields exactly ``batches_per_epoch`` batches per epoch (webdataset's with_epoch): streams
are endless, so uneven shards never make one rank stop early and hang the others.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mvforge.cameras import normalize_camera
from mvforge.errors import ShardDamaged, UserError
from mvforge.formats import shards as schema
from mvforge.shards.config import LoaderConfig

log = logging.getLogger("mvforge.shards.loader")

# Integer tags separating the random streams derived from one seed.
TAG_STEP, TAG_VISIT, TAG_SAMPLE = 1, 2, 3
KIND_ID = {"3d": 3, "2d": 2}
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is the counter it is reported under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# ---------------------------------------------------------------- shard lists and ranks
def resolve_shards(source: str | Sequence[str], split: str = "train", storage_options: dict | None = None):
    """(shard URLs, total samples or None) for a shard directory/URL with index.json, a brace pattern
    ("train-{000000..000009}.tar") or a list of tar URLs."""
    from braceexpand import braceexpand

    if isinstance(source, (list, tuple)):
        return sorted(str(s) for s in source), None
    source = str(source)
    if source.endswith(".tar"):
        urls = sorted(braceexpand(source))
        missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.isfile(u)]
        if missing:
            raise UserError(
                f"shard {missing[0]} does not exist; pass existing .tar files (or a brace pattern)"
            )
        return urls, None
    from mvforge.fsutil import open_fs

    fs, root = open_fs(source, storage_options)
    index = schema.read_index(fs, root)
    if index is None:
        raise UserError(
            f"{source} has no {schema.INDEX}; pass a 3D shard directory (`mvdata shard --out`), or .tar files "
            "such as the 2D pairs of `--views-2d` (DIR/2d-000000.tar, or a brace pattern)"
        )
    entries = [s for s in index["shards"] if s["split"] == split]
    if not entries:
        raise UserError(f"{source} holds no {split} shard; lower --val-fraction or pass other shards")
    base = source.rstrip("/")
    return [f"{base}/{s['name']}" for s in entries], sum(s["nsamples"] for s in entries)


def shard_digests(source: str | Sequence[str], split: str = "train", storage_options: dict | None = None):
    """{shard URL: sha256} from the index.json of a shard directory (as :func:`resolve_shards` lists them);
    empty for tar files and patterns, which carry no index."""
    if isinstance(source, (list, tuple)) or str(source).endswith(".tar"):
        return {}
    from mvforge.fsutil import open_fs

    fs, root = open_fs(str(source), storage_options)
    index = schema.read_index(fs, root) or {"shards": []}
    base = str(source).rstrip("/")
    return {f"{base}/{s['name']}": s["sha256"] for s in index["shards"] if s.get("sha256")}


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's (rank, world size): explicit, else torch.distributed when initialised, else RANK /
    WORLD_SIZE from the environment (torchrun, Ray Train), else (0, 1)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def stream_shards(shards: Sequence[str], rank: int, world: int, n_streams: int) -> list[list[str]]:
    """Shards of each logical stream of ``rank``: split by node, then by worker (docs/design.md §2.4)."""
    if len(shards) < world:
        raise UserError(
            f"{len(shards)} shard(s) for {world} ranks: ranks would read the same data; "
            "write smaller shards (mvdata shard --max-count) or train on fewer ranks"
        )
    mine = list(shards)[rank::world]
    if len(mine) < n_streams:
        warnings.warn(
            f"rank {rank} has {len(mine)} shard(s) for {n_streams} loader workers (n_shards < ranks x workers): "
            "its workers resample the same shards; write smaller shards for disjoint workers",
            stacklevel=3,
        )
        return [mine] * n_streams
    return [mine[w::n_streams] for w in range(n_streams)]


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(p) for p in parts])


def step_is_3d(seed: int, step: int, p_3d: float) -> bool:
    """The branch of global step ``step``: a function of (seed, step) only, identical on every rank."""
    return bool(_rng(seed, TAG_STEP, step).random() < p_3d)


# ---------------------------------------------------------------- decoding
def _background(rng: np.random.Generator, cfg: LoaderConfig) -> np.ndarray:
    """RGB background as 8-bit levels (3,); the random grey is one level per object so its views agree."""
    if cfg.background == "random_grey":
        return np.full(3, int(rng.integers(0, 256)), dtype=np.int64)
    if cfg.background == "white":
        return np.full(3, 255, dtype=np.int64)
    return np.asarray(cfg.background_rgb, dtype=np.int64)


def _decode_rgba(data: bytes, min_size: int | None = None) -> np.ndarray:
    """(H, W, 4) uint8. ``min_size``: a JPEG may be decoded at a 1/2, 1/4 or 1/8 scale whose sides stay
    >= min_size (PIL's draft: the DCT skips the detail a later downscale would drop; LAION images are large)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if min_size is not None and im.format == "JPEG":
                im.draft("RGB", (min_size, min_size))
            im.load()
            # Renders are RGBA already: no convert (it would copy the image once more).
            return np.asarray(im if im.mode == "RGBA" else im.convert("RGBA"))
    except Exception as e:  # PIL raises many types for corrupt data
        raise BadSample("undecodable_image", type(e).__name__) from None


def composite(rgba: np.ndarray, bg: np.ndarray) -> torch.Tensor:
    """Straight-alpha RGBA uint8 (N, H, W, 4) over 8-bit backgrounds, (3,) or one per image (N, 3) ->
    float32 (N, 3, H, W) in [-1, 1] (docs/design.md §6: Blender's PNG alpha is straight).

    (rgb*a + bg*(255-a)) / 255^2 * 2 - 1 is computed as (rgb - bg) * a * 2/255^2 + (2 bg/255 - 1), in place
    on planar float32: four passes over the pixels instead of eight. Planar first, because the same math on
    channels-last memory ran 2x slower (docs/bench/shards.md).
    """
    if not rgba.flags.writeable:  # e.g. np.asarray of a PIL image (read-only); torch wants writable memory
        rgba = rgba.copy()
    x = torch.from_numpy(rgba).permute(0, 3, 1, 2).contiguous()  # planar uint8 first: a cheap copy
    bg_t = torch.as_tensor(bg, dtype=torch.float32).view(-1, 3, 1, 1)
    out = x[:, :3].float().sub_(bg_t).mul_(x[:, 3:].float())
    return out.mul_(2.0 / 65025.0).add_(bg_t * (2.0 / 255.0) - 1.0)


def _resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """(N, 3, h, w) -> (N, 3, R, R), antialiased bilinear (no-op at the native size)."""
    if images.shape[-2:] == (resolution, resolution):
        return images
    return torch.nn.functional.interpolate(
        images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
    )


def batch_images(
    views: list[list[np.ndarray]], backgrounds: list[np.ndarray], resolution: int
) -> torch.Tensor:
    """(B, V, 3, R, R) float32 in [-1, 1] from B samples of V RGBA uint8 views (h, w, 4) and their 8-bit
    backgrounds (3,).

    One composite and one resize over the whole batch: the only stack is of uint8 views (4 bytes a pixel)
    rather than of finished float32 images (12 bytes a pixel), about a tenth of the loader's time at 256².
    Samples of different sizes (2D crops, renders of another resolution) go one by one.
    """
    b, v = len(views), len(views[0])
    if len({im.shape for vs in views for im in vs}) > 1:
        return torch.stack(
            [batch_images([vs], [bg], resolution)[0] for vs, bg in zip(views, backgrounds, strict=True)]
        )
    rgba = np.stack([im for vs in views for im in vs])  # (B*V, h, w, 4), writable
    bg = np.repeat(np.stack(backgrounds), v, axis=0)  # (B*V, 3): one background per sample
    return _resize(composite(rgba, bg), resolution).view(b, v, 3, resolution, resolution)


def choose_views(views: list[dict], rng: np.random.Generator, cfg: LoaderConfig) -> list[int]:
    """View indices: one orbit, then a random start and +360/V azimuth steps (nearest rendered azimuth), or
    V distinct random views in random-view mode."""
    orbits = sorted({int(v["orbit"]) for v in views})
    orbit = orbits[int(rng.integers(len(orbits)))]
    ring = sorted((v for v in views if int(v["orbit"]) == orbit), key=lambda v: float(v["azimuth_deg"]))
    if len(ring) < cfg.num_views:
        raise BadSample("too_few_views", f"orbit {orbit} has {len(ring)} views, num_views is {cfg.num_views}")
    if cfg.view_mode == "random":
        return [int(ring[i]["index"]) for i in rng.choice(len(ring), cfg.num_views, replace=False)]
    az = np.array([float(v["azimuth_deg"]) for v in ring])
    start = int(rng.integers(len(ring)))
    picked = []
    for j in range(cfg.num_views):
        target = az[start] + 360.0 * j / cfg.num_views
        d = np.abs((az - target + 180.0) % 360.0 - 180.0)
        picked.append(int(ring[int(np.argmin(d))]["index"]))
    if len(set(picked)) < len(picked):  # the orbit's azimuths do not go round the object
        raise BadSample("no_orthogonal_views", f"azimuths {sorted(set(az.round(1).tolist()))}")
    return picked


def decode_3d(raw: dict, rng: np.random.Generator, cfg: LoaderConfig) -> dict:
    """One object: V decoded RGBA views and their background (composited per batch), (V, 16) cameras,
    caption. Raises BadSample."""
    for ext in (schema.JSON_EXT, schema.CAMERAS_EXT):
        if ext not in raw:
            raise BadSample("missing_member", ext)
    try:
        doc = json.loads(raw[schema.JSON_EXT].decode("utf-8"))
        views = doc["views"]
        c2w = schema.load_npy(raw[schema.CAMERAS_EXT])
    except Exception as e:
        raise BadSample("bad_metadata", type(e).__name__) from None
    position = {int(v["index"]): i for i, v in enumerate(views)}
    picked = choose_views(views, rng, cfg)
    bg = _background(rng, cfg)
    rgba = []
    for index in picked:
        ext = schema.png_ext(index)
        if ext not in raw:
            raise BadSample("missing_view", ext)
        rgba.append(_decode_rgba(raw[ext]))
    if len({im.shape for im in rgba}) != 1:
        raise BadSample("mixed_view_sizes")
    cams = c2w[[position[i] for i in picked]]
    if not np.all(np.isfinite(cams)):
        raise BadSample("non_finite_camera")
    caption = raw.get(schema.TXT_EXT, b"").decode("utf-8", errors="replace").strip()
    return {
        "rgba": rgba,
        "cameras": torch.from_numpy(normalize_camera(cams)),
        "caption": caption + cfg.caption_suffix,
        "uid": raw["__key__"],
        "views": picked,
        "background": bg,
    }


def decode_2d(raw: dict, rng: np.random.Generator, cfg: LoaderConfig) -> dict:
    """One image-text pair (img2dataset layout): the decoded, centre-cropped square and its background."""
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None:
        raise BadSample("missing_member", "image")
    if schema.TXT_EXT not in raw:
        raise BadSample("missing_member", "txt")
    bg = _background(rng, cfg)
    rgba = _decode_rgba(raw[ext], min_size=cfg.resolution)
    h, w = rgba.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return {
        "rgba": [rgba[top : top + s, left : left + s]],
        "caption": raw[schema.TXT_EXT].decode("utf-8", errors="replace").strip(),
        "uid": raw["__key__"],
        "background": bg,
    }


# ---------------------------------------------------------------- one logical stream
def _open_samples(url: str, storage_options: dict | None, expected: str | None = None, failed=None):
    """Raw samples of one shard; a local path or any fsspec URL (webdataset's gopen has no s3://, §6).

    With ``expected`` (index.json's sha256: a shard the index lists) the shard is hashed as it streams, and
    "sha256" is appended to ``failed`` when the digest differs at its end, "missing" when the file is not
    there. A shard whose tar cannot be parsed (truncated, overwritten) is hashed to its
    end before the error goes on, so damage the digest sees is a failure, not only an unreadable visit; a read
    that fails (an I/O error) leaves the digest unchecked."""
    import fsspec

    try:
        f = fsspec.open(url, "rb", **(storage_options or {})).open()
    except FileNotFoundError:
        if expected:
            failed.append("missing")
        raise
    with f:
        reader = schema.ShardReader(f, url, hash=bool(expected))
        try:
            yield from schema.iter_raw_samples(reader, url)
        except Exception:
            if expected and _drained(reader) not in (None, expected):
                failed.append("sha256")
            raise
        if expected and reader.drain() != expected:
            failed.append("sha256")


def _drained(reader: schema.ShardReader) -> str | None:
    """The digest of a shard whose parsing failed, or None when reading its rest fails too."""
    try:
        return reader.drain()
    except Exception:
        return None


def _raw_size(raw: dict) -> int:
    return sum(len(v) for v in raw.values() if isinstance(v, bytes | str))


class _ShardCache:
    """Raw samples of whole shards kept in memory up to ``budget`` bytes (``LoaderConfig.cache_mb``)."""

    def __init__(self, budget: float):
        self.budget, self.used = budget, 0
        self.shards: dict[str, list[dict]] = {}

    def samples(self, url: str, storage_options, expected: str | None, failed: list) -> Iterator[dict]:
        """The raw samples of one visit of ``url``: from memory when kept, else streamed, and kept when the
        whole shard was read, fits in what is left of the budget and matched its digest."""
        if url in self.shards:
            yield from self.shards[url]
            return
        kept: list[dict] | None = [] if self.used < self.budget else None
        size = 0
        for raw in _open_samples(url, storage_options, expected, failed):
            if kept is not None:
                size += _raw_size(raw)
                if self.used + size > self.budget:
                    kept = None
                else:
                    kept.append(raw)
            yield raw
        # Reached only when the visit read the shard to its end (a visit cut short is closed before here).
        if kept is not None and not failed:
            self.shards[url] = kept
            self.used += size


def _visit(
    url: str,
    rng: np.random.Generator,
    buffer: int,
    samples: Iterator[dict],
    bad: Counter,
) -> Iterator[dict]:
    """One visit of a shard: its raw ``samples`` through a seeded shuffle buffer (deterministic given rng)."""
    buf: list[dict] = []
    try:
        for raw in samples:
            buf.append(raw)
            if len(buf) > buffer:
                j = int(rng.integers(len(buf)))
                buf[j], buf[-1] = buf[-1], buf[j]
                yield buf.pop()
    except Exception as e:  # a truncated or unreadable shard ends its visit; counted, not fatal
        bad["unreadable_shard"] += 1
        log.warning("shard %s unreadable (%s: %s); visit ends early", url, type(e).__name__, e)
    while buf:
        j = int(rng.integers(len(buf)))
        buf[j], buf[-1] = buf[-1], buf[j]
        yield buf.pop()


@dataclass
class _Stream:
    kind: str
    shards: list[str]
    cfg: LoaderConfig
    rank: int
    stream: int
    batch_size: int
    storage_options: dict | None = None
    digests: dict[str, str] | None = None
    """index.json's sha256 per shard URL, checked as each visit streams its shard."""
    cache: _ShardCache | None = None
    """The shards this stream keeps in memory (``LoaderConfig.cache_mb``); made on first use."""

    def batches(self, visit: int, offset: int) -> Iterator[dict]:
        """Endless batches from position (visit, offset): ``offset`` samples of ``visit`` already consumed."""
        cfg = self.cfg
        kid = KIND_ID[self.kind]
        decode = decode_3d if self.kind == "3d" else decode_2d
        bad: Counter = Counter()
        mismatched: list[tuple[str, int, str]] = []  # (shard, visit, reason) failed since the last batch
        items: list[dict] = []
        empty_visits = 0
        while True:
            vrng = _rng(cfg.seed, TAG_VISIT, kid, self.rank, self.stream, visit)
            url = self.shards[int(vrng.integers(len(self.shards)))]
            good = 0
            expected = (self.digests or {}).get(url)
            if self.cache is None:
                self.cache = _ShardCache(cfg.cache_mb * 1e6)
            found: list[str] = []  # why this visit's shard failed its index entry ("sha256", "missing")
            raws = self.cache.samples(url, self.storage_options, expected, found)
            samples = _visit(url, vrng, cfg.shuffle_buffer, raws, bad)
            for i, raw in enumerate(samples):
                if i < offset:
                    if i == offset - 1:
                        # The bad samples the replay met up to here were counted in the batches before the
                        # checkpoint: count them once. A failed digest is not cleared: the shard may have been
                        # damaged after the checkpoint; the loader knows which visits it already reported.
                        bad.clear()
                    continue  # replaying up to the restored position: read, never decoded
                srng = _rng(cfg.seed, TAG_SAMPLE, kid, self.rank, self.stream, visit, i)
                try:
                    items.append(decode(raw, srng, cfg))
                    good += 1
                except BadSample as e:
                    bad[e.reason] += 1
                    log.warning("skipped %s sample %s of %s: %s", self.kind, raw.get("__key__"), url, e)
                    continue
                if len(items) == self.batch_size:
                    mismatched += [(url, visit, why) for why in found]
                    found.clear()
                    yield self._collate(items, (self.stream, visit, i + 1), bad, mismatched)
                    items = []
                    bad.clear()
                    mismatched.clear()
            mismatched += [(url, visit, why) for why in found]
            empty_visits = 0 if good else empty_visits + 1
            if empty_visits >= cfg.max_empty_visits:
                hint = (
                    "lower num_views to the views rendered per orbit"
                    if "too_few_views" in bad
                    else "check the shards with `mvdata verify`"
                )
                raise UserError(
                    f"{self.kind} stream {self.stream} of rank {self.rank}: {empty_visits} shard visits in a row "
                    f"gave no usable sample (skipped: {dict(bad)}); {hint}"
                )
            visit, offset = visit + 1, 0

    def _collate(
        self, items: list[dict], position: tuple[int, int, int], bad: Counter, mismatched: list
    ) -> dict:
        out = {
            "kind": self.kind,
            "images": batch_images(
                [x["rgba"] for x in items], [x["background"] for x in items], self.cfg.resolution
            ),
            "captions": [x["caption"] for x in items],
            "uids": [x["uid"] for x in items],
            "backgrounds": torch.from_numpy(
                (np.stack([x["background"] for x in items]) / 255.0).astype(np.float32)
            ),
            "cameras": torch.stack([x["cameras"] for x in items]) if self.kind == "3d" else None,
            "_position": position,
            "_bad": dict(bad),
            "_mismatched": list(mismatched),
        }
        if self.kind == "3d":
            out["views"] = torch.tensor([x["views"] for x in items])
        return out


class _StreamDataset(torch.utils.data.IterableDataset):
    """The W logical streams of one rank; DataLoader worker p serves stream (p + rotate) mod W."""

    def __init__(self, streams: list[_Stream], positions: list[tuple[int, int]], rotate: int):
        self.streams, self.positions, self.rotate = streams, positions, rotate

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        physical = info.id if info is not None else 0
        logical = (physical + self.rotate) % len(self.streams)
        visit, offset = self.positions[logical]
        yield from self.streams[logical].batches(visit, offset)


# ---------------------------------------------------------------- the loader
class MultiViewLoader:
    """Iterate it once per epoch: ``for batch in loader`` yields the epoch's remaining batches.

    A batch: ``kind`` ("3d" | "2d"), ``images`` float32 (B, V, 3, H, W) in [-1, 1] (V = 1 for 2D),
    ``cameras`` (B, V, 16) or None for 2D, ``captions``, ``uids``, ``backgrounds`` (B, 3) in [0, 1],
    ``views`` (B, V) rendered view indices (3D), ``step`` and ``epoch``. ``split`` picks the 3D shards' split
    ("val" reads the held-out views of `mvdata shard --val-views`); 2D shards have no split.
    """

    def __init__(
        self,
        shards_3d: str | Sequence[str],
        cfg: LoaderConfig = LoaderConfig(),
        *,
        shards_2d: str | Sequence[str] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        storage_options: dict | None = None,
        split: str = "train",
    ):
        self.cfg = cfg  # validated by LoaderConfig.__post_init__
        self.rank, self.world_size = rank_and_world(rank, world_size)
        self.n_streams = max(1, cfg.num_workers)
        urls_3d, total = resolve_shards(shards_3d, split, storage_options)
        self.batches_per_epoch = cfg.batches_per_epoch or (
            max(1, total // (cfg.batch_size * self.world_size)) if total else None
        )
        if not self.batches_per_epoch:
            raise UserError("set batches_per_epoch when the 3D shards are given as tar files (no index.json)")
        sizes = {"3d": cfg.batch_size, "2d": cfg.batch_size_2d or cfg.batch_size * cfg.num_views}
        self.kinds = {"3d": urls_3d}
        digests = {"3d": shard_digests(shards_3d, split, storage_options)}
        if shards_2d is not None:
            self.kinds["2d"] = resolve_shards(shards_2d, "train", storage_options)[0]
        self.streams = {
            kind: [
                _Stream(kind, s, cfg, self.rank, w, sizes[kind], storage_options, digests.get(kind))
                for w, s in enumerate(stream_shards(urls, self.rank, self.world_size, self.n_streams))
            ]
            for kind, urls in self.kinds.items()
        }
        self.epoch = 0
        self.batch_in_epoch = 0
        self.step = 0
        self.consumed = {k: 0 for k in self.kinds}
        self.positions = {k: [(0, 0)] * self.n_streams for k in self.kinds}
        self.bad: Counter = Counter()
        self.reported: set[tuple[str, int, int]] = set()
        """(kind, stream, visit) of the shard failures already applied, for the visit a resume replays."""
        self._live: dict[str, Iterator] = {}

    def __len__(self) -> int:
        return self.batches_per_epoch

    def kind_of_step(self, step: int) -> str:
        if "2d" not in self.kinds:
            return "3d"
        return "3d" if step_is_3d(self.cfg.seed, step, self.cfg.p_3d) else "2d"

    def _iterator(self, kind: str) -> Iterator[dict]:
        if kind not in self._live:
            ds = _StreamDataset(
                self.streams[kind], list(self.positions[kind]), self.consumed[kind] % self.n_streams
            )
            if self.cfg.num_workers == 0:
                self._live[kind] = iter(ds)
            else:
                self._live[kind] = iter(
                    torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.cfg.num_workers)
                )
        return self._live[kind]

    def __iter__(self) -> Iterator[dict]:
        if self.batch_in_epoch >= self.batches_per_epoch:
            # The previous epoch's last batch was taken but its loop stopped there (a `break`, or a state
            # saved right after it): that epoch is over, this loop is the next one.
            self._end_epoch()
        while self.batch_in_epoch < self.batches_per_epoch:
            kind = self.kind_of_step(self.step)
            batch = next(self._iterator(kind))
            stream, visit, offset = batch.pop("_position")
            self.positions[kind][stream] = (visit, offset)
            self.consumed[kind] += 1
            self.bad.update(batch.pop("_bad"))
            self._check_digests(kind, stream, batch.pop("_mismatched"))
            batch["step"], batch["epoch"] = self.step, self.epoch
            self.step += 1
            self.batch_in_epoch += 1
            yield batch
        self._end_epoch()

    def _check_digests(self, kind: str, stream: int, mismatched: list[tuple[str, int, str]]) -> None:
        """Apply ``on_checksum_mismatch`` to shards whose streamed bytes failed index.json's sha256 ("sha256")
        or that index.json lists but are not there ("missing"), once per visit (one shard each). A resume
        replays the visit it stopped in: a failure reported before the checkpoint is in ``reported`` (saved
        with the state); one the replay meets for the first time (damage done after the checkpoint) is new."""
        current = self.positions[kind][stream][0]
        new = [m for m in mismatched if (kind, stream, m[1]) not in self.reported]
        # A resume replays from this batch's visit on: failures of earlier visits cannot come back
        self.reported = {r for r in self.reported if r[:2] != (kind, stream) or r[2] >= current}
        self.reported |= {(kind, stream, visit) for _, visit, _ in new if visit >= current}
        for url, _, why in new:
            root = url.rsplit("/", 1)[0]
            if why == "missing":
                self.bad["missing_shard"] += 1
                problem = f"shard {url} is listed in {root}/{schema.INDEX} but is not there"
                fix = "restore it, or rerun `mvdata shard` with the same --out to rewrite it"
            else:
                self.bad["checksum_mismatch"] += 1
                problem = (
                    f"shard {url} does not match the sha256 in {root}/{schema.INDEX} "
                    "(its samples were already read)"
                )
                fix = "delete it and rerun `mvdata shard` with the same --out to rewrite it"
            if self.cfg.on_checksum_mismatch == "stop":
                raise ShardDamaged(
                    f"{problem}; run `mvdata verify {root}` and {fix}, or set loader.on_checksum_mismatch=count "
                    "to go on"
                )
            log.warning("%s; counted, training goes on", problem)

    def _end_epoch(self) -> None:
        if self.bad:
            log.warning("epoch %d: skipped so far (every epoch): %s", self.epoch, dict(self.bad))
        self.epoch += 1
        self.batch_in_epoch = 0

    def state_dict(self) -> dict:
        """Everything a checkpoint needs to resume the exact batch sequence (JSON-able)."""
        return {
            "version": 1,
            "seed": self.cfg.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_workers": self.cfg.num_workers,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "streams": {
                k: {"consumed": self.consumed[k], "positions": [list(p) for p in self.positions[k]]}
                for k in self.kinds
            },
            "bad": dict(self.bad),
            "reported_mismatches": sorted(list(r) for r in self.reported),
        }

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (
            ("seed", self.cfg.seed),
            ("rank", self.rank),
            ("world_size", self.world_size),
            ("num_workers", self.cfg.num_workers),
        ):
            if state.get(key) != mine:
                raise UserError(
                    f"loader state was saved with {key}={state.get(key)}, this loader has {mine}; "
                    f"resume with the same {key} (the batch sequence depends on it)"
                )
        if set(state["streams"]) != set(self.kinds):
            raise UserError(
                "loader state and loader disagree on 2D shards; pass the same --shards-2d on resume"
            )
        self._live.clear()
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        for k, s in state["streams"].items():
            self.consumed[k] = int(s["consumed"])
            self.positions[k] = [tuple(int(x) for x in p) for p in s["positions"]]
        self.bad = Counter(state["bad"])
        self.reported = {tuple(r) for r in state.get("reported_mismatches", [])}
