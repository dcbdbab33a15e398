"""The generator of the embedded demo objects (``mvforge/assets/demo``): meshes (``mesh``), the GLB writer
(``gltf``) and the twelve objects (``objects``). ``tools/make_demo_assets.py`` runs it."""
