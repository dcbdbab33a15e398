"""The CLI convention of docs/cli.md, checked by walking every command of both typer apps (not a hand list of
commands), in-process: `-h`, `--version`, required marks, defaults shown one way, and the shared option names.
A new command that breaks a rule fails here; a deviation that remains is listed below and in docs/cli.md's table.

Also: every relative link in README.md and docs/ resolves, and every `mvdata`/`mvtrain` command shown in a code
block of README.md, docs/ and scripts/demo.sh parses against the real click command (names, values; nothing runs).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

import mvforge
from mvforge.cli import mvdata, mvtrain

ROOT = Path(__file__).resolve().parents[2]
APPS = {"mvdata": mvdata.app, "mvtrain": mvtrain.app}
# typer builds click objects (typer vendors its own click: compare by attribute, not isinstance).
GROUPS = {
    "mvdata": typer.main.get_command(mvdata.app),
    "mvtrain": typer.main.get_command(mvtrain.app),
}
COMMANDS = [(app, name) for app, group in GROUPS.items() for name in sorted(group.commands)]
IDS = [f"{app} {name}" for app, name in COMMANDS]
# Wide enough that rich never wraps a mark like "[required]" away from its option.
WIDE = {"COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1"}

# docs/cli.md, "Deviations": the commands each rule leaves out, with the reason there.
NO_OUT = {"mvdata verify", "mvdata report", "mvdata doctor", "mvdata version", "mvtrain version"}
POSITIONAL_INPUT = {
    "mvdata render",
    "mvdata filter",
    "mvdata shard",
    "mvdata verify",
    "mvdata report",
    "mvtrain convert",
}
# The commands that start Ray (mvforge/raytools.py init_ray callers); each takes --address.
RAY_COMMANDS = {"mvdata render", "mvdata filter", "mvdata shard", "mvtrain fit", "mvtrain sds"}
# The Ray commands whose workers may hold GPUs (shard's tasks are CPU work).
GPU_WORKERS = RAY_COMMANDS - {"mvdata shard"}
# --model is the diffusion model a command loads or trains, and only that.
MODEL_COMMANDS = {
    "mvtrain fit",
    "mvtrain fit-vae",
    "mvtrain sample",
    "mvtrain sds",
    "mvtrain eval",
    "mvtrain dreambooth",
}
# --steps alone is denoising steps; optimiser steps are --max-steps.
DENOISING_STEPS = {"mvtrain sample", "mvtrain eval"}
# Values a --config file may supply cannot be click-required; their help carries a "[required ..." mark.
REQUIRED_UNLESS = {
    "mvtrain fit": {"--model", "--shards"},
    "mvtrain sds": {"--model", "--prompt"},
    "mvtrain dreambooth": {"--model", "--images", "--prompt"},
    "mvtrain sample": {"--prompt", "--prompts"},
}
# The old names removed before the first release (docs/cli.md, "names"): no command takes them, so an old
# script fails with "No such option" rather than meaning something else. (--steps stays as denoising steps.)
REMOVED = {"--pretrained", "--model-config", "--run", "--gpus-per-task", "--use-gpu"}
# The execution-setting dialects docs/cli.md replaced, and the commands that still speak one (with the reason).
DIALECTS = {"--dtype": {"mvtrain convert"}, "--renders": set()}
NO_CONFIG: set[str] = set()  # commands with --set but no --config
DEFAULT_IN_HELP = re.compile(r"\(default\b|\bdefault:|[;,] default |\bdefault \d|\bby default\b", re.I)


def _options(cmd) -> list:
    return [p for p in cmd.params if p.param_type_name == "option"]


def _names(cmd) -> set[str]:
    return {o for p in _options(cmd) for o in p.opts + p.secondary_opts}


def _help(argv: list[str], app: str) -> str:
    res = CliRunner().invoke(APPS[app], argv, env=WIDE, prog_name=app)
    assert res.exit_code == 0, (argv, res.output)
    return res.output


def test_the_walk_finds_the_commands():
    # A broken enumeration must not pass every rule below on an empty list.
    assert {"mvdata render", "mvdata filter", "mvdata shard", "mvtrain fit", "mvtrain sds"} <= set(IDS)


@pytest.mark.parametrize("app", sorted(GROUPS))
def test_version_flag_prints_the_version(app):
    res = CliRunner().invoke(APPS[app], ["--version"], prog_name=app)
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"mvforge {mvforge.__version__}"


@pytest.mark.parametrize("app", sorted(GROUPS))
def test_app_takes_dash_h(app):
    assert _help(["-h"], app) == _help(["--help"], app)


@pytest.mark.parametrize(("app", "name"), COMMANDS, ids=IDS)
def test_command_help_marks_required_and_shows_defaults_one_way(app, name):
    key = f"{app} {name}"
    cmd = GROUPS[app].commands[name]
    text = _help([name, "-h"], app)
    assert "Usage:" in text
    assert cmd.help, f"{key}: no help text (a docstring or help=)"
    # A line break inside a paragraph is kept by rich and wraps on its own: sentences broke mid-way.
    assert all("\n" not in para for para in cmd.help.split("\n\n")), f"{key}: a hard-wrapped help paragraph"
    # Every click-required parameter shows the [required] mark (rich prints one per parameter).
    required = [p for p in cmd.params if p.required]
    assert text.count("[required]") == len(required), (key, [p.name for p in required])
    for opt in REQUIRED_UNLESS.get(key, ()):
        (p,) = [p for p in _options(cmd) if opt in p.opts]
        assert "[required" in (p.help or ""), f"{key} {opt}: mark it required (docs/cli.md)"
    for p in _options(cmd):
        # A default is shown by click's [default: X] (show_default), never written into the help text.
        assert not DEFAULT_IN_HELP.search(p.help or ""), f"{key} {p.opts}: move the default to show_default"


@pytest.mark.parametrize(("app", "name"), COMMANDS, ids=IDS)
def test_help_at_80_columns_cuts_no_option_name_or_word(app, name, monkeypatch):
    # rich sizes each panel's table to its widest flag names and longest help word; past 80 columns it cuts
    # cells with "…" (an option no one could then type). A long flag pair goes into a panel of its own.
    import typer.rich_utils

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 80)
    res = CliRunner().invoke(APPS[app], [name, "-h"], env={"COLUMNS": "80", "NO_COLOR": "1"}, prog_name=app)
    assert res.exit_code == 0, res.output
    cut = [line for line in res.output.splitlines() if "…" in line]
    assert not cut, f"{app} {name}: {cut}"


@pytest.mark.parametrize(("app", "name"), COMMANDS, ids=IDS)
def test_command_option_names_follow_the_convention(app, name):
    key = f"{app} {name}"
    cmd = GROUPS[app].commands[name]
    names = _names(cmd)
    opts = _options(cmd)
    # --out is the stage's own output directory, with -o.
    if key not in NO_OUT:
        (out,) = [p for p in opts if "--out" in p.opts]
        assert "-o" in out.opts, f"{key}: --out needs -o"
    else:
        assert "--out" not in names, f"{key} has --out now: drop it from NO_OUT"
    # Input positional.
    has_argument = any(p.param_type_name == "argument" for p in cmd.params)
    assert has_argument == (key in POSITIONAL_INPUT), f"{key}: input positional (docs/cli.md)"
    # --address wherever Ray runs, with RAY_ADDRESS.
    assert ("--address" in names) == (key in RAY_COMMANDS), key
    if key in RAY_COMMANDS:
        (addr,) = [p for p in opts if "--address" in p.opts]
        assert addr.envvar == "RAY_ADDRESS", key
    assert ("--workers" in names) == (key in RAY_COMMANDS), f"{key}: --workers where Ray runs"
    assert ("--gpus-per-worker" in names) == (key in GPU_WORKERS), (
        f"{key}: --gpus-per-worker (docs/cli.md, Ray)"
    )
    # One way to ask for a device and a compute precision.
    for p in opts:
        if "--device" in p.opts:
            assert all(w in (p.help or "") for w in ("auto", "cpu", "cuda")), f"{key}: --device auto|cpu|cuda"
        if "--precision" in p.opts:
            assert all(w in (p.help or "") for w in ("fp32", "fp16", "bf16")), f"{key}: --precision values"
    # --model means one thing.
    if key in MODEL_COMMANDS:
        (model,) = [p for p in opts if "--model" in p.opts]
        assert model.opts[0] == "--model", key
    else:
        assert "--model" not in names, f"{key}: --model is the diffusion model (docs/cli.md)"
    # One name per option: no alias beside the convention's name (a boolean's --no-X is its other half).
    for p in opts:
        longs = [o for o in p.opts if o.startswith("--")]
        assert len(longs) == 1, f"{key}: {longs}: one name per option, the old ones are removed (docs/cli.md)"
    assert not names & REMOVED, f"{key}: {sorted(names & REMOVED)} were removed (docs/cli.md, names)"
    # --steps alone is denoising steps; optimiser steps are --max-steps.
    if "--steps" in names:
        assert key in DENOISING_STEPS, f"{key}: optimiser steps are --max-steps (docs/cli.md)"
    for dialect, where in DIALECTS.items():
        assert (dialect in names) <= (key in where), f"{key}: {dialect} is not the convention (docs/cli.md)"
    # A config file and overrides come as a pair; --set says it repeats.
    assert ("--set" in names) <= ("--config" in names or key in NO_CONFIG), key
    for p in opts:
        if "--set" in p.opts:
            assert p.multiple and "(repeatable)" in (p.help or ""), key


# --- docs: links and the commands shown ---------------------------------------------------------------------

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_relative_links_resolve(doc):
    text = FENCE.sub("", doc.read_text())  # links inside code blocks are code, not links
    broken = []
    for m in LINK.finditer(text):
        target = m.group(1) or m.group(2)
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (doc.parent / path).exists():
            broken.append(target)
    assert not broken, f"{_rel(doc)}: links to missing files: {broken}"


def _shown_commands(path: Path) -> list[str]:
    """The mvdata/mvtrain command lines of a file's code blocks (the whole file for a script)."""
    text = path.read_text()
    blocks = [text] if path.suffix == ".sh" else FENCE.findall(text)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = line.strip().removeprefix("$ ").split(None, 1)
            if words and Path(words[0].strip("\"'")).name in GROUPS:
                lines.append(line.strip().removeprefix("$ "))
    return lines


SHOWN = [(_rel(p), line) for p in [*DOCS, ROOT / "scripts" / "demo.sh"] for line in _shown_commands(p)]
# A script's `NAME=${NAME:-VALUE}` defaults stand in for "$NAME" (the value a plain run passes).
SCRIPT_DEFAULTS = dict(
    re.findall(r"^(\w+)=\$\{\w+:-([^}]*)\}", (ROOT / "scripts" / "demo.sh").read_text(), re.M)
)


def test_docs_show_commands():
    assert len([s for s in SHOWN if s[0] == "README.md"]) >= 10, "the README's examples were not found"


@pytest.mark.parametrize(("where", "line"), SHOWN, ids=[f"{w}: {ln[:60]}" for w, ln in SHOWN])
def test_shown_command_parses(where, line):
    # "..." elides options; a shell array ("${SAVE[@]}") expands to options the script builds.
    argv = [w for w in shlex.split(line, comments=True) if w != "..." and not w.startswith("${")]
    argv = [SCRIPT_DEFAULTS.get(w[1:], w) if w.startswith("$") else w for w in argv]
    app, name, args = Path(argv[0]).name, argv[1], argv[2:]
    group = GROUPS[app]
    assert name in group.commands, f"{where}: `{app} {name}` is no command of {app}"
    cmd = group.commands[name]
    # Some examples elide required parts ("..."); a missing required value is not the doc's bug, a wrong name is.
    saved = [(p, p.required) for p in cmd.params]
    try:
        for p, _ in saved:
            p.required = False
        cmd.make_context(f"{app} {name}", list(args))
    except Exception as e:  # typer's click UsageError: an unknown name or a value of the wrong type
        pytest.fail(f"{where}: `{line}`: {getattr(e, 'format_message', e.__str__)()}")
    finally:
        for p, required in saved:
            p.required = required


@pytest.mark.parametrize(
    "args, named",
    [
        (["shard", "renders", "--out", ""], "--out"),
        (["shard", "renders", "--out= "], "--out"),
        (["verify", ""], "an argument"),
    ],
)
def test_an_empty_argument_is_refused_before_the_command_runs(args, named, tmp_path):
    """ "" is the current directory to a path option: an unset shell variable must not write the run there."""
    mvdata_bin = str(Path(sys.executable).with_name("mvdata"))
    r = subprocess.run([mvdata_bin, *args], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {named} is given an empty value"), r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written in the working directory


def test_an_empty_negative_prompt_is_a_value():
    from mvforge.cli.common import refuse_empty_arguments

    refuse_empty_arguments(["--prompt", "a chair", "--negative-prompt", ""])  # no negative text: allowed


@pytest.mark.parametrize("cli, command", [("mvtrain", "make-tiny-sd"), ("mvdata", "make-tiny-clip")])
def test_tiny_model_seeds_are_checked_like_every_config_seed(cli, command, tmp_path):
    exe = str(Path(sys.executable).with_name(cli))
    r = subprocess.run(
        [exe, command, "--out", str(tmp_path / "m"), "--seed", "-1"], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.startswith("error: --seed: -1 is not a seed"), r.stderr
    assert not (tmp_path / "m").exists()
