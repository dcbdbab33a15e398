"""Which processes are still alive: the render tests' check that nothing outlives a kill (shared helper)."""

from __future__ import annotations

import os
from pathlib import Path


def live_processes(marker: str) -> dict[int, str]:
    """pid -> command line (first 120 characters) of every live, non-zombie process whose environment holds
    ``marker`` (a ``KEY=VALUE`` the test put in the environment it started: the driver, Ray's workers,
    Blender and anything Blender spawned inherit it)."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry.name}/environ").read_bytes()
            stat = Path(f"/proc/{entry.name}/stat").read_bytes()
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        state = stat[stat.rfind(b")") + 2 :].split()[0]
        if marker.encode() in env and state != b"Z":
            found[int(entry.name)] = cmd.replace(b"\0", b" ")[:120].decode(errors="replace")
    return found
