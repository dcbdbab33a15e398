"""What every stage's output directory shares (docs/reliability.md): one writer at a time, resume only with
the same settings, and from the newest checkpoint that is intact.

- :func:`exclusive` holds ``fcntl.flock`` on ``<out>/.lock`` while a command writes ``<out>``; the file names the
  holder (command, pid, host) so a refused second run can say who writes. The kernel drops the lock when the
  holder dies, however it dies, so a killed run never blocks its resume (no stale-lock clean-up to get wrong).
- :func:`newest_intact` picks the newest checkpoint that passes a check (a safetensors header that fits its
  file, a ``torch.load(weights_only=True)`` that succeeds) and says in one line which newer one it passed over.
  A checkpoint is untrusted input: nothing here unpickles anything but tensors and plain containers.
- :func:`check_resume` is "resume only with the same settings" for every stage, data wing included: the saved
  settings against the new ones, ignoring the one list of execution settings, :data:`EXECUTION_KEYS`.

Pure standard library at import time (the CLI imports stages lazily; ``--help`` must stay light).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from mvforge.errors import UserError

LOCK = ".lock"
"""The lock file every stage takes in its output directory."""

_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def _as_the_user_knows_it(filename) -> str:
    """The path an OSError names, as the user knows it: a temporary copy (``X.tmp-<pid>``, mvforge's atomic
    writes) is named as the output X it becomes, which is what the user passed or can find."""
    from mvforge.fsutil import TMP_MARK

    if not filename:
        return "a file"
    parent, sep, name = os.fsdecode(filename).rpartition("/")  # string work: a URL keeps its "//"
    if TMP_MARK in name and not name.startswith(TMP_MARK):
        name = name.split(TMP_MARK)[0]
    return parent + sep + name


def environment_error(e: OSError) -> UserError | None:
    """The one-line UserError for a write that failed because of the machine, not the data (a full disk, a
    read-only or unwritable directory), else None. The message names the file and what to do; finished work is
    kept, so the fix is always to rerun the same command."""
    where = _as_the_user_knows_it(e.filename)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(
            f"disk full writing {where}; free space (or pick another --out) and rerun the same command"
        )
    if e.errno == errno.EROFS:
        return UserError(
            f"{where} is on a read-only file system; pass a writable --out (RUN_DIR for mvdata report)"
        )
    if e.errno in (errno.EACCES, errno.EPERM):
        return UserError(
            f"permission denied: {where}; pass a writable --out (RUN_DIR for mvdata report) or fix its permissions"
        )
    return None


def is_environment_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in _ENVIRONMENT_ERRNOS


def make_out_dir(out: str | os.PathLike) -> Path:
    """``mkdir -p out``, an unwritable place reported as one line."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileNotFoundError as e:
        # mkdir -p creates each missing parent first, so ENOENT here means a directory that takes no new
        # entries (/proc, /sys) or one removed meanwhile: the place is wrong, not the data.
        raise UserError(f"cannot create {e.filename or out} ({e.strerror}); pass another --out") from None
    except OSError as e:
        err = environment_error(e)
        if err is None:
            raise
        raise err from None
    return out


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"`{info['command']}` (pid {info['pid']} on {info['host']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another mvforge command"


@contextlib.contextmanager
def exclusive(out: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold ``<out>/.lock`` while the body runs; a second holder is refused with one line. ``out`` is created.
    A URL (``s3://...``) has no lock: object stores have no flock (docs/reliability.md)."""
    if is_url(out):
        yield Path(str(out))
        return
    import fcntl

    out = Path(out)
    made = [p for p in (out, *out.parents) if not p.exists()]  # what this call creates, leaf first
    make_out_dir(out)
    path = out / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        err = environment_error(e)
        if err is None:
            raise
        raise err from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{_holder(path)} is writing {out}; wait for it to end or pick another --out"
            ) from None
        info = {"command": command, "pid": os.getpid(), "host": socket.gethostname()}
        # Written in place (not renamed): the lock is on this inode. Best effort: the lock is the flock, not the text.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        try:
            yield out
        except BaseException:
            _remove_if_untouched(made, path)
            raise
    finally:
        os.close(fd)  # drops the flock; the file stays (unlinking it would let two runs lock two inodes)


def _remove_if_untouched(made: list[Path], lock: Path) -> None:
    """After a run that failed before writing anything (bad input), remove the directories it created for its
    lock, so a mistyped command leaves nothing behind. Still under the lock: no other run is in there."""
    if not made or sorted(os.listdir(made[0])) != [LOCK]:
        return
    with contextlib.suppress(OSError):
        lock.unlink()
        for d in made:
            d.rmdir()  # leaf first; stops at the first one something else was written into


# --- checkpoints ---------------------------------------------------------------------------------------------


class Damaged(Exception):
    """A checkpoint file that cannot be what it claims to be (truncated, not the format, refused)."""


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise Damaged unless ``path`` is a safetensors file whose header parses and whose tensors end inside
    the file (a truncated copy fails here without reading the tensors)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise Damaged(f"{path}: {size} bytes, not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise Damaged(f"{path}: its header claims {n} bytes and the file has {size}")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise Damaged(f"{path}: its safetensors header is not JSON") from None
    end = max(
        (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)),
        default=0,
    )
    if 8 + n + end != size:
        raise Damaged(f"{path}: holds {size} bytes, its header needs {8 + n + end} (truncated or padded)")


def check_torch_file(path: str | os.PathLike) -> None:
    """Raise Damaged unless ``torch.load(path, weights_only=True)`` reads it (a truncated zip, random bytes or a
    pickle that needs code all fail; nothing in the file runs). Memory-mapped where the file allows it, so a
    large optimizer state is checked without being read."""
    import pickle

    import torch

    try:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            torch.load(path, map_location="cpu", weights_only=True)  # the legacy (non-zip) format
    except pickle.UnpicklingError as e:
        # Not torch's message: it suggests turning the safe loader off, the one thing not to do with an untrusted
        # file.
        paragraphs = [x.strip() for x in str(e).split("\n\n") if x.strip()] or [type(e).__name__]
        body = [
            x for x in paragraphs[1:] if not x.startswith(("Check the documentation", "Please file an issue"))
        ]
        detail = (body or paragraphs)[0].splitlines()[0][:100]
        if "global" in detail.lower() or "reduce" in detail.lower():
            raise Damaged(f"{path}: holds pickled code ({detail}); refused, nothing ran") from None
        raise Damaged(f"{path}: not a torch checkpoint ({detail})") from None
    except (RuntimeError, OSError, ValueError, EOFError) as e:
        if isinstance(e, OSError) and is_environment_error(e):
            raise
        first = str(e).split(". ")[0].splitlines()[0][:120] if str(e) else type(e).__name__
        raise Damaged(f"{path}: {first}") from None


def model_dir_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with the first damaged file under ``path`` (a model or checkpoint dir), or None: a
    ``*.safetensors`` whose header does not fit the file, a ``*.json`` (configs, tokenizer) that does not parse,
    or a component directory (one with ``config.json``) without a weights file. Header checks and the small
    JSON files only, so it costs a few reads whatever the model's size; diffusers and transformers would
    otherwise raise a traceback (a JSONDecodeError, "no file named diffusion_pytorch_model.bin")."""
    root = Path(path)
    for f in sorted(root.rglob("*.safetensors")):
        try:
            check_safetensors(f)
        except Damaged as e:
            return str(e)
    for f in sorted(root.rglob("*.json")):
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            return f"{f}: damaged ({type(e).__name__}: {e})"
        weights = [*f.parent.glob("*.safetensors"), *f.parent.glob("*.bin")]
        if f.name == "config.json" and not weights:
            return f"{f.parent} holds config.json but no weights file (*.safetensors)"
    return None


def check_model_dir(path: str | os.PathLike) -> None:
    """Raise UserError naming the first damaged file under ``path`` (:func:`model_dir_problem`)."""
    problem = model_dir_problem(path)
    if problem is not None:
        raise UserError(f"{problem}; copy the model again (or pass another one)")


def newest_intact(
    candidates: Iterable[Path],
    check: Callable[[Path], None],
    warn: Callable[[str], None] | None = None,
    using: str = "resuming from",
) -> Path | None:
    """The newest of ``candidates`` (oldest first) that ``check`` passes, or None when there are none. Each
    newer one passed over is reported in one line through ``warn`` (stderr by default; ``using``: what is done
    with the one taken) and left in place for the user to look at. Raises UserError when there are candidates
    and none is intact."""
    found = list(candidates)
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    skipped: list[str] = []
    for path in reversed(found):
        try:
            check(path)
        except Damaged as e:
            skipped.append(str(e))
            continue
        for reason in skipped:
            warn(f"warning: skipping damaged checkpoint ({reason}); {using} {path}")
        return path
    if found:
        raise UserError(
            f"no intact checkpoint in {found[-1].parent} ({skipped[0]}); delete the damaged checkpoints to start "
            "over, or restore them from a copy"
        )
    return None


def locked(command: str, out: Callable[..., str | os.PathLike | None]):
    """Decorator: run the stage function under :func:`exclusive` on the directory ``out`` computes from the
    call's arguments (by name; None: no lock, e.g. a Ray Train worker whose driver holds it)."""
    import functools
    import inspect

    def deco(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            path = out(**bound.arguments)
            if path is None:
                return fn(*args, **kwargs)
            with exclusive(path, command):
                return fn(*args, **kwargs)

        return wrapper

    return deco


CREDENTIAL_ERRORS = frozenset({"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"})
"""Class names of the object stores' "no credentials" errors (botocore for s3://, google-auth for gs://),
matched by name so neither library is imported here."""


def environment_error_in(e: BaseException) -> UserError | None:
    """:func:`environment_error` of ``e`` or of what it wraps (a Ray task's ``cause``, ``__cause__``); also an
    object store that has no credentials for an ``s3://`` or ``gs://`` path (the machine's setup, not a bug)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if is_environment_error(e) and getattr(e, "errno", None) is not None:
            return environment_error(e)
        if type(e).__name__ in CREDENTIAL_ERRORS:
            return UserError(
                f"the object store has no credentials ({type(e).__name__}: {str(e)[:200]}); set them (for s3:// "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) or use a local path"
            )
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None


# --- resume only with the same settings (every stage) --------------------------------------------------------

CONFIG = "config.toml"
"""The run's settings, as the stage resolved them (content and execution settings alike)."""

EXECUTION_KEYS = (
    # where and how the run executes
    "out",
    "device",
    "workers",
    "address",
    "progress",
    "deterministic",
    "allow_tf32",
    "loader.cache_mb",
    "loader.on_checksum_mismatch",  # the stop line's own advice is to resume with "count"
    # how long it runs and how often it writes (a resume may extend a run: docs/design.md §5)
    "max_steps",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "snapshot_every",
    "tensorboard",
    "validation",
    "max_nonfinite_steps",
    # what it exports from the result (`mvtrain sds` re-exports a finished field; dreambooth's pipeline copy)
    "export",
    "export_mesh.",
    "save_pipeline",
    # `mvdata render`: Cycles' thread count and device, the per-object process limits (timeout, memory,
    # retries) and the download settings decide how fast or how safely an object renders, never its pixels
    "cycles.threads",
    "cycles.device",
    "limits",
    "download",
)
"""The settings a resumed run may change, for every stage (dotted keys, or prefixes ending in ``.``; a key
names a whole section too): where and how it runs, how long, what it writes besides the result. Every other
setting decides the result, so a resume under another value would mix two recipes in one output
(docs/design.md §5 "Execution settings vs content settings"). One list: a stage keeps execution settings out
of its comparison (:func:`check_resume`) and out of the content it records (:func:`content_settings`) only
here."""


def _ignored(dotted: str, ignore: Iterable[str]) -> bool:
    return any(dotted == i or (i.endswith(".") and dotted.startswith(i)) for i in ignore)


def content_settings(d: dict) -> dict:
    """``d`` (a ``config.to_dict`` tree) without its :data:`EXECUTION_KEYS`: what a stage records as the
    settings that made its output (the shard set's index.json), so a resume under another worker count writes
    the same document."""

    def strip(tree: dict, prefix: str) -> dict:
        return {
            k: strip(v, f"{prefix}{k}.") if isinstance(v, dict) else v
            for k, v in tree.items()
            if not _ignored(f"{prefix}{k}", EXECUTION_KEYS)
        }

    return strip(d, "")


def _only(d: dict, dotted: str) -> dict:
    """The one setting ``dotted`` of ``d``, nested as in ``d`` (None where ``d`` lacks it)."""
    value = d
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def settings_difference(
    saved: dict,
    now: dict,
    *,
    compared_elsewhere: Iterable[str] = (),
    compare_only: Iterable[str] | None = None,
    first: Iterable[str] = (),
    last: Iterable[str] = (),
) -> str:
    """The first content setting that differs between ``saved`` (what made the kept work) and ``now``, as
    ``config.first_difference`` names it; "" when they agree. :data:`EXECUTION_KEYS` and
    ``compared_elsewhere`` (settings the stage checks another way) may differ; ``compare_only`` narrows the
    comparison to those top-level keys. ``first``: settings named before any other (one that makes the rest
    differ as a consequence: render's kind of light); ``last``: settings named only when nothing else differs
    (one that follows from others: render's adaptive sampling follows from its samples)."""
    from mvforge import config as config_mod

    if compare_only is not None:
        saved = {k: saved[k] for k in compare_only if k in saved}
        now = {k: now[k] for k in compare_only if k in now}
    ignore = (*EXECUTION_KEYS, *compared_elsewhere)
    for key in first:
        if not _ignored(key, ignore):
            diff = config_mod.first_difference(_only(saved, key), _only(now, key), ignore)
            if diff:
                return diff
    last = tuple(last)
    return (
        last and config_mod.first_difference(saved, now, (*ignore, *last))
    ) or config_mod.first_difference(saved, now, ignore)


def check_resume(
    saved: dict | None,
    content,
    command: str,
    out_label: str | os.PathLike,
    kept: bool,
    *,
    compared_elsewhere: Iterable[str] = (),
    compare_only: Iterable[str] | None = None,
    first: Iterable[str] = (),
    last: Iterable[str] = (),
    made: str | None = None,
    fix: str = "pass the same settings to resume it, or another --out",
    replace: bool = False,
) -> str:
    """Resume only with the same settings (docs/design.md §5, docs/reliability.md "Resume"), for every stage.

    ``saved``: the settings the output ``out_label`` was made with (its ``config.toml`` as a dict; None: none
    recorded); ``content``: this run's settings (a dict or config dataclass); ``kept``: whether ``out_label``
    holds work made under ``saved`` (a directory without work takes the new settings). Compared by
    :func:`settings_difference`. A difference raises one line, ``<out> <made> with other settings (<first
    difference>); <fix>``, ``made`` defaulting to "was made by `<command>`" — unless ``replace`` (the stage
    was told to redo the kept work: render's ``--overwrite``, filter's ``--rescore``), when the difference is
    returned for the stage's own rules. Returns "" when nothing differs."""
    if saved is None or not kept:
        return ""
    diff = settings_difference(
        saved,
        _content_dict(content),
        compared_elsewhere=compared_elsewhere,
        compare_only=compare_only,
        first=first,
        last=last,
    )
    if diff and not replace:
        made = made if made is not None else f"was made by `{command}`"
        raise UserError(f"{out_label} {made} with other settings ({diff}); {fix}")
    return diff


def _content_dict(content) -> dict:
    """``content`` (a dict or a config dataclass) as it reads back from TOML (tuples as lists, None dropped)."""
    import tomllib

    import tomli_w

    from mvforge import config as config_mod

    return tomllib.loads(
        tomli_w.dumps(config_mod.to_dict(content))
    )  # to_dict: a dict's None values dropped too


# --- the run directory of a model-wing stage -----------------------------------------------------------------

DONE = "summary.json"
"""The done marker: written last, so a run directory that has it is finished (its JSON is the run's summary)."""

CHECKPOINTS = "checkpoints"
CKPT_PREFIX = "step-"


class RunDir:
    """The output directory of one model-wing run (docs/reliability.md "Every stage"): ``config.toml`` (its
    settings), step-numbered checkpoints ``checkpoints/step-NNNNNN<suffix>`` (``suffix`` "" for a checkpoint
    directory, ".pt" for a file), ``metrics.csv`` + ``tensorboard/`` (:mod:`mvforge.metrics`) and the done
    marker ``summary.json``. "Resume only with the same settings" lives in :meth:`open`, once.

    Build one with :meth:`open` (a run about to write) or ``RunDir(path, suffix)`` (reading: which checkpoints,
    is it done). Holds no lock: the stage runs under :func:`locked`."""

    def __init__(self, path: str | os.PathLike, suffix: str = ""):
        self.path = Path(path)
        self.suffix = suffix

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        content,
        command: str,
        *,
        suffix: str = "",
        compared_elsewhere: tuple[str, ...] = (),
        compare_only: tuple[str, ...] | None = None,
        kept: bool | None = None,
        write: bool = True,
    ) -> RunDir:
        """The run directory ``path`` for a run with settings ``content`` (a dict or config dataclass).

        When ``path`` already holds work made under its ``config.toml`` (``kept``; None: a checkpoint or the done
        marker), that file's settings are compared with ``content``, ignoring :data:`EXECUTION_KEYS` and
        ``compared_elsewhere`` (settings the stage checks another way: `mvtrain sds`'s model, by its weights).
        ``compare_only`` narrows the comparison to those top-level keys, for a stage whose other settings
        re-apply to the kept work on every run (`mvtrain eval`: the model and sampling settings made the kept
        images, the scoring settings re-score them). A directory without work (a run that failed before its
        first checkpoint) takes the new settings. Then (``write``) ``content`` goes to ``config.toml``
        atomically, the directory created; else call :meth:`write_config` once the run can start.

        Raises UserError naming the first differing key and the fix (the same settings, or another --out),
        and for an unwritable place."""
        run = cls(path, suffix)
        now = _content_dict(content)
        if kept is None:
            kept = bool(run.checkpoints()) or run.is_done()
        check_resume(
            run.saved_config(),
            now,
            command,
            run.path,
            kept,
            compared_elsewhere=compared_elsewhere,
            compare_only=compare_only,
        )
        if write:
            run.write_config(now)
        return run

    def write_config(self, content) -> Path:
        """Write ``content`` (a dict or config dataclass) to ``config.toml`` atomically, creating the directory;
        an unwritable place is a one-line UserError. Call it through :meth:`open`, which compares first."""
        import tomli_w

        from mvforge.fsutil import atomic_write_text

        make_out_dir(self.path)
        try:
            atomic_write_text(self.path / CONFIG, tomli_w.dumps(_content_dict(content)))
        except OSError as e:
            err = environment_error(e)
            if err is None:
                raise
            raise err from None
        return self.path / CONFIG

    def saved_config(self) -> dict | None:
        """``config.toml`` as a dict; None when there is none. Raises UserError when it is not TOML."""
        import tomllib

        path = self.path / CONFIG
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UserError(
                f"{path} is not TOML ({e}); delete it to start over, or pass another --out"
            ) from None

    # --- done marker
    def is_done(self) -> bool:
        return (self.path / DONE).is_file()

    def summary(self) -> dict:
        """The done marker's JSON ({} when absent or unreadable)."""
        try:
            done = json.loads((self.path / DONE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return done if isinstance(done, dict) else {}

    def mark_done(self, summary: dict) -> Path:
        """Write the done marker (``summary`` as JSON) atomically; call it after every other output."""
        from mvforge.fsutil import atomic_write_json

        path = self.path / DONE
        atomic_write_json(path, summary)
        return path

    def clear_done(self) -> None:
        """Remove the done marker before outputs it vouches for change (a re-export)."""
        (self.path / DONE).unlink(missing_ok=True)

    # --- metrics
    @property
    def metrics_csv(self) -> Path:
        from mvforge.metrics import CSV

        return self.path / CSV

    def metrics(self, fields, step: int = 0, tensorboard: bool = True):
        """:class:`mvforge.metrics.RunMetrics` on this directory, cut back to ``step`` (the resumed step)."""
        from mvforge.metrics import RunMetrics

        return RunMetrics(self.path, fields, step, tensorboard)

    # --- checkpoints
    def checkpoint_path(self, step: int) -> Path:
        """``checkpoints/step-NNNNNN<suffix>`` for ``step`` optimizer steps done."""
        return self.path / CHECKPOINTS / f"{CKPT_PREFIX}{step:06d}{self.suffix}"

    def checkpoints(self) -> list[Path]:
        """Finished checkpoints, oldest first. Any other name (``step-000100.tmp``, ``step-000100.pt.tmp-<pid>``)
        is an unfinished write."""
        root = self.path / CHECKPOINTS
        if not root.is_dir():
            return []
        found = []
        for p in root.iterdir():
            digits = p.name[len(CKPT_PREFIX) : len(p.name) - len(self.suffix)]
            if p.name.startswith(CKPT_PREFIX) and p.name.endswith(self.suffix) and digits.isdigit():
                found.append((int(digits), p))
        return [p for _, p in sorted(found)]

    def latest_intact_checkpoint(
        self, check: Callable[[Path], None], warn: Callable[[str], None] | None = None
    ) -> Path | None:
        """:func:`newest_intact` over :meth:`checkpoints`."""
        return newest_intact(self.checkpoints(), check, warn)

    def prune_checkpoints(self, keep: int, protect: Iterable[int] = ()) -> None:
        """Delete all but the newest ``keep`` (at least 1) checkpoints, except the steps in ``protect``."""
        import shutil

        found = self.checkpoints()
        protect = set(protect)
        for p in found[: max(len(found) - max(1, keep), 0)]:
            if self.step_of(p) in protect:
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def step_of(self, checkpoint: Path) -> int:
        return int(checkpoint.name[len(CKPT_PREFIX) : len(checkpoint.name) - len(self.suffix)])
