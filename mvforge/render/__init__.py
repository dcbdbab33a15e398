"""`mvdata render`: Objaverse / local 3D files -> normalised RGBA renders under HDRI light (docs/design.md
§2.1).

Only ``mvforge.render.blender_scene`` imports bpy, and it runs in a child process owned by a Ray task.
"""
