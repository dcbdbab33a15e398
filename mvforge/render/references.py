"""External references of a 3D file, and the rule they must obey (docs/render_failures.md).

Objects are untrusted input: a glTF image URI ``../../../home/me/x.png``, an OBJ ``mtllib /etc/…`` or a .blend
linking ``/srv/other.blend`` would put the bytes of any readable local file into renders and shards. The rule,
one for every format: an external reference must resolve (symlinks followed) to a file inside the object's own
folder, the folder of its input file (for a download, the download's folder). ``file://`` and other URLs,
absolute paths, drive letters and ``..`` that leave the folder are refused, with reason ``outside_reference``
naming the reference as the file wrote it. Embedded data (glTF ``data:`` URIs, GLB buffers, packed images) is
not a reference.

Pure Python, no bpy: the worker checks glTF and OBJ here before their importer reads anything; files whose
references only Blender can list (FBX, USD, .blend) are checked after load with :func:`outside` on the paths
``bpy.path.abspath`` gives (mvforge.render.blender_scene).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

from mvforge.render import precheck

# A URI scheme (RFC 3986: letter, then letters, digits, + - .) followed by ':'; one letter is a Windows drive.
SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# OBJ .mtl statements that name a file: texture maps (their options come first, the file name last).
MTL_MAP_RE = re.compile(r"^(map_\w+|bump|disp|decal|refl|norm)\s", re.IGNORECASE)


def outside(ref: str, base: str | Path, root: str | Path) -> str | None:
    """Why reference ``ref`` (as written in a file in directory ``base``) may not be read, or None when it
    resolves inside ``root``. The reason names the reference; ``ref`` is a plain relative path or, for glTF,
    a URI (decoded by the caller)."""
    text = ref.strip()
    if not text:
        return None
    scheme = SCHEME_RE.match(text)
    if scheme and len(scheme.group(1)) > 1:
        return f"{ref!r} is a {scheme.group(1)}: URL (only files beside the object may be read)"
    # Blender writes paths relative to the .blend as '//name'; the caller resolves those with bpy first.
    if scheme or text.startswith(("/", "\\")) or os.path.isabs(text):
        return f"{ref!r} is an absolute path (only files beside the object may be read)"
    resolved = Path(os.path.realpath(Path(base) / text.replace("\\", "/")))
    root_real = Path(os.path.realpath(root))
    if resolved != root_real and root_real not in resolved.parents:
        return f"{ref!r} resolves to {resolved}, outside the object's folder {root_real}"
    return None


def outside_resolved(path: str, root: str | Path) -> str | None:
    """Why the absolute ``path`` (a reference already resolved by Blender) may not be read, or None."""
    if SCHEME_RE.match(path) and len(SCHEME_RE.match(path).group(1)) > 1:
        return outside(path, root, root)
    resolved = Path(os.path.realpath(path))
    root_real = Path(os.path.realpath(root))
    if resolved != root_real and root_real not in resolved.parents:
        where = "is" if str(resolved) == path else f"resolves to {resolved},"
        return f"{path!r} {where} outside the object's folder {root_real}"
    return None


def gltf_refusals(path: str | Path) -> list[str]:
    """Refusals (see :func:`outside`) for the image and buffer URIs of a .gltf / .glb, read from its JSON
    before any importer follows them; [] for an unreadable file (the importer reports it)."""
    path = Path(path)
    doc = precheck.gltf_json(path)
    if not isinstance(doc, dict):
        return []
    refusals = []
    for key in ("buffers", "images"):
        items = doc.get(key)
        for item in items if isinstance(items, list) else []:
            uri = item.get("uri") if isinstance(item, dict) else None
            if not isinstance(uri, str) or uri.startswith("data:"):
                continue
            # glTF URIs are percent-encoded (glTF 2.0 §3.3): '%2e%2e/' is '../'.
            why = outside(unquote(uri), path.parent, path.parent)
            if why:
                refusals.append(f"glTF {key[:-1]} {why}")
    return refusals


def gltf_missing_buffers(path: str | Path) -> list[str]:
    """The buffer URIs of a .gltf / .glb (inside its folder) whose file does not exist: the geometry itself is
    missing, whatever the texture policy."""
    path = Path(path)
    doc = precheck.gltf_json(path)
    buffers = doc.get("buffers") if isinstance(doc, dict) else None
    missing = []
    for item in buffers if isinstance(buffers, list) else []:
        uri = item.get("uri") if isinstance(item, dict) else None
        if (
            isinstance(uri, str)
            and not uri.startswith("data:")
            and not (path.parent / unquote(uri)).is_file()
        ):
            missing.append(uri)
    return missing


def obj_refusals(path: str | Path) -> list[str]:
    """Refusals for an OBJ's ``mtllib`` files and, in the .mtl files inside the folder, their texture maps
    (``map_Kd`` and the like); read before the OBJ importer follows them."""
    path = Path(path)
    refusals: list[str] = []
    for name in statement_args(path, "mtllib"):
        why = outside(name, path.parent, path.parent)
        if why:
            refusals.append(f"OBJ mtllib {why}")
            continue
        mtl = path.parent / name
        for line in read_lines(mtl):
            if MTL_MAP_RE.match(line):
                texture = mtl_map_file(line)
                why = outside(texture, mtl.parent, path.parent) if texture else None
                if why:
                    refusals.append(f"MTL {line.split()[0]} {why}")
    return refusals


def statement_args(path: Path, keyword: str, split: bool = True) -> list[str]:
    """The arguments of every ``keyword`` line of a text file. ``split``: ``mtllib a.mtl b.mtl`` names two
    files; a line with one ``.mtl`` is one name, spaces included."""
    names = []
    for line in read_lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and parts[0] == keyword:
            rest = parts[1].strip()
            names += rest.split() if split and rest.lower().count(".mtl") > 1 else [rest]
    return names


# .mtl texture options (MTL spec): those taking one word (on/off, a channel, a type) and those taking up to
# n numbers.
MTL_WORD_OPTIONS = {"-blendu", "-blendv", "-cc", "-clamp", "-imfchan", "-type"}
MTL_NUMBER_OPTIONS = {"-bm": 1, "-boost": 1, "-texres": 1, "-mm": 2, "-o": 3, "-s": 3, "-t": 3}


def mtl_map_file(line: str) -> str:
    """The file name of a .mtl texture statement: the text after its options (``-o 1 1 1 -bm 0.5 name.png``)."""
    tokens = line.split()[1:]
    i = 0
    while i < len(tokens) - 1:
        option = tokens[i].lower()
        if option in MTL_WORD_OPTIONS:
            i += 2
        elif option in MTL_NUMBER_OPTIONS:
            i += 1
            for _ in range(MTL_NUMBER_OPTIONS[option]):
                if i < len(tokens) - 1 and looks_numeric(tokens[i]):
                    i += 1
        else:
            break
    return " ".join(tokens[i:])


def obj_missing_materials(path: str | Path) -> list[str]:
    """What an OBJ's materials lack: ``mtllib`` files that do not exist (inside the folder) and ``usemtl``
    names that no ``newmtl`` of its .mtl files defines. Either way Blender's importer renders default grey and
    only logs it. An OBJ with ``usemtl`` but no ``mtllib`` line at all lacks nothing."""
    path = Path(path)
    missing, defined = [], set()
    libraries = statement_args(path, "mtllib")
    for name in libraries:
        mtl = path.parent / name
        if not mtl.is_file():
            missing.append(f"material library {name!r} does not exist")
            continue
        defined |= set(statement_args(mtl, "newmtl", split=False))
    used = sorted(set(statement_args(path, "usemtl", split=False)))
    undefined = [m for m in used if m not in defined]
    # Without any mtllib line the file describes no material: default grey is what it means, not a loss.
    if undefined and libraries and len(missing) < len(libraries):
        missing.append(f"material(s) {', '.join(map(repr, undefined[:5]))} not defined in its .mtl")
    return missing


def looks_numeric(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
