"""`mvtrain sds`: text to 3D by multi-view score distillation (MVDream §3.3, §4.2).

Modules: config (typed settings), cameras (multi-view camera batches and rays), field (hash grid + MLPs),
material, background, renderer (volume rendering with an occupancy grid), guidance (the frozen multi-view model
as a 3D prior), anneal (schedules), loop (optimisation, checkpoints, exact resume), export (mesh, turntable).
Imports ``mvforge.models`` and ``mvforge.cameras``, never another stage.
"""
