"""Which optional dependency groups ("extras") are installed, and a one-line error naming the missing one.

mvforge installs in parts (pyproject ``[project.optional-dependencies]``, docs/design.md §1): a training node
needs no Blender (bpy pins numpy<2 and Python 3.11), a render node needs no diffusers. Each command calls
:func:`require` first, so a missing part is ``error: mvdata render needs mvforge[render] (bpy is not
installed): pip install 'mvforge[render]'`` and not a traceback deep inside an import. ``mvdata doctor`` prints
the table of :func:`report`. Pure Python: uses ``importlib.util.find_spec`` and imports nothing it checks.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from mvforge.errors import UserError

EXTRAS: dict[str, tuple[str, ...]] = {
    "render": ("bpy", "ray"),
    "filter": ("torch", "open_clip", "ray", "pyarrow", "pandas"),
    "shard": ("webdataset", "ray", "fsspec", "pandas", "pyarrow"),
    "train": (
        "torch",
        "diffusers",
        "transformers",
        "open_clip",
        "webdataset",
        "ray",
        "safetensors",
        "scipy",
        "yaml",
        "trimesh",
        "mcubes",
        "imageio",
        "av",
        "tensorboard",
    ),
}
"""Import names each extra provides (what :func:`require` checks), one entry per extra of pyproject.toml."""

COMMANDS: dict[str, tuple[str, ...]] = {
    "mvdata render": ("render",),
    "mvdata filter": ("filter",),
    "mvdata make-tiny-clip": ("filter",),
    "mvdata shard": ("shard",),
    "mvdata verify": ("shard",),
    "mvdata report": (),
    "mvtrain fit": ("train", "shard"),
    "mvtrain fit-vae": ("train", "shard"),
    "mvtrain sample": ("train",),
    "mvtrain dreambooth": ("train",),
    "mvtrain make-tiny-sd": ("train",),
    "mvtrain eval": ("train",),
    "mvtrain convert": ("train",),
    "mvtrain sds": ("train",),
}
"""The extras each command needs (``mvdata doctor`` reports which commands work)."""


def missing_modules(extra: str) -> list[str]:
    """Import names of ``extra`` that are not installed (no import is executed)."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def require(command: str, *extras: str) -> None:
    """Raise a one-line UserError naming the extra to install when ``command`` cannot run here."""
    for extra in extras or COMMANDS.get(command, ()):
        missing = missing_modules(extra)
        if missing:
            raise UserError(
                f"{command} needs mvforge[{extra}] ({', '.join(missing)} not installed): "
                f"pip install 'mvforge[{extra}]' (or 'mvforge[all]')"
            )


@dataclass(frozen=True)
class DoctorReport:
    """Installed extras (extra -> missing import names) and commands (command -> runnable)."""

    extras: dict[str, list[str]]
    commands: dict[str, bool]


def report() -> DoctorReport:
    extras = {e: missing_modules(e) for e in EXTRAS}
    commands = {c: all(not extras[e] for e in need) for c, need in COMMANDS.items()}
    return DoctorReport(extras, commands)
