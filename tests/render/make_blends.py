"""Writes the .blend (and FBX) inputs of tests/render/test_render_fidelity_3.py: ``python make_blends.py OUT``.

Run with the project's bpy in a subprocess at test time (nothing is committed: Blender writes them in ~1 s).
Every object carries a flat colour, so an albedo pass tells which object a pixel shows.

OUT_DIR/scenes.blend          two scenes; the one the file opens with ("Scene") holds a red unit cube, an empty
                              instancing collection "Inst" (a green cube above it, half 0.25 at z = 1), a yellow
                              cube disabled for rendering, a blue cube in a collection its view layer excludes and
                              a cyan cube in a collection disabled for rendering; "Other" holds a magenta cube.
OUT_DIR/linked/main.blend     instances collection "Part" (a green cube) linked from //lib.blend, beside it.
OUT_DIR/missing/main.blend    the same, with its lib.blend deleted.
OUT_DIR/outside/obj/main.blend  links //../lib.blend: a library outside the object's folder.
OUT_DIR/outside_image/obj/main.blend  a red cube textured with //../secret.png (outside; a magenta image).
OUT_DIR/outside_fbx/obj/cube.fbx  a red cube whose FBX texture path is ../secret.png (outside), written by
                              Blender's FBX exporter with relative paths.
OUT_DIR/scripts.blend         a red cube with a Python driver and a text block registered to run on load, both
                              writing OUT_DIR/script-ran if Blender ever executed them (untrusted input).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import bpy

COLORS = {
    "red": (0.8, 0.0, 0.0),
    "green": (0.0, 0.8, 0.0),
    "blue": (0.0, 0.0, 0.8),
    "yellow": (0.8, 0.8, 0.0),
    "cyan": (0.0, 0.8, 0.8),
    "magenta": (0.8, 0.0, 0.8),
}


def fresh() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)


def material(color: str):
    mat = bpy.data.materials.get(color) or bpy.data.materials.new(color)
    mat.use_nodes = True
    bsdf = next(n for n in mat.node_tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    bsdf.inputs["Base Color"].default_value = (*COLORS[color], 1.0)
    return mat


def cube(name: str, color: str, location, half: float, collection) -> bpy.types.Object:
    s = half
    verts = [(x, y, z) for x in (-s, s) for y in (-s, s) for z in (-s, s)]
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts, [], quads)
    mesh.materials.append(material(color))
    obj = bpy.data.objects.new(name, mesh)
    obj.location = location
    collection.objects.link(obj)
    return obj


def child_collection(scene, name: str):
    col = bpy.data.collections.new(name)
    scene.collection.children.link(col)
    return col


def scenes(out: Path) -> None:
    fresh()
    scene = bpy.context.scene
    scene.name = "Scene"
    cube("Red", "red", (0, 0, 0), 0.5, scene.collection)
    inst = bpy.data.collections.new("Inst")  # in no scene: shown only through the instancing empty
    cube("Green", "green", (0, 0, 1), 0.25, inst)
    empty = bpy.data.objects.new("InstEmpty", None)
    empty.instance_type = "COLLECTION"
    empty.instance_collection = inst
    scene.collection.objects.link(empty)
    cube("Yellow", "yellow", (-3, 0, 0), 0.5, scene.collection).hide_render = True
    excluded = child_collection(scene, "Excluded")
    cube("Blue", "blue", (3, 0, 0), 0.5, excluded)
    scene.view_layers[0].layer_collection.children["Excluded"].exclude = True
    disabled = child_collection(scene, "Disabled")
    cube("Cyan", "cyan", (0, 0, -3), 0.5, disabled)
    disabled.hide_render = True
    other = bpy.data.scenes.new("Other")
    cube("Magenta", "magenta", (0, 5, 0), 2.0, other.collection)
    bpy.ops.wm.save_as_mainfile(filepath=str(out / "scenes.blend"))


def library(path: Path) -> None:
    fresh()
    part = child_collection(bpy.context.scene, "Part")
    cube("Part", "green", (0, 0, 0), 0.5, part)
    path.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(path))


def linking(main: Path, lib: Path) -> None:
    """``main`` instances collection "Part" linked (relative path) from ``lib``."""
    fresh()
    main.parent.mkdir(parents=True, exist_ok=True)
    # Saved first, so the library path is written relative to it.
    bpy.ops.wm.save_as_mainfile(filepath=str(main))
    with bpy.data.libraries.load(str(lib), link=True, relative=True) as (src, dst):
        dst.collections = ["Part"]
    empty = bpy.data.objects.new("PartInstance", None)
    empty.instance_type = "COLLECTION"
    empty.instance_collection = dst.collections[0]
    bpy.context.scene.collection.objects.link(empty)
    bpy.ops.wm.save_as_mainfile(filepath=str(main), relative_remap=True)


def outside_image(main: Path) -> None:
    fresh()
    main.parent.mkdir(parents=True, exist_ok=True)
    secret = main.parent.parent / "secret.png"
    img = bpy.data.images.new("secret", 8, 8)
    img.pixels.foreach_set([1.0, 0.0, 1.0, 1.0] * 64)
    img.filepath_raw = str(secret)
    img.file_format = "PNG"
    img.save()
    bpy.ops.wm.save_as_mainfile(filepath=str(main))
    obj = cube("Red", "red", (0, 0, 0), 0.5, bpy.context.scene.collection)
    tree = obj.data.materials[0].node_tree
    tex = tree.nodes.new("ShaderNodeTexImage")
    tex.image = bpy.data.images.load(str(secret))
    tex.image.filepath = "//../secret.png"
    bsdf = next(n for n in tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    tree.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    bpy.ops.wm.save_as_mainfile(filepath=str(main), relative_remap=True)


def outside_fbx(path: Path) -> None:
    fresh()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = path.parent.parent / "secret.png"
    img = bpy.data.images.new("secret", 8, 8)
    img.pixels.foreach_set([1.0, 0.0, 1.0, 1.0] * 64)
    img.filepath_raw = str(secret)
    img.file_format = "PNG"
    img.save()
    obj = cube("Red", "red", (0, 0, 0), 0.5, bpy.context.scene.collection)
    obj.data.uv_layers.new(name="UVMap")
    tree = obj.data.materials[0].node_tree
    tex = tree.nodes.new("ShaderNodeTexImage")
    tex.image = img
    bsdf = next(n for n in tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    tree.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    bpy.ops.export_scene.fbx(filepath=str(path), path_mode="RELATIVE", embed_textures=False)


def scripts(out: Path) -> None:
    fresh()
    marker = str(out / "script-ran")
    obj = cube("Red", "red", (0, 0, 0), 0.5, bpy.context.scene.collection)
    text = bpy.data.texts.new("on_load.py")
    text.write(f"import pathlib\npathlib.Path({marker!r}).write_text('text block')\n")
    text.use_module = True  # "Register": runs when the file loads, if scripts are trusted
    driver = obj.driver_add("location", 0).driver
    driver.type = "SCRIPTED"
    driver.expression = f"__import__('pathlib').Path({marker!r}).write_text('driver') and 0"
    bpy.ops.wm.save_as_mainfile(filepath=str(out / "scripts.blend"))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    scenes(out)
    library(out / "linked" / "lib.blend")
    linking(out / "linked" / "main.blend", out / "linked" / "lib.blend")
    library(out / "missing" / "lib.blend")
    linking(out / "missing" / "main.blend", out / "missing" / "lib.blend")
    (out / "missing" / "lib.blend").unlink()
    library(out / "outside" / "lib.blend")
    linking(out / "outside" / "obj" / "main.blend", out / "outside" / "lib.blend")
    outside_image(out / "outside_image" / "obj" / "main.blend")
    scripts(out)
    outside_fbx(out / "outside_fbx" / "obj" / "cube.fbx")
    for leftover in out.rglob("*.blend1"):
        leftover.unlink()
    shutil.rmtree(out / "unused", ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
