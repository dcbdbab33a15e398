"""`--version` and `--help` of every command, enumerated from the typer apps (not a hand list), imports nothing heavy
(design §1, docs/cli.md): the CLI modules keep torch, bpy, ray, diffusers, open_clip, pyarrow and pandas inside
the command bodies."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "bpy", "ray", "diffusers", "open_clip", "pyarrow", "pandas")

# Runs `<app> --help` and then `<app> <command> --help` for every command of the click group typer builds,
# in one fresh interpreter per app, and reports which command first pulled in which heavy module.
PROBE = r"""
import json, sys
import typer.main
from mvforge.cli.{app} import app
HEAVY = {heavy!r}
group = typer.main.get_command(app)
report = {{"commands": sorted(group.commands), "heavy": {{}}}}
for argv in [["--version"], ["--help"]] + [[name, "--help"] for name in sorted(group.commands)]:
    try:
        group.main(argv, prog_name="{app}", standalone_mode=False)
    except SystemExit:
        pass
    loaded = [m for m in HEAVY if m in sys.modules]
    if loaded:
        report["heavy"][" ".join(argv)] = loaded
        break
print("REPORT" + json.dumps(report))
"""


@pytest.mark.parametrize("app", ["mvdata", "mvtrain"])
def test_every_command_help_imports_nothing_heavy(app):
    code = PROBE.format(app=app, heavy=HEAVY)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.rsplit("REPORT", 1)[1])
    assert report["heavy"] == {}, f"{app}: --help imported heavy modules: {report['heavy']}"
    # The enumeration really found the commands (a broken probe must not pass on an empty list).
    expected = {
        "mvdata": {"render", "filter", "shard", "verify"},
        "mvtrain": {"fit", "sample", "dreambooth"},
    }[app]
    assert expected <= set(report["commands"]), report["commands"]
