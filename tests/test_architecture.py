"""The package's dependency rule (design §1), checked over every module's imports.

- A stage (render, filter, shards, train, sds, eval) imports the shared layers (formats, models, cameras, config,
  errors, fsutil, progress, raytools, assets) and no other stage, with one named exception: ``train`` reads
  batches through ``shards.loader``, the consumer API of the shard format.
- The shared layers import no stage, and nothing imports ``cli`` or ``report`` except ``cli`` (they sit on top).
- Only ``render/blender*`` imports ``bpy``.
Imports inside functions count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import mvforge

STAGES = {"render", "filter", "shards", "train", "sds", "eval"}
TOP = {"cli", "report"}
# The loader and its config are the consumer API of the shard format (design §1).
ALLOWED_CROSS_STAGE = {("train", "mvforge.shards.loader"), ("train", "mvforge.shards.config")}


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    out = []
    pkg = module if is_package else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from mvforge.filter import pipeline` may import a submodule: check base.name (a prefix test
            # on it also covers a plain name imported from base).
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return out


def _unit(module: str, root_pkg: str) -> str:
    """The layer a module belongs to: its first package component under the root (or the module name)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def check_layering(package_dir: Path, root_pkg: str = "mvforge") -> tuple[list[str], int]:
    """(violations as 'module:line imports target (rule)', number of modules checked)."""
    violations, count = [], 0
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        count += 1
        src = _unit(module, root_pkg)
        for target, line in _imports(tree, module, path.name == "__init__.py"):
            where = f"{module}:{line} imports {target}"
            if target == "bpy" or target.startswith("bpy."):
                if not (src == "render" and module.split(".")[-1].startswith("blender")):
                    violations.append(f"{where} (only render/blender* may import bpy)")
                continue
            if not target.startswith(root_pkg + "."):
                continue
            dst = _unit(target, root_pkg)
            if dst == src:
                continue
            if dst in TOP and src != "cli":
                violations.append(f"{where} ({dst} sits above the stages; nothing below imports it)")
            elif dst in STAGES and src in STAGES:
                if not any(
                    src == s and (target == t or target.startswith(t + ".")) for s, t in ALLOWED_CROSS_STAGE
                ):
                    violations.append(f"{where} (a stage imports no other stage)")
            elif dst in STAGES and src not in TOP:
                violations.append(f"{where} (shared layer {src} imports stage {dst})")
    return violations, count


def test_package_follows_the_dependency_rule():
    package_dir = Path(mvforge.__file__).parent
    violations, count = check_layering(package_dir)
    assert violations == [], "\n".join(violations)
    # Every .py file was walked (a checker that silently skips files would pass anything).
    assert count >= len(list(package_dir.rglob("*.py"))) > 40


def test_checker_catches_planted_violations(tmp_path):
    pkg = tmp_path / "mvforge"
    files = {
        "__init__.py": "",
        "render/__init__.py": "",
        "render/driver.py": "from mvforge.filter import pipeline\n",
        "render/blender_scene.py": "import bpy\n",
        "filter/__init__.py": "",
        "filter/pipeline.py": "def f():\n    import bpy\n",
        "train/__init__.py": "",
        "train/loop.py": "from mvforge.shards.loader import X\nfrom mvforge.shards.writer import Y\n",
        "shards/__init__.py": "",
        "models/__init__.py": "from mvforge.train import loop\n",
        "formats/__init__.py": "from ..report import build\n",
        "report.py": "from mvforge.render import driver\n",
        "cli/__init__.py": "from mvforge.sds import loop\n",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(textwrap.dedent(text))
    violations, count = check_layering(pkg)
    text = "\n".join(violations)
    assert count == len(files)
    assert "mvforge.render.driver:1 imports mvforge.filter.pipeline (a stage" in text
    assert "mvforge.filter.pipeline:2 imports bpy" in text
    assert "mvforge.train.loop:2 imports mvforge.shards.writer" in text
    assert "mvforge.train.loop:1" not in text  # the named exception
    assert "mvforge.models:1 imports mvforge.train.loop (shared layer" in text
    assert "mvforge.formats:1 imports mvforge.report.build (report sits above" in text
    assert (
        "mvforge.render.blender_scene" not in text
        and "mvforge.report:" not in text
        and "mvforge.cli" not in text
    )
    assert len(violations) == 5


def test_resume_settings_are_compared_in_one_place():
    """Resume only with the same settings is implemented once (docs/design.md §5, docs/reliability.md): every
    stage compares through mvforge.rundir (check_resume / settings_difference), which alone calls
    config.first_difference and holds the one list of execution settings, rundir.EXECUTION_KEYS."""
    package_dir = Path(mvforge.__file__).parent
    callers = set()
    for path in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if name == "first_difference":
                    callers.add(path.relative_to(package_dir).as_posix())
    assert callers == {"config.py", "rundir.py"}, callers  # config.py: its own recursion
