"""`mvdata shard`: a render directory -> deterministic webdataset shards, one Ray task per shard
(docs/design.md §2.3, §4).

Order of work: read the input (render dir, optional selection), plan (pure, mvforge.shards.plan), skip shards
whose marker matches the plan (resume), write the others as Ray tasks (tar to ``<name>.tmp-<pid>``, rename,
then the ``<name>.stats.json`` marker), write the dataset card ``README.md``, and ``index.json`` last. The output may be a local directory
or any fsspec URL (s3://, gs://, ...); a rename there is the file system's move.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from mvforge import rundir
from mvforge.config import to_dict, to_toml
from mvforge.errors import UserError
from mvforge.formats import renders as layout
from mvforge.formats import selection as selection_format
from mvforge.fsutil import name_failure, open_fs, put_bytes_atomic, read_bytes_or_none, tmp_url
from mvforge.shards import card, schema
from mvforge.shards.config import ShardConfig
from mvforge.shards.plan import ShardSpec, plan_shards

CARD = "README.md"
"""The dataset card (``mvforge.shards.card``), written before index.json."""


def read_json(fs, path: str) -> dict | None:
    """A shard marker (``<name>.stats.json``), None when it does not exist."""
    data = read_bytes_or_none(fs, path)
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        raise UserError(
            f"{path} is not valid JSON; delete it and re-run `mvdata shard` with the same --out"
        ) from None


def _saved_config(fs, path: str) -> dict | None:
    """The settings a shard output was made with (its config.toml, read through fsspec: ``--out`` may be a
    URL), None when it has none."""
    import tomllib

    data = read_bytes_or_none(fs, path)
    if data is None:
        return None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not TOML ({e}); delete it to start over, or pass another --out") from None


# ---------------------------------------------------------------- input
def load_selection(path: str | Path) -> list[str]:
    """Uids of the kept rows of a filter selection (docs/design.md §2.2; the reader is the format's own)."""
    return selection_format.kept_uids(path)


@dataclass(frozen=True)
class ShardInput:
    """What `mvdata shard` shards: finished renders, optionally restricted to a filter selection."""

    uids: list[str]
    """Uids to shard, sorted."""
    sizes: dict[str, int]
    """Estimated shard bytes per uid (schema.object_size_bytes), for max_size_mb."""
    not_rendered: list[str]
    """Selected uids without a finished render (reported, not sharded)."""


def collect_input(
    renders: str | Path, selection: str | Path | None, exclude: tuple[str, ...] = ()
) -> ShardInput:
    renders = Path(renders)
    ok = list(layout.iter_uids(renders))  # raises UserError when the directory is missing
    unknown = sorted(set(exclude) - set(ok))
    if unknown:
        raise UserError(f"--exclude {unknown[0]}: no finished render of it in {renders}; check the uid")
    ok = [u for u in ok if u not in set(exclude)]
    if selection is not None:
        wanted = load_selection(selection)
        if not wanted:
            raise UserError(
                f"selection {selection} keeps no object; lower filter's threshold or drop --selection"
            )
        ok_set = set(ok)
        uids = [u for u in wanted if u in ok_set]
        not_rendered = [u for u in wanted if u not in ok_set and u not in exclude]
        if not uids:
            raise UserError(
                f"none of the {len(wanted)} selected objects has a finished render in {renders}; "
                "pass the render directory the selection was made from"
            )
    else:
        uids, not_rendered = ok, []
    if not uids:
        raise UserError(f"render directory {renders} holds no finished object; run `mvdata render` first")
    sizes = {u: schema.object_size_bytes(layout.object_dir(renders, u)) for u in uids}
    return ShardInput(uids, sizes, not_rendered)


# ---------------------------------------------------------------- one shard (runs in a Ray task)
def write_shard(spec: ShardSpec, renders: str, out: str, storage_options: dict | None = None) -> dict:
    """Write one shard and its marker; returns the marker. Objects that cannot be read are skipped and listed."""
    fs, root = open_fs(out, storage_options)
    start = time.monotonic()
    skipped: list[dict] = []

    def samples():
        for uid in spec.uids:
            obj = layout.RenderedObject(uid, layout.object_dir(renders, uid))
            try:
                members = schema.object_members(obj, spec.keep_views, spec.drop_views)
            except schema.ViewSetError as e:
                skipped.append({"uid": uid, "reason": "missing_val_view", "message": str(e)})
                continue
            except FileNotFoundError as e:
                skipped.append({"uid": uid, "reason": "missing_file", "message": Path(e.filename or "").name})
                continue
            except schema.BadViewError as e:
                skipped.append({"uid": uid, "reason": "unreadable_view", "message": str(e)[:200]})
                continue
            except (ValueError, KeyError) as e:  # unreadable cameras.json / meta.json
                skipped.append({"uid": uid, "reason": "bad_metadata", "message": str(e)[:200]})
                continue
            yield uid, members

    final = f"{root}/{spec.name}"
    tmp = tmp_url(final)
    try:
        with fs.open(tmp, "wb") as f:
            hw = schema.HashingWriter(f)
            n = schema.write_samples(hw, samples())
        fs.mv(tmp, final)
    except BaseException as e:
        with contextlib.suppress(Exception):  # a full disk: no partial tar left behind (docs/reliability.md)
            fs.rm(tmp)
        name_failure(e, final)
        raise
    marker = {
        "name": spec.name,
        "split": spec.split,
        "nsamples": n,
        "bytes": hw.nbytes,
        "sha256": hw.sha.hexdigest(),
        "digest": spec.digest,
        "skipped": skipped,
        "seconds": round(time.monotonic() - start, 3),
    }
    put_bytes_atomic(fs, f"{root}/{schema.stats_name(spec.name)}", schema.json_bytes(marker))
    return marker


# ---------------------------------------------------------------- the stage
def _remove_temporaries(fs, root: str) -> None:
    """Delete every ``*.tmp-<pid>`` file in the output: only this stage writes there, one run at a time."""
    for p in fs.glob(f"{root}/*.tmp-*"):
        fs.rm(p)
    fs.invalidate_cache()


def index_document(specs: list[ShardSpec], markers: dict[str, dict], cfg: ShardConfig, source: dict) -> dict:
    """index.json: per shard name/split/nsamples/bytes/sha256, totals per split, skipped objects, the config.

    Only content goes in (no timings, no worker count), so an interrupted-then-resumed run and an
    uninterrupted one write the same document.
    """
    from mvforge import __version__

    shards = [
        {k: markers[s.name][k] for k in ("name", "split", "nsamples", "bytes", "sha256")} for s in specs
    ]
    totals: dict = {"shards": len(shards), "samples": 0, "bytes": 0}
    for split in schema.SPLITS:
        part = [s for s in shards if s["split"] == split]
        totals[split] = {
            "shards": len(part),
            "samples": sum(s["nsamples"] for s in part),
            "bytes": sum(s["bytes"] for s in part),
        }
        totals["samples"] += totals[split]["samples"]
        totals["bytes"] += totals[split]["bytes"]
    # An object with held-out views is in a train and a val shard: skipped once, listed once.
    once = {(x["uid"], x["reason"]): x for s in specs for x in markers[s.name]["skipped"]}
    skipped = sorted(once.values(), key=lambda x: (x["uid"], x["reason"]))
    config = rundir.content_settings(to_dict(cfg))
    return {
        "format": schema.FORMAT,
        "format_version": schema.FORMAT_VERSION,
        "mvforge": __version__,
        "shards": shards,
        "totals": totals,
        "skipped": skipped,
        "config": config,
        "source": source,
    }


def _check_val_views(renders: str | Path, uid: str, val_views: tuple[int, ...]) -> None:
    """Refuse held-out views the first object was not rendered with (a later object that lacks them is skipped
    as ``missing_val_view``), and, per orbit, held-out views that are neither the whole orbit nor whole sets of 4
    views 90° apart (unchanged by a quarter turn): the loader draws such orthogonal sets (paper §3.3), so both
    splits must keep them whole (docs/shards.md)."""
    if not val_views:
        return
    views = layout.RenderedObject(uid, layout.object_dir(renders, uid)).cameras["views"]
    indices = [int(v["index"]) for v in views]
    missing = sorted(set(val_views) - set(indices))
    if missing:
        raise UserError(
            f"--val-views {missing[0]}: {uid} was rendered with views {indices[0]}-{indices[-1]}; "
            "pass indices among them"
        )
    if set(indices) <= set(val_views):
        raise UserError(f"--val-views holds every view of {uid}; hold out fewer views")
    for orbit in sorted({int(v["orbit"]) for v in views}):
        ring = [
            int(v["index"])
            for v in sorted(views, key=lambda v: float(v["azimuth_deg"]))
            if int(v["orbit"]) == orbit
        ]
        n, held = len(ring), {i for i, index in enumerate(ring) if index in val_views}
        if not held or len(held) == n:
            continue
        if n % 4 or {(i + n // 4) % n for i in held} != held:
            example = (
                ",".join(str(ring[j]) for j in range(min(held) % (n // 4), n, n // 4))
                if n % 4 == 0
                else f"{min(ring)}-{max(ring)} (the whole orbit)"
            )
            raise UserError(
                f"--val-views: the {len(held)} views held out of orbit {orbit} are not whole sets of 4 views 90° "
                f"apart, nor the whole orbit; the loader draws such sets: hold out e.g. --val-views {example}"
            )


@rundir.locked("mvdata shard", lambda out, **_: out)
def run_shard(
    renders: str | Path,
    out: str,
    cfg: ShardConfig,
    *,
    selection: str | Path | None = None,
    address: str | None = None,
    storage_options: dict | None = None,
    show_progress: bool = True,
) -> dict:
    """Shard ``renders`` into ``out`` (path or URL); resumes from markers; returns the index document."""
    if "://" not in str(out):
        layout.check_not_render_dir(out, "mvdata shard")
    inp = collect_input(renders, selection, cfg.exclude)
    _check_val_views(renders, inp.uids[0], cfg.val_views)
    specs = plan_shards(inp.uids, inp.sizes, cfg)
    fs, root = open_fs(out, storage_options)
    fs.makedirs(root, exist_ok=True)
    fs.invalidate_cache()

    # 1. Resume: the settings, then the plan; the markers of the shards already written.
    markers = _resume_markers(fs, root, out, cfg, specs)
    # Recorded before the first shard, so the resume of a killed run is compared with it.
    put_bytes_atomic(fs, f"{root}/{rundir.CONFIG}", to_toml(cfg).encode("utf-8"))
    todo = [s for s in specs if s.name not in markers]
    # A partial file of a killed run (tar, marker, index) is redone: drop every temporary left here.
    _remove_temporaries(fs, root)

    # 2. The shards left, in-process or as Ray tasks.
    start = time.monotonic()
    renders_s = str(Path(renders).resolve())
    out_url = fs.unstrip_protocol(root)  # absolute, so a Ray worker with another cwd writes to the same place
    run = _ShardRun(renders_s, out_url, cfg, address, storage_options)
    written_bytes = _write_todo(run, todo, len(specs), markers, show_progress)
    elapsed = time.monotonic() - start
    _remove_temporaries(fs, root)  # a task Ray retried after its worker died leaves its partial tar behind

    # 3. The dataset card and index.json (last: the set is complete).
    index = _publish(fs, root, specs, markers, cfg, inp, renders, selection, renders_s)
    if show_progress:
        _summary(out, index, inp, len(todo), len(specs) - len(todo), written_bytes, elapsed)
    return index


def _resume_markers(fs, root: str, out: str, cfg: ShardConfig, specs: list[ShardSpec]) -> dict[str, dict]:
    """The markers (shard name -> stats document) of the planned shards already in ``root``. Raises UserError
    when ``out`` holds shards made with other settings, or of another plan (another input or config)."""
    # First the settings, by the comparison every stage shares (docs/design.md §5; `workers` is an execution
    # setting), then the plan. The saved config.toml binds the output once it holds a shard.
    found = [p.rsplit("/", 1)[-1] for p in fs.glob(f"{root}/*{schema.STATS_SUFFIX}")]
    rundir.check_resume(
        _saved_config(fs, f"{root}/{rundir.CONFIG}"),
        cfg,
        "mvdata shard",
        out,
        kept=bool(found),
        made="holds shards made",
        fix="pass the same settings to resume it, or use a new --out directory",
    )
    # A shard is done iff its marker exists and was written for this very plan. A marker of a shard this plan
    # does not have means another plan (another input) wrote here: mixing the two would corrupt the set.
    planned = {schema.stats_name(s.name) for s in specs}
    foreign = sorted(n for n in found if n not in planned)
    if foreign:
        raise UserError(
            f"{out} holds {foreign[0]} from a different input or config; use a new --out directory"
        )
    # A marker whose tar is gone or has another size (deleted, truncated, appended to) is not done: the shard
    # is written again, so deleting a damaged shard and rerunning rewrites it (docs/reliability.md).
    sizes = {
        p.rsplit("/", 1)[-1]: info.get("size") for p, info in fs.glob(f"{root}/*.tar", detail=True).items()
    }
    markers: dict[str, dict] = {}
    for spec in specs:
        m = read_json(fs, f"{root}/{schema.stats_name(spec.name)}")
        if m is None:
            continue
        if m.get("digest") != spec.digest:
            raise UserError(
                f"{out} holds {spec.name} from a different input or config; use a new --out directory"
            )
        if sizes.get(spec.name) != m.get("bytes"):
            continue
        markers[spec.name] = m
    return markers


@dataclass(frozen=True)
class _ShardRun:
    """What every ``write_shard`` call of one run gets, and where it runs."""

    renders: str
    """The render directory, absolute."""
    out_url: str
    """The output, as an absolute path or URL (so a Ray worker with another cwd writes to the same place)."""
    cfg: ShardConfig
    address: str | None
    """Ray cluster address (None: a local Ray), used when ``cfg.workers`` > 0."""
    storage_options: dict | None


def _write_todo(run: _ShardRun, todo: list[ShardSpec], total: int, markers: dict, show_progress: bool) -> int:
    """Write the shards of ``todo`` under a progress bar over all ``total`` planned shards (those in
    ``markers`` counted as skipped); each new marker goes into ``markers``. Returns the bytes written."""
    from mvforge.progress import StageProgress

    written_bytes = 0
    with StageProgress("shard", total=total, unit="shards", enabled=show_progress) as progress:
        if markers:
            progress.advance("skipped", len(markers))
        for spec, marker in _written(run, todo):
            markers[spec.name] = marker
            written_bytes += marker["bytes"]
            progress.advance("ok")
    return written_bytes


def _written(run: _ShardRun, todo: list[ShardSpec]):
    """(spec, marker) of each shard of ``todo`` as it is written: in-process in order with ``workers`` 0 (or
    nothing to do), else as Ray tasks (``cfg.workers`` at a time, each retried twice) in completion order."""
    if run.cfg.workers == 0 or not todo:
        for spec in todo:
            yield spec, write_shard(spec, run.renders, run.out_url, run.storage_options)
        return
    import ray

    from mvforge.raytools import bounded_map, init_ray

    init_ray(run.address, num_cpus=run.cfg.workers)
    task = ray.remote(num_cpus=1, max_retries=2)(write_shard)
    submit = lambda spec: task.remote(spec, run.renders, run.out_url, run.storage_options)  # noqa: E731
    for spec, ref in bounded_map(submit, todo, run.cfg.workers):
        yield spec, ray.get(ref)


def _publish(
    fs,
    root: str,
    specs: list[ShardSpec],
    markers: dict[str, dict],
    cfg: ShardConfig,
    inp: ShardInput,
    renders: str | Path,
    selection: str | Path | None,
    renders_s: str,
) -> dict:
    """Write the dataset card (README.md) and then index.json into ``root``; returns the index document."""
    # Folder names only: a published shard directory carries no path of the machine that wrote it.
    source = {
        "renders": Path(renders_s).name,
        "selection": Path(selection).name if selection else None,
        "not_rendered": inp.not_rendered,
    }
    index = index_document(specs, markers, cfg, source)
    num_views = len(
        layout.RenderedObject(inp.uids[0], layout.object_dir(renders, inp.uids[0])).cameras["views"]
    )
    put_bytes_atomic(fs, f"{root}/{CARD}", card.dataset_card(index, num_views).encode("utf-8"))
    # index.json last: its presence says the whole shard set is complete (docs/design.md §2: the marker is
    # last).
    put_bytes_atomic(
        fs, f"{root}/{schema.INDEX}", (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")
    )
    return index


def _summary(
    out: str, index: dict, inp: ShardInput, written: int, resumed: int, written_bytes: int, elapsed: float
) -> None:
    """The closing table: shards and samples per split, shards ``written`` and ``resumed``, skipped objects, size and
    this run's throughput (``written_bytes`` over ``elapsed`` seconds)."""
    from mvforge.progress import print_summary

    t = index["totals"]
    print_summary(
        f"mvdata shard -> {out}",
        [
            ("shards (train / val)", f"{t['train']['shards']} / {t['val']['shards']}"),
            ("shards written / resumed", f"{written} / {resumed}"),
            ("samples (train / val)", f"{t['train']['samples']} / {t['val']['samples']}"),
            ("views held out for val", ",".join(map(str, index["config"].get("val_views", []))) or "none"),
            ("objects skipped (index.json lists why)", len({x["uid"] for x in index["skipped"]})),
            ("selected but not rendered", len(inp.not_rendered)),
            ("GB", f"{t['bytes'] / 1e9:.3f}"),
            ("MB/s (this run)", f"{written_bytes / 1e6 / max(elapsed, 1e-9):.1f}"),
            ("seconds", f"{elapsed:.1f}"),
        ],
    )
