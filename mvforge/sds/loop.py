"""The SDS optimisation loop of `mvtrain sds` (docs/design.md §2.6, §9: one loop read top to bottom).

Run directory ``<out>``, the `--out` of one prompt (docs/cli.md, "output"; its names: mvforge/formats/sds_result.py)::

    config.toml                 the resolved SDSConfig (written first)
    checkpoints/step-NNNNNN.pt  field, background, occupancy grid, optimiser, step (atomic files)
    metrics.csv, tensorboard/   one row / scalars per logged step (``SDS_METRICS``, mvforge.metrics: the format
                                of fit and dreambooth), the snapshots as images
    snapshots/step-NNNNNN.png   4 views (elevation 15, azimuths 0/90/180/270), albedo, every snapshot_every
    mesh.glb, mesh.obj          marching cubes of the final field (export.py); + mesh.mtl and the texture PNG
                                when export_mesh.uv_texture bakes one
    turntable.gif, .mp4         albedo-lit orbit of the final field
    summary.json                written LAST: prompt, steps, seconds, peak memory, export_seconds, backend,
                                device, outputs

Exact resume: every random draw of step s (cameras, shading, background colour, t, noise, the VAE's posterior
sample, ray jitter, occupancy-grid probes) comes from a generator seeded with (seed, s, stream), and the annealing
and loss ramps are functions of s. A checkpoint holds everything else that evolves: the field, background,
optimiser and occupancy grid. So a run killed after a checkpoint and resumed repeats the uninterrupted run's
losses and ends with the same field (tested on CPU). Checkpoints: every ``checkpoint_every`` steps, one just
before the 64² -> 256² switch (memory peaks right after it) and one at the end.
"""

from __future__ import annotations

import io
import pickle
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvforge import config as config_mod
from mvforge import rundir
from mvforge.devices import resolve_device
from mvforge.errors import UserError
from mvforge.formats import sds_result as result_format
from mvforge.fsutil import atomic_write_bytes
from mvforge.models.resolve import weights_fingerprint
from mvforge.progress import StageProgress
from mvforge.sds.anneal import linear_ramp, timestep_range
from mvforge.sds.background import EnvironmentBackground, draw_background_color
from mvforge.sds.cameras import orbit_cameras, sample_cameras
from mvforge.sds.config import SDSConfig
from mvforge.sds.field import HashGridField
from mvforge.sds.guidance import MultiViewSDS
from mvforge.sds.material import ALBEDO, draw_shading
from mvforge.sds.renderer import VolumeRenderer

SDS_METRICS = (
    "step", "loss", "loss_sds", "loss_orient", "lambda_orient", "t", "t_min", "t_max", "lr", "resolution",
    "shading", "step_s",
)  # fmt: skip
"""Columns of the run's metrics.csv (``step``: optimisation steps done; ``t`` the drawn timestep, ``t_min`` /
``t_max`` the annealed range it was drawn from; ``lr`` of the field's first parameter group)."""

CKPT_SUFFIX = result_format.CKPT_SUFFIX
COMPARED_ELSEWHERE = ("model",)
"""Left out of the run directory's settings comparison (``rundir.RunDir.open``): the model is compared as the
weights it names (``weights_fingerprint``, in each checkpoint), not as a path string."""
# Independent random streams of one step (exact resume, module docstring).
STREAM_CAMERAS, STREAM_SHADING, STREAM_BACKGROUND, STREAM_T_NOISE, STREAM_VAE, STREAM_RAYS, STREAM_OCC = (
    range(7)
)
SNAPSHOT_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)


def _np_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, stream])


def _torch_gen(seed: int, step: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first (``*.pt.tmp-<pid>`` files are unfinished writes)."""
    return rundir.RunDir(run_dir, CKPT_SUFFIX).checkpoints()


@dataclass
class SDSState:
    """What a run builds and evolves: the trainable modules and their optimiser."""

    field: HashGridField
    background: EnvironmentBackground
    renderer: VolumeRenderer
    optimizer: torch.optim.Optimizer
    seconds: float | None = 0.0
    """Wall seconds of the optimisation up to the current step, summed over the sessions that ran steps (each
    from its start, model loading included); None for a checkpoint written before this was recorded."""
    peak_memory_mb: float | None = 0.0
    """Peak memory of those sessions' optimisation (MiB: CUDA allocations on a GPU, process RSS on a CPU)."""


def build_state(cfg: SDSConfig, device: torch.device) -> SDSState:
    """Field, background and renderer on ``device`` (weights seeded by ``cfg.seed``) and AdamW with one learning
    rate per group: grid, MLPs, background (official: 1e-2, 1e-3, 1e-3; betas (0.9, 0.99), eps 1e-15, weight
    decay torch's default 0.01: docs/design.md §10.7)."""
    torch.manual_seed(cfg.seed)
    field = HashGridField(cfg.field)
    background = EnvironmentBackground(cfg.background)
    renderer = VolumeRenderer(field, background, cfg.renderer).to(device)
    groups = field.param_groups()
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        [
            {"params": groups["grid"], "lr": o.lr_grid, "name": "grid"},
            {"params": groups["mlp"], "lr": o.lr_mlp, "name": "mlp"},
            {"params": list(background.parameters()), "lr": o.lr_background, "name": "background"},
        ],
        betas=o.betas,
        eps=o.eps,
        weight_decay=o.weight_decay,
    )
    return SDSState(field, background, renderer, optimizer)


def save_checkpoint(
    run_dir: Path, state: SDSState, step: int, cfg: SDSConfig, weights: str | None = None
) -> Path:
    """``checkpoints/step-NNNNNN.pt`` (``step`` steps done), written atomically; ``weights``: the guidance
    model's ``weights_fingerprint``, checked on resume."""
    buf = io.BytesIO()
    torch.save(
        {
            "step": step,
            "renderer": state.renderer.state_dict(),  # field + background + occupancy grid
            "optimizer": state.optimizer.state_dict(),
            "backend": state.field.backend,
            "config": config_mod.to_dict(cfg),
            "weights": weights,
            # The optimisation's figures travel with the field, so a summary written by a later session (a
            # resume, or a re-run that only re-exports) still reports them (summary.json: seconds).
            "seconds": state.seconds,
            "peak_memory_mb": state.peak_memory_mb,
        },
        buf,
    )
    path = rundir.RunDir(run_dir, CKPT_SUFFIX).checkpoint_path(step)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(path: Path, state: SDSState, weights: str | None = None) -> int:
    """Restore ``state`` from a checkpoint; returns its step. Raises UserError for a field of another shape,
    a checkpoint holding pickled objects, or (given ``weights``) when the guidance model's weights are not
    those the checkpoint was optimised with. The other settings are compared once per run directory, by
    ``rundir.RunDir.open`` (docs/design.md §5)."""
    device = next(state.renderer.parameters()).device
    # A checkpoint in a shared output directory is untrusted input: only tensors and plain containers are
    # rebuilt, never pickled objects, which could run code (docs/reliability.md).
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"{path} was refused: it holds pickled objects that only code could rebuild "
            f"({str(e).splitlines()[0][:120]}); delete it to resume from an earlier checkpoint"
        ) from None
    if weights is not None and ckpt.get("weights") not in (None, weights):
        raise UserError(
            f"{path.parent.parent} was optimised with other model weights ({ckpt['weights']}, now {weights}); "
            "pass the same model to resume it, or another --out"
        )
    if ckpt.get("backend", "torch") != state.field.backend:
        raise UserError(
            f"{path} was written by the {ckpt.get('backend')} hash grid and this run uses {state.field.backend}; "
            f"set field.backend={ckpt.get('backend')} to resume it"
        )
    try:
        state.renderer.load_state_dict(ckpt["renderer"])
    except RuntimeError as e:
        raise UserError(
            f"{path} does not fit this config's field ({str(e).splitlines()[0]}); use its config"
        ) from None
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.seconds, state.peak_memory_mb = ckpt.get("seconds"), ckpt.get("peak_memory_mb")
    return int(ckpt["step"])


def render_views(
    state: SDSState, azimuths, resolution: int, cfg: SDSConfig, bg=None, fov_deg=40.0, elev=15.0
):
    """Albedo renders (V, H, W, 3) uint8 of the field from fixed orbit cameras (snapshots, turntable), at the
    official evaluation distance ``export_mesh.turntable_distance`` (3.0; docs/design.md §10.8). ``bg`` (3,):
    the background colour; None: ``background.color`` when set, else the background MLP."""
    device = next(state.field.parameters()).device
    if bg is None and cfg.background.color is not None:
        bg = torch.tensor(cfg.background.color, dtype=torch.float32, device=device)
    distance = cfg.export_mesh.turntable_distance
    frames = []
    with torch.no_grad():
        for az in azimuths:
            cams = orbit_cameras(elev, [az], fov_deg, distance).to(device)
            out = state.renderer.render(cams, resolution, ALBEDO, bg_color=bg)
            frames.append((out.rgb[0].clamp(0, 1) * 255).round().byte().cpu().numpy())
    return np.stack(frames)


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def load_guidance_model(cfg: SDSConfig, device: torch.device):
    """The frozen multi-view model (fp16 on CUDA unless guidance.half_precision=fp32, fp32 on CPU)."""
    from mvforge.models import MultiViewDiffusion

    if not cfg.model:
        raise UserError(
            "no model given; pass --model with an `mvtrain fit` run or a converted MVDream pipeline"
        )
    half = cfg.guidance.half_precision == "fp16" or (
        cfg.guidance.half_precision == "auto" and device.type == "cuda"
    )
    if half and device.type != "cuda":
        raise UserError("guidance.half_precision=fp16 needs CUDA; set it to auto or fp32")
    return MultiViewDiffusion.from_pretrained(
        cfg.model, device=device, dtype=torch.float16 if half else torch.float32
    )


def finished_with(run_dir: Path, cfg: SDSConfig) -> bool:
    """The run in ``run_dir`` is finished (summary.json, written last) with exactly these settings and, when
    ``cfg.model`` is a directory, the same weights (``weights_fingerprint``, recorded in summary.json). Any other
    run goes through :func:`run_sds`, which resumes, re-exports or refuses it."""
    run = rundir.RunDir(run_dir, CKPT_SUFFIX)
    try:
        same = run.is_done() and run.saved_config() == tomllib.loads(config_mod.to_toml(cfg))
    except UserError:  # a config.toml that is not TOML: run_sds says so
        return False
    if not same:
        return False
    summary = run.summary()
    if cfg.model and Path(cfg.model).is_dir():
        return summary.get("weights") == weights_fingerprint(cfg.model)
    return True


@dataclass
class _Session:
    """One session of a run (a first run or a resume): what its loop, checkpoints, export and summary share."""

    run: rundir.RunDir
    device: torch.device
    model: object
    """The frozen ``MultiViewDiffusion``."""
    guidance: MultiViewSDS
    text: object
    """The prompt's embeddings (``guidance.encode_text``, computed once)."""
    state: SDSState
    start: int
    """Steps done when this session began (the resumed checkpoint's; 0 for a new run)."""
    weights: str | None
    """The guidance model's ``weights_fingerprint``; None for a loaded model passed without a path."""
    t_start: float
    """``time.monotonic()`` at the session's start (model loading is part of the optimisation's seconds)."""
    seconds_before: float | None
    peak_before: float | None
    """The optimisation's seconds and peak MiB of the earlier sessions (the resumed checkpoint's)."""


@dataclass
class _StepDraws:
    """What step ``step`` renders, drawn from its own streams (exact resume, module docstring)."""

    resolution: int
    """Render side in pixels (64, then 256 from ``camera.resolution_milestone``)."""
    cams: object
    """The step's cameras (``sample_cameras``: groups x n_view views) on the device."""
    shading: object
    """The step's shading (``draw_shading``)."""
    bg: torch.Tensor | None
    """Background colour (3,) in [0, 1] on the device; None: the environment background."""
    lambda_orient: float
    """Weight of the orientation loss at this step (``loss.lambda_orient`` ramp)."""


@dataclass
class _StepResult:
    """One optimisation step's figures (the metrics row and the progress note)."""

    done: int
    """Steps done after it."""
    draws: _StepDraws
    loss: torch.Tensor
    loss_sds: torch.Tensor
    loss_orient: torch.Tensor
    t: int
    t_range: tuple[int, int]
    """The annealed timestep range ``t`` was drawn from."""
    step_s: float
    """Wall seconds of the step."""


@rundir.locked(
    "mvtrain sds",
    # The run directory is --out itself (docs/cli.md, "output"); an empty prompt is refused inside, unlocked.
    lambda cfg, **_: Path(cfg.out) if cfg.prompt.strip() else None,
)
def run_sds(cfg: SDSConfig, model=None, show_progress: bool = True) -> Path:
    """Optimise a field for ``cfg.prompt`` and export it into the run directory ``cfg.out``; resumes it when it
    has checkpoints.

    summary.json's ``seconds`` and ``peak_memory_mb`` are the optimisation's (wall seconds summed over the
    sessions that ran steps, model loading included; MiB), kept when a later run only re-exports;
    ``export_seconds`` is the latest export's (mesh and turntable). Before checkpoints recorded these figures,
    a re-export reused the previous summary's.

    ``model``: an already loaded ``MultiViewDiffusion`` (Ray tasks and tests reuse one); loaded from
    ``cfg.model`` otherwise. Returns the run directory. Raises UserError for an empty prompt, a missing or
    non-multi-view model, or a checkpoint that does not fit the config.
    """
    if not cfg.prompt.strip():
        raise UserError("the prompt is empty; pass --prompt 'a description of the object'")
    if cfg.max_steps < 1 or cfg.checkpoint_every < 1:
        raise UserError("max_steps and checkpoint_every must be >= 1")
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.out)
    if not (run_dir / result_format.CONFIG).is_file() and result_format.find_results(
        run_dir, marker=result_format.CONFIG
    ):
        # A run written into a --prompts batch's directory would hide the batch from its readers.
        raise UserError(
            f"{run_dir} is a --prompts batch directory (it holds runs of other prompts); pass a new --out for "
            "one prompt's run"
        )
    t_start = time.monotonic()
    if finished_with(run_dir, cfg):
        # Nothing to do (a marching-cubes export at 256³ takes minutes): what --prompts skips, a single run skips.
        if show_progress:
            print(f"{run_dir}: finished with these settings and weights; nothing to do", file=sys.stderr)
        return run_dir
    # Refused here, before the model loads, when the directory holds a run with other settings (those in
    # rundir.EXECUTION_KEYS may change: docs/design.md §5); config.toml is written once the run can start.
    run = rundir.RunDir.open(
        run_dir, cfg, "mvtrain sds", suffix=CKPT_SUFFIX, compared_elsewhere=COMPARED_ELSEWHERE, write=False
    )
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    # 1. The frozen model, the guidance and the prompt's embeddings (computed once).
    if model is None:
        model = load_guidance_model(cfg, device)
    guidance = MultiViewSDS(model, cfg.guidance, num_views=cfg.camera.n_view)
    text = guidance.encode_text(cfg.prompt)
    # 2. Field, background, renderer, optimiser; resume from the latest checkpoint.
    s = _start_session(cfg, run, device, model, guidance, text, t_start)
    # 3. The loop.
    _optimise(cfg, s, show_progress)
    # 4. Export: mesh (GLB + OBJ) and turntable of the final field, then the summary (written last).
    outputs, export_seconds = _export(cfg, s)
    run.mark_done(_summary(cfg, s, outputs, export_seconds))
    return run_dir


def _start_session(
    cfg: SDSConfig,
    run: rundir.RunDir,
    device: torch.device,
    model,
    guidance: MultiViewSDS,
    text,
    t_start: float,
) -> _Session:
    """Build the state and restore it from the run's newest intact checkpoint, if any; then write config.toml.
    Raises UserError when that checkpoint is past ``cfg.max_steps`` or does not fit (``load_checkpoint``)."""
    state = build_state(cfg, device)
    start = 0
    # The newest checkpoint that loads (weights_only); a damaged newer one is passed over in one line.
    latest = run.latest_intact_checkpoint(rundir.check_torch_file)
    previous = run.summary()
    # The weights the field is optimised against (a run dir's latest checkpoint, resolved): a resume under other
    # weights would mix two priors in one field. None when the caller passed a loaded model without a path.
    weights = weights_fingerprint(cfg.model) if cfg.model and Path(cfg.model).is_dir() else None
    if latest is not None:
        start = load_checkpoint(latest, state, weights)
        if state.seconds is None and previous.get("steps") == start:
            # A checkpoint older than the recorded figures: the finished run's summary holds them.
            state.seconds, state.peak_memory_mb = previous.get("seconds"), previous.get("peak_memory_mb")
        if start > cfg.max_steps:
            raise UserError(
                f"{run.path} is at step {start}; pass max_steps >= {start} (--max-steps) to resume or re-export it"
            )
    seconds_before, peak_before = state.seconds, state.peak_memory_mb
    run.write_config(cfg)
    return _Session(
        run, device, model, guidance, text, state, start, weights, t_start, seconds_before, peak_before
    )


def _optimise(cfg: SDSConfig, s: _Session, show_progress: bool) -> None:
    """Steps ``s.start`` .. ``cfg.max_steps - 1``, each followed by its metrics, snapshot and checkpoint."""
    # Rows and events past the checkpoint are the killed run's lost steps: cut; the resumed run rewrites them.
    metrics = s.run.metrics(SDS_METRICS, s.start)
    progress = None
    if show_progress:
        progress = StageProgress("mvtrain sds", cfg.max_steps - s.start, unit="steps").__enter__()
    for step in range(s.start, cfg.max_steps):
        r = _optimisation_step(cfg, s, step)
        _after_step(cfg, s, r, metrics, progress)
    metrics.close()
    if progress is not None:
        progress.__exit__(None, None, None)


def _draw_step(cfg: SDSConfig, s: _Session, step: int) -> _StepDraws:
    """Resolution, cameras, shading, background colour and orientation weight of ``step`` (0-based)."""
    cam_cfg, seed = cfg.camera, cfg.seed
    high = step >= cam_cfg.resolution_milestone
    resolution = cam_cfg.resolution_high if high else cam_cfg.resolution_low
    groups = cam_cfg.groups_high_res if high else cam_cfg.groups_low_res
    cams = sample_cameras(_np_rng(seed, step, STREAM_CAMERAS), cam_cfg, groups).to(s.device)
    shading = draw_shading(_np_rng(seed, step, STREAM_SHADING), cfg.material, step)
    bg = draw_background_color(_np_rng(seed, step, STREAM_BACKGROUND), cfg.background)
    bg = None if bg is None else torch.tensor(bg, device=s.device)
    lambda_orient = linear_ramp(*cfg.loss.lambda_orient, step, cfg.loss.orient_ramp_steps)
    return _StepDraws(resolution, cams, shading, bg, lambda_orient)


def _optimisation_step(cfg: SDSConfig, s: _Session, step: int) -> _StepResult:
    """Step ``step`` (0-based): occupancy update, render -> SDS on the renders -> orientation loss on the
    normals, one optimiser step."""
    t0 = time.monotonic()
    seed = cfg.seed
    s.state.renderer.update_occupancy(step, _torch_gen(seed, step, STREAM_OCC))
    d = _draw_step(cfg, s, step)
    out = s.state.renderer.render(
        d.cams,
        d.resolution,
        d.shading,
        bg_color=d.bg,
        generator=_torch_gen(seed, step, STREAM_RAYS),
        with_orient=d.lambda_orient > 0,
    )
    g_cfg = cfg.guidance
    t_range = timestep_range(
        step, s.model.num_train_timesteps, g_cfg.min_step_percent, g_cfg.max_step_percent, g_cfg.anneal_steps
    )
    t, noise = s.guidance.draw(out.rgb.shape[0], t_range, _torch_gen(seed, step, STREAM_T_NOISE))
    g = s.guidance(
        out.rgb, d.cams.embedding, s.text, t, noise, vae_generator=_torch_gen(seed, step, STREAM_VAE)
    )
    loss = cfg.loss.lambda_sds * g.loss
    loss_orient = torch.zeros((), device=s.device)
    if out.orient is not None:
        # threestudio's orientation loss: normals facing the camera where there is density, per visible ray
        loss_orient = out.orient.sum() / (out.opacity > 0).sum().clamp_min(1)
        loss = loss + d.lambda_orient * loss_orient
    s.state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    s.state.optimizer.step()
    return _StepResult(step + 1, d, loss, g.loss, loss_orient, t, t_range, time.monotonic() - t0)


def _after_step(cfg: SDSConfig, s: _Session, r: _StepResult, metrics, progress) -> None:
    """The metrics row (every ``log_every`` steps and the last), the progress bar, the snapshot (every
    ``snapshot_every``) and the checkpoint (every ``checkpoint_every``, just before the 64² -> 256² switch, and
    the last), with the optimisation's seconds and peak MiB so far."""
    done, milestone = r.done, cfg.camera.resolution_milestone
    if done % cfg.log_every == 0 or done == cfg.max_steps:
        metrics.log(_metrics_row(s, r))
    if progress is not None:
        progress.advance(note=f"loss {float(r.loss.detach()):.4g}")
    if cfg.snapshot_every > 0 and done % cfg.snapshot_every == 0:
        views = render_views(s.state, SNAPSHOT_AZIMUTHS, r.draws.resolution, cfg)
        strip = np.concatenate(list(views), axis=1)
        _save_png(result_format.snapshot_path(s.run.path, done), strip)
        metrics.image("snapshot", strip, done)
    if done % cfg.checkpoint_every == 0 or done == milestone or done == cfg.max_steps:
        s.state.seconds = round((s.seconds_before or 0.0) + time.monotonic() - s.t_start, 2)
        s.state.peak_memory_mb = round(max(s.peak_before or 0.0, _peak_memory_mb(s.device)), 1)
        save_checkpoint(s.run.path, s.state, done, cfg, s.weights)
        s.run.prune_checkpoints(cfg.keep_checkpoints, protect={milestone})


def _metrics_row(s: _Session, r: _StepResult) -> dict:
    """The ``SDS_METRICS`` row of one step."""
    return {
        "step": r.done,
        "loss": float(r.loss.detach()),
        "loss_sds": float(r.loss_sds.detach()),
        "loss_orient": float(r.loss_orient.detach()),
        "lambda_orient": r.draws.lambda_orient,
        "t": r.t,
        "t_min": r.t_range[0],
        "t_max": r.t_range[1],
        "lr": s.state.optimizer.param_groups[0]["lr"],
        "resolution": r.draws.resolution,
        "shading": r.draws.shading.mode,
        "step_s": round(r.step_s, 4),
    }


def _export(cfg: SDSConfig, s: _Session) -> tuple[dict, float | None]:
    """Mesh (GLB + OBJ, + MTL and texture when baked) and turntable of the final field when ``cfg.export``;
    returns (summary.json's ``outputs``, export seconds or None)."""
    outputs = {}
    t_export = time.monotonic()
    if cfg.export:
        from mvforge.sds.export import bake_texture, extract_mesh, write_mesh, write_turntable

        e, field, run_dir = cfg.export_mesh, s.state.field, s.run.path
        mesh = extract_mesh(field.density, field.albedo, field.radius, e, s.device)
        if e.uv_texture:
            mesh = bake_texture(mesh, field.albedo, e.texture_resolution, s.device)
        # Only now that the new mesh exists (a no-surface error leaves the last export whole): a re-export with
        # other settings must not leave the last export's files beside the new ones. The summary goes first
        # (written last, it marks a finished run), then the files this export will not write.
        s.run.clear_done()
        stale = [] if e.mp4 else [run_dir / result_format.TURNTABLE_MP4]
        if not e.uv_texture:
            stale += [run_dir / result_format.MESH_MTL, *run_dir.glob(result_format.TEXTURE_GLOB)]
        for path in stale:
            path.unlink(missing_ok=True)
        glb, obj = write_mesh(mesh, run_dir)
        written = write_turntable(_turntable_frames(cfg, s), run_dir, e.turntable_fps, mp4=e.mp4)
        outputs = {p.name: p.name for p in [glb, obj, *written]}
        outputs["mesh_faces"] = len(mesh.faces)
    return outputs, round(time.monotonic() - t_export, 2) if cfg.export else None


def _turntable_frames(cfg: SDSConfig, s: _Session) -> np.ndarray:
    """The turntable's albedo frames (F, H, W, 3) uint8 on white, one orbit at ``export_mesh``'s elevation."""
    e = cfg.export_mesh
    return render_views(
        s.state,
        [360.0 * i / e.turntable_frames for i in range(e.turntable_frames)],
        e.turntable_resolution,
        cfg,
        bg=torch.ones(3, device=s.device),
        fov_deg=e.turntable_fov_deg,
        elev=e.turntable_elevation_deg,
    )


def _summary(cfg: SDSConfig, s: _Session, outputs: dict, export_seconds: float | None) -> dict:
    """summary.json (its fields: the module docstring and ``run_sds``)."""
    return {
        "prompt": cfg.prompt,
        "steps": cfg.max_steps,
        "resumed_from_step": s.start,
        "seconds": s.state.seconds,
        "peak_memory_mb": s.state.peak_memory_mb,
        "export_seconds": export_seconds,
        "backend": s.state.field.backend,
        "device": str(s.device),
        "model": cfg.model,
        "weights": s.weights,
        "guidance_dtype": str(s.model.dtype),
        "outputs": outputs,
    }
