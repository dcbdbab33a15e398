"""Entry point of one Blender child process: ``python -m mvforge.render.worker JOB.json STAGING_DIR``.

Contract with the runner (mvforge.render.runner):
- The job is the dict of ``mvforge.render.plan.plan_job`` with ``input_path`` pointing at a local file.
- The worker writes the views, passes and ``cameras.json`` into STAGING_DIR, then ``result.json`` last:
  ``{"status": "ok", "normalization", "stats", "timings"}`` or
  ``{"status": "failed", "reason": <layout.REASONS code>, "message"}``.
- Exit code 0 after an ok result, 3 after a classified failure. Any other exit (an uncaught exception, a
  signal) means the process crashed: the runner retries it, then records ``crashed``.

It never writes outside STAGING_DIR; the runner decides what becomes final (meta.json, failure record).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 3
RESULT = "result.json"

# Fault injection for the runner's own tests (hang / crash handling, design §7): MVFORGE_RENDER_FAULT is a
# comma-separated list of uid=action with action hang | sigkill. Never set in normal use.
FAULT_ENV = "MVFORGE_RENDER_FAULT"


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


def write_result(staging: Path, result: dict) -> None:
    from mvforge.fsutil import atomic_write_json

    atomic_write_json(staging / RESULT, result)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m mvforge.render.worker JOB.json STAGING_DIR", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    staging = Path(argv[1])
    staging.mkdir(parents=True, exist_ok=True)
    _inject_fault(job["uid"])

    from mvforge.render.blender_scene import RenderFailure, render_job

    try:
        result = render_job(job, staging)
    except RenderFailure as e:
        write_result(staging, {"status": "failed", "reason": e.reason, "message": str(e)})
        return EXIT_FAILED
    write_result(staging, {"status": "ok", **result})
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
