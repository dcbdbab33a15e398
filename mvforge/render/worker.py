"""Entry point of one Blender child process: ``python -m mvforge.render.worker JOB.json STAGING_DIR``.

Contract with the runner (mvforge.render.runner):
- The job is the dict of ``mvforge.render.plan.plan_job`` with ``input_path`` pointing at a local file.
- The worker writes the views, passes and ``cameras.json`` into STAGING_DIR, then ``result.json`` last:
  ``{"status": "ok", "normalization", "stats", "timings"}`` or
  ``{"status": "failed", "reason": <layout.REASONS code>, "message"}``.
- Exit code 0 after an ok result, 3 after a classified failure. Any other exit (an uncaught exception, a
  signal) means the process crashed: the runner retries it, then records ``crashed``.

It never writes outside STAGING_DIR; the runner decides what becomes final (meta.json, failure record).

Serve mode (one process renders a batch of objects in turn, docs/design.md §4):
``python -m mvforge.render.worker --serve REPLY_FD``. The worker imports Blender once, then reads one JSON
line per object from stdin, ``{"job": JOB.json, "staging": STAGING_DIR, "log": LOG}``: it points its stdout
and stderr (file descriptors 1 and 2, so Blender's own output too) at LOG, renders the job into STAGING_DIR
exactly as above (``result.json`` last), then writes one line ``{"uid", "status", "position"}`` to REPLY_FD.
It exits 0 at the end of stdin. A job that raises anything but a classified failure ends the process (a crash
of that object, as above) with exit code 4, after printing the traceback to LOG and writing
``{"status": "error", "message"}`` to result.json.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 3
# Serve mode: the job raised an unclassified exception (result.json holds {"status": "error", "message"}).
EXIT_ERROR = 4
RESULT = "result.json"

# Fault injection for the runner's own tests (hang / crash handling, docs/design.md §7): MVFORGE_RENDER_FAULT
# is a comma-separated list of uid=action with action hang | sigkill | delay (render after FAULT_DELAY_S: a
# slow object, so that a test can kill a run between two objects of one process). Never set in normal use.
FAULT_ENV = "MVFORGE_RENDER_FAULT"
FAULT_DELAY_S = 2.0


def _inject_fault(uid: str) -> None:
    for item in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        target, _, action = item.partition("=")
        if target != uid:
            continue
        if action == "hang":
            # A hung render that also leaves a grandchild behind: the runner must kill the whole group.
            import subprocess

            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
            while True:
                time.sleep(1)
        if action == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "delay":
            time.sleep(FAULT_DELAY_S)


def write_result(staging: Path, result: dict) -> None:
    from mvforge.fsutil import atomic_write_json

    atomic_write_json(staging / RESULT, result)


def render_one(job_path: Path, staging: Path) -> str:
    """Render one job into ``staging`` and write its ``result.json``; return its status (ok | failed)."""
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    staging = Path(staging)
    staging.mkdir(parents=True, exist_ok=True)
    _inject_fault(job["uid"])

    from mvforge.render.blender_scene import RenderFailure, render_job

    try:
        result = render_job(job, staging)
    except RenderFailure as e:
        write_result(staging, {"status": "failed", "reason": e.reason, "message": str(e)})
        return "failed"
    write_result(staging, {"status": "ok", **result})
    return "ok"


def flush_all() -> None:
    """Flush Python's stdout/stderr buffers and C stdio's (Blender prints through printf)."""
    import ctypes

    sys.stdout.flush()
    sys.stderr.flush()
    ctypes.CDLL(None).fflush(None)


def redirect_output(log: str) -> None:
    """Point file descriptors 1 and 2 at ``log`` (append), after flushing what was written for the previous
    object: Python's buffers and C stdio's (Blender prints through printf), so no line lands in another
    object's log."""
    flush_all()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def serve(reply_fd: int) -> int:
    """Serve mode (module docstring): render the jobs read from stdin in turn, one reply line per job."""
    # Blender and whatever it spawns must not hold the reply pipe: the runner reads its end-of-file as "the
    # worker died".
    os.set_inheritable(reply_fd, False)
    position = 0
    with os.fdopen(reply_fd, "w", encoding="utf-8", buffering=1) as reply:
        for line in iter(sys.stdin.readline, ""):
            cmd = json.loads(line)
            position += 1
            redirect_output(cmd["log"])
            print(f"--- mvforge worker: object {position} of Blender process {os.getpid()} ---", flush=True)
            try:
                status = render_one(Path(cmd["job"]), Path(cmd["staging"]))
            except Exception as e:
                # A crash of this object (the runner retries it in a fresh process), with its cause kept: the
                # traceback in its log and the error in result.json. Ended here, at once: leaving this block
                # would close the reply pipe, and the runner kills the group on that, mid-traceback.
                traceback.print_exc()
                error = f"{type(e).__name__}: {e}".splitlines()[0][:500]
                write_result(Path(cmd["staging"]), {"status": "error", "message": error})
                flush_all()
                os._exit(EXIT_ERROR)
            sys.stdout.flush()
            reply.write(json.dumps({"uid": cmd.get("uid"), "status": status, "position": position}) + "\n")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--serve":
        return serve(int(argv[1]))
    if len(argv) != 2:
        print(
            "usage: python -m mvforge.render.worker JOB.json STAGING_DIR | --serve REPLY_FD", file=sys.stderr
        )
        return 2
    status = render_one(Path(argv[0]), Path(argv[1]))
    return EXIT_OK if status == "ok" else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
