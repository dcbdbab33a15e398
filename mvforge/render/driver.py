"""The `mvdata render` driver: plan every object, schedule one Ray task per small batch of objects, record,
resume.

Resume is a property of the output directory, not of a job database (docs/design.md §2.1): an object is done
iff its meta.json (ok) or its failure record exists, so re-running the same command renders only what is
missing. Each task downloads its objects (those that are URLs) on the node that renders, then renders them in
turn in one Blender child process through ``runner.run_objects`` (``limits.objects_per_process``: the process
start is paid once per batch, docs/design.md §4); the driver appends one manifest line per finished object.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mvforge import rundir
from mvforge.config import to_dict, to_toml
from mvforge.errors import UserError
from mvforge.formats import renders as layout
from mvforge.fsutil import append_jsonl, atomic_write_text, read_jsonl
from mvforge.render.config import RenderConfig, adaptive_first_stop, check_lighting_kind
from mvforge.render.plan import FORMATS, SourceObject, hdri_pool, plan_job
from mvforge.render.worker import FAULT_ENV


@dataclass(frozen=True)
class Summary:
    """What one `render` call did."""

    total: int
    """Objects named by the sources."""
    skipped: int
    """Already finished before this call (ok or failed), not rendered again."""
    counts: dict[str, int]
    """Objects finished by this call, by status (ok / failed)."""
    reasons: dict[str, int]
    """Failures of this call by reason code."""
    views: int
    render_seconds: float
    """Summed wall time of the render processes of the ok objects."""
    wall_seconds: float

    @property
    def seconds_per_view(self) -> float | None:
        """Cycles seconds per ok view (one process; divide by the workers for the run's throughput)."""
        return self.render_seconds / self.views if self.views else None

    @property
    def objects_per_minute(self) -> float | None:
        """Objects finished by this call (ok or failed) per minute of wall time."""
        done = sum(self.counts.values())
        return done / self.wall_seconds * 60 if done and self.wall_seconds > 0 else None


def render(
    sources: list[SourceObject],
    out: str | os.PathLike,
    cfg: RenderConfig,
    *,
    workers: int = 1,
    address: str | None = None,
    gpus_per_worker: float = 0.0,
    retry_failed: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
    task=None,
) -> Summary:
    """Render ``sources`` into ``out`` with at most ``workers`` Blender processes at a time.

    ``task``: the function each Ray task runs on a batch of objects, with :func:`render_task`'s signature and
    contract (default :func:`render_task`); the driver's tests and benchmark pass a stub that renders nothing
    (``tests/fixtures/synthetic.py``).
    """
    start = time.monotonic()
    out = Path(out)
    _validate(sources, cfg, workers, gpus_per_worker)
    pool = hdri_pool(cfg.lighting.hdri_dir) if cfg.lighting.kind == "hdri" else []
    out.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    views = 0
    render_s = 0.0
    with rundir.exclusive(out, "mvdata render"):
        _check_config(out, cfg, overwrite, {obj.uid for obj in sources})
        remove_stale_staging(out)
        states = {obj.uid: layout.status(out, obj.uid) for obj in sources}
        if not overwrite:
            _check_same_sources(out, [obj for obj in sources if states[obj.uid] == "ok"])
        todo = [
            obj
            for obj in sources
            if states[obj.uid] is None or overwrite or (states[obj.uid] == "failed" and retry_failed)
        ]
        _prepare_manifest(out, states, rerun={obj.uid for obj in todo})
        skipped = len(sources) - len(todo)
        if todo:
            scheduled = _schedule(
                todo, out, cfg, pool, workers, address, gpus_per_worker, show_progress, task or render_task
            )
            for rec in scheduled:
                counts[rec["status"]] += 1
                if rec["status"] == "ok":
                    views += rec["views"]
                    render_s += rec["render_seconds"] or rec["seconds"]
                else:
                    reasons[rec["reason"]] += 1
    summary = Summary(
        total=len(sources),
        skipped=skipped,
        counts=dict(counts),
        reasons=dict(reasons),
        views=views,
        render_seconds=render_s,
        wall_seconds=time.monotonic() - start,
    )
    if show_progress:
        _print_summary(summary, out)
    return summary


def _validate(sources: list[SourceObject], cfg: RenderConfig, workers: int, gpus_per_worker: float) -> None:
    if not sources:
        raise UserError("the sources name no object; pass demo, objaverse, a directory, a glob or 3D files")
    dup = next((u for u, n in Counter(s.uid for s in sources).items() if n > 1), None)
    if dup is not None:
        raise UserError(f"uid {dup} appears twice in the sources; give each object its own uid")
    # Object directories are named by uid: on a case-insensitive filesystem two uids equal ignoring case
    # would share one directory, whatever filesystem this run happens to be on (docs/design.md §2.1, Sources).
    folded: dict[str, str] = {}
    for s in sources:
        other = folded.setdefault(s.uid.casefold(), s.uid)
        if other != s.uid:
            raise UserError(
                f"uids {other} and {s.uid} differ only in case and would share a directory on a "
                "case-insensitive filesystem; rename one"
            )
    for s in sources:
        layout.check_uid(s.uid)
        if s.url is None and (s.path is None or not Path(s.path).is_file()):
            raise UserError(f"object {s.uid}: file {s.path} does not exist; fix the path or remove it")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if not math.isfinite(gpus_per_worker) or gpus_per_worker < 0:
        raise UserError(f"--gpus-per-worker must be 0 or more, got {gpus_per_worker}")
    # cfg's own ranges are checked on construction (RenderConfig and its sections' __post_init__); what depends
    # on several sections once merged, here.
    check_lighting_kind(cfg.lighting)


_DENOISER_KEYS = ("denoise_prefilter", "denoise_quality")
# Settings that decide nothing under the other kind of light.
_LIGHTING_UNUSED = {
    "hdri": ("ambient",),
    "lamps": ("hdri_dir", "visible_to_camera", "exposure", "exposure_target"),
}


def _render_part(d: dict) -> dict:
    """A config dict as its settings decide the pixels: those that decide nothing under the others dropped,
    adaptive sampling as one entry. The settings that change how fast or how safely an object renders (its
    threads, device, limits, downloads) are execution settings, in ``rundir.EXECUTION_KEYS``."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    cycles = out.get("cycles")
    if isinstance(cycles, dict):
        if not cycles.get("denoise", False):
            # Without the denoiser its settings decide nothing.
            for key in _DENOISER_KEYS:
                cycles.pop(key, None)
        _adaptive_part(cycles)
    lighting = out.get("lighting")
    if isinstance(lighting, dict):
        if lighting.get("exposure") == "raw":
            # The target scales nothing at raw exposure.
            lighting.pop("exposure_target", None)
        for key in _LIGHTING_UNUSED.get(lighting.get("kind"), ()):
            lighting.pop(key, None)
        if lighting.get("kind") == "lamps" and isinstance(cycles, dict):
            # No world map is built under the lamp rig (its ambient world is never light-sampled).
            cycles.pop("world_map_resolution", None)
    return out


_ADAPTIVE_OFF = "off (no pixel can stop before its last sample)"


def _adaptive_part(cycles: dict) -> None:
    """Adaptive sampling as it decides the pixels, as one readable ``adaptive_sampling`` entry: "off" when its
    threshold is 0 or when Cycles' first convergence check comes no earlier than the last sample (the same pixels
    as off, tested; e.g. every render of 80 samples or fewer at threshold 0.01 and Cycles' automatic minimum);
    else the threshold and the first sample count at which a pixel may stop."""
    threshold = float(cycles.pop("adaptive_threshold", 0.0))
    minimum = int(cycles.pop("adaptive_min_samples", 0))
    first = adaptive_first_stop(threshold, minimum) if threshold > 0 else 0
    if threshold > 0 and first < int(cycles.get("samples", 0)):
        # repr, not :g: two thresholds equal to 6 digits are still two settings.
        cycles["adaptive_sampling"] = f"threshold {threshold!r}, pixels may stop from {first} samples"
    else:
        cycles["adaptive_sampling"] = _ADAPTIVE_OFF


def _check_config(out: Path, cfg: RenderConfig, overwrite: bool, uids: set[str] | None = None) -> None:
    """Refuse to mix renders made with different settings in one directory; then save the config.

    ``--overwrite`` with new settings re-renders only the objects of this call (``uids``): finished objects
    outside them would keep the old settings under the new config.toml, so that is refused too (docs/design.md
    §2.1, Sources).
    """
    path = out / layout.CONFIG
    old = None
    if path.is_file():
        try:
            old = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            # Unreadable settings cannot vouch for the finished renders beside them: refused, not replaced
            # (the new settings would be recorded over renders made with unknown ones).
            if _finished_uids(out) and not overwrite:
                raise UserError(
                    f"{path} is not TOML ({e}) and {out} holds finished renders made with the settings it "
                    "recorded; restore it, pass --overwrite to re-render everything, or pick a new --out"
                ) from None
            old = None  # nothing finished depends on it: the new record replaces it
    # The kind of light first: under another kind the other lighting keys differ only as a consequence.
    # Adaptive sampling last: it follows from the samples too, and a changed --samples should be named.
    diff = rundir.check_resume(
        _render_part(old) if old is not None else None,
        _render_part(to_dict(cfg)),
        "mvdata render",
        out,
        kept=True,
        first=("lighting.kind",),
        last=("cycles.adaptive_sampling",),
        made="holds renders made",
        fix="pick a new --out, or pass --overwrite to re-render everything with the new settings",
        replace=overwrite,
    )
    others = _finished_uids(out) - (uids or set()) if diff else set()
    if uids is not None and others:
        raise UserError(
            f"--overwrite with new settings ({diff}) would re-render only the objects named, leaving "
            f"{len(others)} other finished object(s) in {out} (e.g. {min(others)}) with the old ones; "
            "name all of them, or pick a new --out"
        )
    atomic_write_text(path, to_toml(cfg))


def _finished_uids(out: Path) -> set[str]:
    """Uids with a terminal record (ok or failed) in the render directory ``out``."""
    failed = {p.stem for p in (out / layout.FAILED_DIR).glob("*.json") if ".tmp" not in p.name}
    return set(layout.iter_uids(out)) | failed


def _check_same_sources(out: Path, finished: list[SourceObject]) -> None:
    """Refuse a uid whose finished render came from a different file (docs/design.md §2.1, Sources): resume
    would skip it and the dataset would pair the new file's uid with the old file's images.

    Compares the sha256 recorded in meta.json with the local file's or with the published one of a download.
    A local file is hashed only when its size or mtime differ from those recorded beside the sha256 (hashing
    every finished file on every resume grew with the data set's bytes, hours at 10⁶ objects); a record
    without them is hashed. Raises UserError naming the uid and both files.
    """
    from mvforge.render.download import sha256_file

    for obj in finished:
        try:
            meta = json.loads((layout.object_dir(out, obj.uid) / layout.META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # an unreadable record is the filter's business (unreadable_meta), not a reuse
        recorded = (meta.get("source") or {}).get("sha256")
        if not recorded:
            continue
        if obj.url is None and obj.path:
            if _unchanged(obj.path, meta.get("source") or {}):
                continue
            current = sha256_file(obj.path)
        else:
            current = obj.sha256
        if current and current != recorded:
            was = (meta.get("source") or {}).get("path") or (meta.get("source") or {}).get("url")
            raise UserError(
                f"uid {obj.uid} was rendered from another file ({was}, sha256 {recorded[:12]}...), now "
                f"{obj.path or obj.url} (sha256 {current[:12]}...); give the new file its own uid, or pass "
                "--overwrite to replace the old render"
            )


def _unchanged(path: str, recorded: dict) -> bool:
    """True when ``path`` is the recorded path, with the size and mtime (ns) recorded when its sha256 was
    taken: the same file, as make and rsync judge it."""
    if recorded.get("path") != path or recorded.get("size") is None or recorded.get("mtime_ns") is None:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == recorded["size"] and st.st_mtime_ns == recorded["mtime_ns"]


def remove_stale_staging(out: Path) -> int:
    """Delete ``*.tmp-*`` leftovers of killed runs (staging dirs, half-written records)."""
    n = 0
    for pattern in ("*/*.tmp-*", f"{layout.FAILED_DIR}/*.tmp-*", "*.tmp-*"):
        for p in out.glob(pattern):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
    return n


def _prepare_manifest(out: Path, states: dict[str, str | None], rerun: set[str]) -> None:
    """Make manifest.jsonl hold exactly one line per finished object, agreeing with its terminal record,
    before this call appends to it. ``states``: layout.status of the objects of this call.

    - lines of objects about to be rendered again (``--retry-failed``, ``--overwrite``) are dropped: their new
      line comes when they finish, so a retried object is never listed twice;
    - a finished object without a line (the driver was killed between a task's end and its line), or whose
      line disagrees with its record (a task the driver gave up on as crashed that still finished on a lost
      node), gets its line from the record (``recovered``);
    - a torn last line (a driver killed mid-append) is dropped instead of being glued to the next append.
    Lines of objects outside ``states`` (another call's sources) are kept. The file is rewritten atomically,
    and only when something changed.
    """
    manifest = out / layout.MANIFEST
    last: dict[str, dict] = {}
    for rec in read_jsonl(manifest):
        if isinstance(rec, dict) and isinstance(rec.get("uid"), str):
            last[rec["uid"]] = rec
    records = [
        rec
        for uid, rec in last.items()
        if uid not in rerun and (uid not in states or states[uid] == rec.get("status"))
    ]
    listed = {rec["uid"] for rec in records}
    for uid, state in states.items():
        if uid in listed or uid in rerun or state is None:
            continue
        records.append(_record_on_disk(out, uid))
    text = "".join(json.dumps(rec, sort_keys=True) + "\n" for rec in records)
    old = manifest.read_text(encoding="utf-8") if manifest.is_file() else ""
    if text != old:
        atomic_write_text(manifest, text)


# --- Ray ------------------------------------------------------------------------------------------------


def render_task(
    objs: list[SourceObject], jobs: list[dict], out: str, cfg: RenderConfig, env: dict[str, str]
) -> list[dict]:
    """Body of one Ray task: a batch of objects (``limits.objects_per_process``, docs/design.md §4). Downloads
    the ones that are URLs, then renders them in turn in one reused Blender child process
    (``runner.run_objects``); returns one manifest record per object, in order."""
    from mvforge.render import runner

    out_path = Path(out)
    records: list[dict | None] = []
    todo: list[tuple[int, dict, dict]] = []  # (index in the batch, job, meta.json additions)
    for obj, job in zip(objs, jobs, strict=True):
        if job["importer"] is None:
            # No bpy importer reads this extension: record it without paying for a Blender start.
            message = f"unknown 3D format {obj.ext!r}; supported: {', '.join(sorted(FORMATS))}"
            records.append(
                runner.fail(
                    out_path, obj.uid, "unsupported_format", message, attempts=0, source=job["source"]
                )
            )
            continue
        extra: dict = {}
        if obj.url is not None:
            from mvforge.render.download import DownloadError, fetch

            try:
                got = fetch(
                    obj.url,
                    obj.path,
                    sha256=obj.sha256,
                    timeout_s=cfg.download.timeout_s,
                    retries=cfg.download.retries,
                )
            except DownloadError as e:
                records.append(
                    runner.fail(
                        out_path, obj.uid, "download_failed", str(e), attempts=1, source=job["source"]
                    )
                )
                continue
            extra = {
                "source": {"sha256": got.sha256, "bytes": got.bytes},
                "timings": {"download_s": round(got.seconds, 3), "download_cached": got.cached},
            }
        todo.append((len(records), job, extra))
        records.append(None)
    if todo:
        rendered = runner.run_objects(
            [job for _, job, _ in todo], out_path, cfg.limits, env=env, extra_meta=[e for _, _, e in todo]
        )
        for (i, _, _), rec in zip(todo, rendered, strict=True):
            records[i] = rec
    return records


def batches(todo: list, workers: int, objects_per_process: int) -> list[list]:
    """Split ``todo`` into the batches of the Ray tasks, in order: ``objects_per_process`` objects each while
    many remain, then smaller ones, down to single objects at the end (guided scheduling: a batch holds at most
    1/(2 x workers) of what remains). Batches are fixed when submitted, so equal batches to the end would leave
    workers idle while one finishes a heavy batch; single objects at the end keep them all busy."""
    out, i = [], 0
    while i < len(todo):
        size = max(1, min(objects_per_process, -(-(len(todo) - i) // (2 * max(1, workers)))))
        out.append(todo[i : i + size])
        i += size
    return out


def _schedule(
    todo: list[SourceObject],
    out: Path,
    cfg: RenderConfig,
    pool: list[Path],
    workers: int,
    address: str | None,
    gpus_per_worker: float,
    show_progress: bool,
    task_fn=render_task,
):
    """Yield each object's record as its batch finishes, keeping at most ``workers`` tasks in flight.

    Objects go to the tasks in batches (:func:`batches`). A task that dies without records (its Ray worker
    killed, a node lost) keeps the records its objects already wrote; the others of a batch of several are
    submitted again one per task, so a neighbour cannot fail them; a lone object's death is recorded crashed.
    """
    import ray

    from mvforge.progress import StageProgress
    from mvforge.raytools import bounded_map, init_ray
    from mvforge.render import runner

    threads = cfg.cycles.threads
    init_ray(address, num_cpus=max(os.cpu_count() or 1, workers * threads))
    if gpus_per_worker > 0 and ray.cluster_resources().get("GPU", 0) < gpus_per_worker:
        raise UserError(
            f"--gpus-per-worker {gpus_per_worker:g} but the Ray cluster has no such GPU; drop the option or "
            "pass --address of a cluster with GPUs"
        )
    # The fault-injection switch of the worker's tests travels explicitly: Ray workers may have been started
    # before the driver's environment changed.
    env = {FAULT_ENV: os.environ[FAULT_ENV]} if os.environ.get(FAULT_ENV) else {}
    # max_retries=0: a Ray worker that dies (OOM killer, node loss) fails the task; the driver handles it below.
    # The runner already retries the Blender process, which is what usually dies.
    task = ray.remote(task_fn).options(
        num_cpus=threads, num_gpus=gpus_per_worker, max_retries=0, name="mvforge-render"
    )
    manifest = out / layout.MANIFEST

    def submit(batch):
        return task.remote(batch, [plan_job(obj, cfg, pool) for obj in batch], str(out), cfg, env)

    with StageProgress("render", total=len(todo), enabled=show_progress) as progress:
        pending = batches(todo, workers, cfg.limits.objects_per_process)
        while pending:  # twice at most: a batch's objects go again one per task, and a lone one does not
            again: list[SourceObject] = []
            for batch, ref in bounded_map(submit, pending, workers):
                try:
                    recs = ray.get(ref)
                except ray.exceptions.RayError as e:
                    if rundir.is_environment_error(getattr(e, "cause", None)):
                        # A full or read-only disk is no object's fault: stop, record nothing (docs/reliability.md).
                        raise rundir.environment_error(e.cause) from None
                    recs = []
                    for obj in batch:
                        if layout.status(out, obj.uid) is not None:
                            recs.append(_record_on_disk(out, obj.uid))
                        elif len(batch) > 1:
                            again.append(obj)
                        else:
                            recs.append(
                                runner.fail(
                                    out,
                                    obj.uid,
                                    "crashed",
                                    _task_error(e),
                                    attempts=1,
                                    source=dataclasses.asdict(obj) | {"tags": list(obj.tags)},
                                    log=runner.log_path(out, obj.uid),
                                )
                            )
                for rec in recs:
                    # A recovered record keeps the time its terminal record was written (_record_on_disk).
                    append_jsonl(manifest, {"time": round(time.time(), 3)} | rec)
                    progress.advance(rec["status"])
                    yield rec
            pending = [[obj] for obj in again]


def _record_on_disk(out: Path, uid: str) -> dict:
    """The manifest record of an object from its terminal record on disk: a task that died after writing it, or
    a driver killed before appending its line (the same fields as a live line, plus ``recovered``).

    ``time`` (Unix seconds, 3 decimals, like a live line's): when the terminal record (meta.json, or the failure
    record) was written, its mtime, which is when the object finished; the time of the recovery would date
    the object by the later run that repaired the manifest.
    """
    if layout.status(out, uid) == "ok":
        path = layout.object_dir(out, uid) / layout.META
        meta = json.loads(path.read_text(encoding="utf-8"))
        timings = meta.get("timings") or {}
        return {
            "uid": uid,
            "status": "ok",
            "reason": None,
            "attempts": meta.get("attempts", 1),
            "seconds": timings.get("object_s", 0.0),
            "render_seconds": timings.get("render_s"),
            "views": int(meta.get("views", 0)),
            "peak_rss_mb": meta.get("peak_rss_mb"),
            "stripped_textures": int((meta.get("stats") or {}).get("stripped_textures") or 0),
            "recovered": True,
            "time": round(path.stat().st_mtime, 3),
        }
    path = layout.failure_path(out, uid)
    failure = json.loads(path.read_text(encoding="utf-8"))
    return {
        "uid": uid,
        "status": "failed",
        "reason": failure.get("reason"),
        "attempts": failure.get("attempts", 1),
        # A failure record keeps no timings: unknown, not zero.
        "seconds": None,
        "render_seconds": None,
        "views": 0,
        "peak_rss_mb": None,
        "recovered": True,
        "time": round(path.stat().st_mtime, 3),
    }


def _task_error(e: Exception) -> str:
    """One line for a task that ended without a record: an exception in our task code (the cause, not Ray's
    "ray::task (pid=...)" banner) or a Ray worker that died (OOM killer, node lost)."""
    cause = getattr(e, "cause", None)
    if cause is not None:
        text = " ".join(str(cause).split())[:300]
        return f"the render task raised {type(cause).__name__}: {text}"
    lines = str(e).strip().splitlines() or [""]
    return f"the Ray task died: {type(e).__name__}: {lines[0][:300]}"


def _print_summary(summary: Summary, out: Path) -> None:
    from mvforge.progress import print_summary

    rows: list[tuple[str, object]] = [
        ("objects in sources", summary.total),
        ("already done (skipped)", summary.skipped),
        ("rendered ok", summary.counts.get("ok", 0)),
        ("failed", summary.counts.get("failed", 0)),
    ]
    rows += [(f"  {reason}", n) for reason, n in sorted(summary.reasons.items())]
    rows += [
        ("views rendered", summary.views),
        ("seconds per view", f"{summary.seconds_per_view:.2f}" if summary.seconds_per_view else "-"),
        ("objects per minute", f"{summary.objects_per_minute:.1f}" if summary.objects_per_minute else "-"),
        ("wall time", f"{summary.wall_seconds:.1f} s"),
        ("output", str(out)),
    ]
    print_summary("mvdata render", rows)
