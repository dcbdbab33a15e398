"""The training loop of `mvtrain fit` (docs/design.md §2.5, §9: one loop you can read top to bottom).

Model code knows nothing about Ray: ``fit`` takes a ``Runtime`` saying which rank it is, on which device, how to
wrap the model for data parallelism (DDP under Ray Train) and how to report. ``--workers 0`` runs it in-process.
The pieces a step is made of (``load_models``, ``micro_batch_inputs``, ``micro_batch_loss``, ``optimizer_step``)
are plain functions so MVDreamBooth (train/dreambooth.py) reuses them; the loss is train/losses.py, checkpoint
I/O train/checkpoint.py, validation grids train/validation.py. No Trainer class.

One optimizer step = ``grad_accum_steps`` micro-batches of the same kind: the loader's 3D/2D branch is a
function of the optimizer step, identical on every rank, so DDP sees the same graph everywhere. On 2D steps
(no camera) the loss gets ``0 x`` the camera MLP's output, which keeps the graph static (every parameter gets a
gradient, zero for the camera MLP) instead of DDP's ``find_unused_parameters``; it is added on every rank and
in-process alike, so one and N workers run the same optimizer math. Gradients are all-reduced once per
optimizer step (``no_sync`` on the other micro-batches).

Exact resume: every random draw of micro-batch ``j`` of step ``s`` (caption dropout, timesteps, noise, the
VAE's latent sample) comes from a generator seeded with (seed, s, j, rank), the loader restores its own
position, and a checkpoint holds the weights, EMA, optimizer, LR-schedule and gradient-scaler states. So a run
killed after a checkpoint and resumed gives the same losses and final weights as an uninterrupted one.

Failure policy: a step whose gradients are NaN/inf is skipped (the fp16 scaler skips it and lowers its scale;
without a scaler the optimizer step is not taken) and counted; ``max_nonfinite_steps`` in a row stop the run.
SIGTERM (preemptible nodes) makes every rank finish its step, write a checkpoint and exit with 143. A shard
that fails its index.json entry under ``loader.on_checksum_mismatch = "stop"`` (``ShardDamaged``) stops the
run; in-process, the last finished step is checkpointed first (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mvforge import config as config_mod
from mvforge import rundir
from mvforge.devices import cpu_foreach, resolve_device
from mvforge.errors import ShardDamaged, UserError
from mvforge.formats import runs
from mvforge.models.model import CAMERA_DIM, encode_text
from mvforge.models.pipeline import MultiViewDiffusion, check_sd_dir
from mvforge.models.resolve import checkpoints, is_hub_id, latest_checkpoint  # noqa: F401  (re-exported)
from mvforge.shards.loader import MultiViewLoader
from mvforge.train import metrics_csv
from mvforge.train.checkpoint import check_checkpoint, load_training_state, loader_state, save_checkpoint
from mvforge.train.config import FitConfig
from mvforge.train.losses import diffusion_loss, sample_noise, training_target

METRICS_FIELDS = (
    "step",
    "epoch",
    "kind",
    "loss",
    "lr",
    "grad_norm",
    "step_s",
    "images_per_s",
    "loader_wait_share",
    "effective_batch",
    "nonfinite_skipped",
)
"""Columns of metrics.csv (the same values go to TensorBoard, see ``TB_TAGS``)."""

TB_TAGS = {
    "lr": "lr",
    "grad_norm": "grad_norm",
    "images_per_s": "images_per_s",
    "loader_wait_share": "loader_wait_share",
}
"""metrics.csv column -> TensorBoard tag; the loss goes to ``loss`` and ``loss/3d`` or ``loss/2d``."""

FAULT_ENV = "MVFORGE_FAULT"
"""Deterministic fault injection for tests: ``kill:<rank>:<step>`` (the process of that rank exits hard after
that optimizer step) or ``sigterm:<rank>:<step>`` (it sends itself SIGTERM). Each fault fires once per run
directory (a marker file records it), so a restarted run goes on."""


class NonFiniteLoss(UserError):
    """``max_nonfinite_steps`` optimizer steps in a row had NaN/inf gradients."""


class Preempted(SystemExit):
    """SIGTERM arrived: the checkpoint is written and the process exits with 143 (128 + SIGTERM)."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(143)
        self.step, self.checkpoint = step, checkpoint


@dataclass
class Runtime:
    """Where and how this copy of the loop runs; the in-process default is rank 0 of 1."""

    rank: int = 0
    """This copy's global rank (seeds its per-step randomness and picks its loader split)."""
    world_size: int = 1
    """Number of copies training together."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Device of the models and batches."""
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m
    """DDP wrapping (Ray Train's prepare_model); identity in-process."""
    report: Callable[[dict, Path | None], None] = lambda metrics, checkpoint: None
    """Called after each logged step with metrics and, at checkpoints, the checkpoint directory."""
    show_progress: bool = True
    """Progress bar and summary table on rank 0 (off under Ray Train: workers' stdout is interleaved)."""
    stop_requested: Callable[[], bool] = lambda: False
    """Whether the driver asked to stop (SIGTERM to `mvtrain fit --workers N`, ray_fit.py): checkpoint and end
    like an in-process SIGTERM (the loop's own handler only works in a main thread)."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and torch.distributed.is_initialized()

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks (the logged loss is the global batch's)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.item() / self.world_size

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank (all ranks must stop together)."""
        if not self.distributed:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())


@dataclass
class StepModels:
    """What a training step needs: the trained UNet (fp32 master weights), its DDP wrapper, the frozen parts
    in the compute dtype, the training noise schedule, and the autocast dtype (None: fp32)."""

    unet: torch.nn.Module
    model: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    noise_sched: object
    device: torch.device
    autocast_dtype: torch.dtype | None = None

    @property
    def frozen_dtype(self) -> torch.dtype:
        return self.autocast_dtype or torch.float32


# ---------------------------------------------------------------- pieces of a step
def step_generator(seed: int, step: int, rank: int, micro: int = 0) -> torch.Generator:
    """All randomness of micro-batch ``micro`` of step ``step`` on one rank: a function of these only. The mix
    is taken modulo 2**63 (torch's seed range); below that, as for every seed of a few million or less, it is
    the mix itself."""
    return torch.Generator().manual_seed((((seed * 1_000_003 + step) * 4099 + rank) * 1031 + micro) % 2**63)


def load_models(cfg: FitConfig, rt: Runtime, resume: Path | None) -> StepModels:
    """Frozen VAE and text encoder (in the compute dtype) and the trained UNet (fp32): from the checkpoint
    ``resume``, else SD's UNet with the new camera MLP. Raises UserError for fp16 off CUDA."""
    dev = rt.device
    if cfg.mixed_precision == "fp16" and dev.type != "cuda":
        raise UserError("mixed_precision fp16 needs a CUDA device; use mixed_precision=bf16 or no")
    if dev.type == "cuda":  # TF32 matmuls on Ampere+ (ignored before Ampere)
        torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
        torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    autocast = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.mixed_precision]
    # The UNet from the checkpoint when resuming (SD's UNet is then never loaded), else SD's + camera MLP.
    base = MultiViewDiffusion.from_pretrained(cfg.pretrained, dev, stable_diffusion=True, unet_from=resume)
    noise_sched = base.scheduler
    if noise_sched.config.prediction_type not in ("epsilon", "v_prediction"):
        raise UserError(
            f"scheduler prediction_type {noise_sched.config.prediction_type!r}: train supports epsilon or "
            "v_prediction"
        )
    if autocast is not None:  # frozen parts in the compute dtype; the trained UNet stays fp32
        base.vae.to(autocast)
        base.text_encoder.to(autocast)
    unet = base.unet.train().requires_grad_(True)
    unet.set_ablation(multiview_attention=cfg.multiview_attention, camera_embedding=cfg.camera_embedding)
    if cfg.gradient_checkpointing:  # num_views travels with each call, so recomputation sees it
        unet.enable_gradient_checkpointing()
    return StepModels(
        unet, rt.wrap_model(unet), base.vae, base.text_encoder, base.tokenizer, noise_sched, dev, autocast
    )


@torch.no_grad()
def micro_batch_inputs(m: StepModels, batch: dict, g: torch.Generator, cfg: FitConfig) -> dict:
    """Conditioning, clean latents, timesteps and noise of one loader batch, all drawn from ``g``.

    Returns ``latents`` (B*V, 4, h, w) float32, ``text`` (B*V, 77, D), ``cameras`` (B*V, 16) or None (2D),
    ``num_views`` V, ``t`` (B*V,) int64 (one per object, shared by its views: they are denoised together,
    paper §3.1) and ``noise`` like ``latents``. Tests build this dict by hand to inject t and noise."""
    images = batch["images"]  # (B, V, 3, H, W) in [-1, 1]; V = 1 for 2D
    b, v = images.shape[:2]
    # Captions, with dropout to the empty prompt per object (for CFG at sampling).
    drop = torch.rand(b, generator=g) < cfg.caption_dropout
    captions = ["" if d else c for c, d in zip(batch["captions"], drop.tolist(), strict=True)]
    text = encode_text(m.tokenizer, m.text_encoder, captions, m.device).float().repeat_interleave(v, dim=0)
    # Latents of the frozen VAE, scaled to unit variance (SD's scaling_factor); posterior sample from g.
    flat = images.reshape(b * v, *images.shape[2:]).to(m.device, m.frozen_dtype)
    dist = m.vae.encode(flat).latent_dist
    eps = torch.randn(dist.mean.shape, generator=g).to(m.device)
    latents = (dist.mean.float() + dist.std.float() * eps) * m.vae.config.scaling_factor
    num_train_t = m.noise_sched.config.num_train_timesteps
    t = torch.randint(0, num_train_t, (b,), generator=g).repeat_interleave(v).to(m.device)
    noise = sample_noise(tuple(latents.shape), g, cfg.noise_offset).to(m.device)
    cameras = batch["cameras"]
    cams = None if cameras is None else cameras.reshape(b * v, -1).to(m.device)
    return {"latents": latents, "text": text, "cameras": cams, "num_views": v, "t": t, "noise": noise}


def micro_batch_loss(m: StepModels, inputs: dict, cfg: FitConfig) -> torch.Tensor:
    """Scalar float32 loss of one micro-batch (``micro_batch_inputs``' dict): noise the latents, predict
    under autocast, ``diffusion_loss`` (ε/v target, Min-SNR-γ). A 2D batch adds 0 x the camera MLP's
    output so every parameter is in the graph (static DDP graph, see the module docstring)."""
    latents, noise, t = inputs["latents"], inputs["noise"], inputs["t"]
    noisy = m.noise_sched.add_noise(latents, noise, t)
    target = training_target(m.noise_sched, latents, noise, t)
    cams = inputs["cameras"]
    with torch.autocast(m.device.type, dtype=m.autocast_dtype, enabled=m.autocast_dtype is not None):
        pred = m.model(noisy, t, inputs["text"], cameras=cams, num_views=inputs["num_views"])
        unused = 0.0
        if cams is None:
            unused = 0.0 * m.unet.class_embedding(latents.new_zeros(1, CAMERA_DIM)).float().sum()
    alphas = m.noise_sched.alphas_cumprod
    loss = diffusion_loss(pred, target, t, alphas, cfg.snr_gamma, m.noise_sched.config.prediction_type)
    return loss + unused


def make_optimizer(unet: torch.nn.Module, cfg: FitConfig, device: torch.device):
    """AdamW (fused on CUDA, foreach on CPU; bitsandbytes' 8-bit AdamW when asked) with the camera MLP in its
    own parameter group at ``lr x camera_lr_mult``, and the LR schedule of
    ``diffusers.optimization.get_scheduler``."""
    from diffusers.optimization import get_scheduler

    o = cfg.optim
    camera = [p for n, p in unet.named_parameters() if n.startswith("class_embedding.")]
    base = [p for n, p in unet.named_parameters() if not n.startswith("class_embedding.")]
    groups = [{"params": base, "lr": o.lr}, {"params": camera, "lr": o.lr * o.camera_lr_mult}]
    kwargs = dict(betas=o.betas, weight_decay=o.weight_decay, eps=o.eps)
    if o.use_8bit_adam:
        if device.type != "cuda":
            raise UserError("optim.use_8bit_adam needs a CUDA device; set optim.use_8bit_adam=false")
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("optim.use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from None
        optimizer = bnb.optim.AdamW8bit(groups, **kwargs)
    else:
        fast = {"fused": True} if device.type == "cuda" else {"foreach": cpu_foreach(device)}
        optimizer = torch.optim.AdamW(groups, **fast, **kwargs)
    lr_sched = get_scheduler(
        o.lr_scheduler, optimizer, num_warmup_steps=o.warmup_steps, num_training_steps=cfg.max_steps
    )
    return optimizer, lr_sched


def optimizer_step(m: StepModels, optimizer, lr_sched, scaler, cfg: FitConfig) -> tuple[float, bool]:
    """Unscale (fp16), clip, step, schedule, zero the gradients; returns (global grad norm before clipping,
    whether the step was taken). A non-finite gradient norm skips the update (the scaler skips it itself)."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    max_norm = cfg.optim.grad_clip_norm if cfg.optim.grad_clip_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(
        m.unet.parameters(), max_norm, foreach=cpu_foreach(m.device)
    ).item()
    finite = bool(torch.isfinite(torch.tensor(grad_norm)))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    elif finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    lr_sched.step()
    return grad_norm, finite


def _batches(loader: MultiViewLoader) -> Iterator[dict]:
    """The loader's batches across epochs (an optimizer step's micro-batches may span an epoch's end)."""
    while True:
        yield from loader


class _StepLoader(MultiViewLoader):
    """The loader with the 3D/2D branch chosen per optimizer step: all ``accum`` micro-batches of a step (and
    all ranks) take the branch of ``step_is_3d(seed, optimizer step)``."""

    accum = 1

    def kind_of_step(self, step: int) -> str:
        return super().kind_of_step(step // self.accum)


# ---------------------------------------------------------------- metrics
def _append_metrics(path: Path, row: dict) -> None:
    metrics_csv.append_row(path, row, METRICS_FIELDS)


def _truncate_metrics(path: Path, step: int) -> None:
    metrics_csv.truncate_after(path, step, METRICS_FIELDS)


def _tb_writer(out: Path, step: int):
    """TensorBoard writer on ``out/tensorboard``; on resume events past ``step`` are purged (rewritten)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / runs.TENSORBOARD), purge_step=step + 1 if step else None)


def _log_tb(writer, rec: dict) -> None:
    s = rec["step"]
    writer.add_scalar("loss", rec["loss"], s)
    writer.add_scalar(f"loss/{rec['kind']}", rec["loss"], s)
    for col, tag in TB_TAGS.items():
        writer.add_scalar(tag, rec[col], s)
    if "gpu_mem_gb" in rec:
        writer.add_scalar("gpu_mem_gb", rec["gpu_mem_gb"], s)
    writer.flush()


def _fault(rank: int, step: int, out: Path) -> None:
    """``FAULT_ENV`` (tests): fire the configured fault once per run directory."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    kind, f_rank, f_step = spec.split(":")
    marker = out / f".fault-{kind}-{f_step}"
    if int(f_rank) != rank or int(f_step) != step or marker.exists():
        return
    marker.write_text("fired\n")
    if kind == "kill":
        os._exit(1)  # a hard worker death, as a lost node: no cleanup, no checkpoint
    os.kill(os.getpid(), signal.SIGTERM)


# ---------------------------------------------------------------- the loop
@dataclass
class _Training:
    """What the step loop reads and evolves on one rank: models, EMA, optimizer state, data, logging."""

    m: StepModels
    ema: object | None
    """diffusers' ``EMAModel`` of the UNet, None when ``ema_decay`` is 0."""
    optimizer: torch.optim.Optimizer
    lr_sched: object
    scaler: torch.amp.GradScaler | None
    """The fp16 gradient scaler; None for bf16 and fp32."""
    loader: _StepLoader
    batches: Iterator[dict]
    """The loader's batches across epochs (``_batches``)."""
    writer: object | None
    """TensorBoard writer on rank 0 when ``cfg.tensorboard``; else None."""
    out: Path
    metrics_path: Path
    step: int
    """Optimizer steps done."""
    effective_batch: int
    """Objects per optimizer step over all ranks (batch size x grad_accum_steps x world size)."""
    nonfinite_run: int = 0
    """Non-finite steps in a row (``max_nonfinite_steps`` of them stop the run)."""
    skipped: int = 0
    """Non-finite steps skipped by this call."""
    checkpointed: int = 0
    """The step of the newest checkpoint this call wrote or resumed from (0: none)."""


# In-process only: under Ray Train the driver (ray_fit.py) holds the lock for its workers.
@rundir.locked("mvtrain fit", lambda cfg, rt: cfg.out if rt is None and cfg.out else None)
def fit(cfg: FitConfig, rt: Runtime | None = None) -> list[dict]:
    """Train until ``cfg.max_steps``, resuming from the run's latest checkpoint; returns this call's per-step
    records (step, kind, loss, ...). Raises UserError for bad inputs, NonFiniteLoss after
    ``max_nonfinite_steps`` non-finite steps in a row, Preempted (exit 143) after a SIGTERM checkpoint."""
    rt = rt or Runtime(device=resolve_device(cfg.device))
    cfg = checked_inputs(cfg)
    # The run directory: refused here when it holds a run with other content settings (rundir.EXECUTION_KEYS
    # may change: docs/design.md §5); rank 0 writes config.toml.
    run = rundir.RunDir.open(cfg.out, cfg, "mvtrain fit", write=rt.rank == 0)
    # 1-3. Models, optimizer and data, restored from the last checkpoint.
    tr = _start(cfg, rt, run)

    # SIGTERM: finish the step, checkpoint, exit. Only the main thread may install a handler (Ray Train runs
    # the loop in a thread: there Ray's own shutdown applies and restarts resume from the last checkpoint).
    stop = {"sigterm": False}
    old_handler = None
    with contextlib.suppress(ValueError):
        old_handler = signal.signal(signal.SIGTERM, lambda *_: stop.update(sigterm=True))

    # 4. Train.
    records: list[dict] = []
    start_step, t_start = tr.step, time.monotonic()
    progress = _open_progress(cfg, rt, tr)
    try:
        _redo_unfinished_validation(cfg, rt, tr)
        while tr.step < cfg.max_steps:
            # The data position at the step's start: a damaged shard met inside the step stops the run, and the
            # checkpoint written first must resume at the step's first batch (in-process runs only: under DDP
            # every rank would have to stop at the same step; those resume from the last periodic checkpoint).
            step, at_start = tr.step, tr.loader.state_dict() if rt.world_size == 1 else None
            try:
                rec = _train_step(cfg, rt, tr)
                records.append(rec)
                _after_step(cfg, rt, tr, rec, stop, progress)
            except ShardDamaged:
                # Met inside the step (tr.step not advanced: resume at its first batch) or in its validation
                # (the step is done: resume after it).
                if at_start is not None and tr.step > tr.checkpointed:
                    _save(cfg, rt, tr, at_start if tr.step == step else tr.loader.state_dict())
                raise
    finally:
        if progress is not None:
            progress.__exit__(None, None, None)
        if tr.writer is not None:
            tr.writer.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    if rt.rank == 0 and rt.show_progress:
        _summary(records, start_step, tr.step, t_start, tr.out, tr.effective_batch, tr.skipped)
    return records


def checked_inputs(cfg: FitConfig) -> FitConfig:
    """``cfg`` with ``pretrained`` made absolute (a local directory); UserError for a missing model or shards,
    a model directory that is no Stable Diffusion pipeline, or a validation loss without a val split."""
    from mvforge.train.validation import check_val_split

    if not cfg.pretrained:
        raise UserError("no pretrained model; pass --model DIR (a diffusers Stable Diffusion directory)")
    if not cfg.shards:
        raise UserError("no training shards; pass --shards DIR (written by `mvdata shard`)")
    # Checked before anything is created. Checkpoints record where the frozen parts come from: an absolute path
    # (so `mvtrain sample` works from any cwd) or the Hub id, which resolves through the cache again.
    check_sd_dir(cfg.pretrained)
    check_val_split(cfg)
    if not is_hub_id(cfg.pretrained):
        cfg = config_mod.replace(cfg, pretrained=str(Path(cfg.pretrained).resolve()))
    return cfg


def _start(cfg: FitConfig, rt: Runtime, run: rundir.RunDir) -> _Training:
    """Models, EMA, optimizer and loader, restored from the run's newest intact checkpoint when it has one;
    on rank 0 metrics.csv cut back to that checkpoint's step and the TensorBoard writer opened."""
    # 1. Models: frozen VAE + text encoder; the UNet from the last checkpoint, else from SD + camera MLP; EMA.
    resume = run.latest_intact_checkpoint(check_checkpoint, None if rt.rank == 0 else lambda line: None)
    m = load_models(cfg, rt, resume)
    ema = _make_ema(cfg, m, resume)

    # 2. Optimizer, LR schedule, fp16 gradient scaler (states restored on resume).
    optimizer, lr_sched = make_optimizer(m.unet, cfg, m.device)
    scaler = torch.amp.GradScaler("cuda") if cfg.mixed_precision == "fp16" else None
    step = load_training_state(resume, m.device, optimizer, lr_sched, scaler) if resume else 0

    # 3. Data: the streaming loader, at its saved position on resume (another worker count: checkpoint.py).
    loader = _StepLoader(
        cfg.shards, cfg.loader, shards_2d=cfg.shards_2d, rank=rt.rank, world_size=rt.world_size
    )
    loader.accum = cfg.grad_accum_steps
    if resume is not None:
        loader.load_state_dict(loader_state(resume, rt.rank, rt.world_size))
    writer = None
    if rt.rank == 0:
        _truncate_metrics(run.metrics_csv, step)
        if cfg.tensorboard:
            writer = _tb_writer(run.path, step)
    effective_batch = cfg.loader.batch_size * cfg.grad_accum_steps * rt.world_size
    return _Training(
        m, ema, optimizer, lr_sched, scaler, loader, _batches(loader), writer, run.path, run.metrics_csv, step,
        effective_batch, checkpointed=step,
    )  # fmt: skip


def _make_ema(cfg: FitConfig, m: StepModels, resume: Path | None):
    """The UNet's EMA on the models' device: the checkpoint's when resuming one that has it, else a new one
    (``ema_decay``, ``ema_warmup``); None when ``ema_decay`` is 0."""
    if cfg.ema_decay <= 0:
        return None
    from diffusers.training_utils import EMAModel

    from mvforge.models.model import MultiViewUNet

    if resume is not None and (resume / runs.UNET_EMA).is_dir():
        with warnings.catch_warnings():  # diffusers' own from_config(path) call inside warns
            warnings.simplefilter("ignore", FutureWarning)
            ema = EMAModel.from_pretrained(resume / runs.UNET_EMA, MultiViewUNet)
    else:
        ema = EMAModel(
            m.unet.parameters(),
            decay=cfg.ema_decay,
            use_ema_warmup=cfg.ema_warmup,
            model_cls=MultiViewUNet,
            model_config=m.unet.config,
        )
    ema.to(m.device)
    return ema


def _open_progress(cfg: FitConfig, rt: Runtime, tr: _Training):
    """The progress bar over the steps left (rank 0 with ``show_progress``; else None), after one line naming
    the effective batch."""
    if not (rt.show_progress and rt.rank == 0):
        return None
    from mvforge.progress import StageProgress, console

    console.print(f"mvtrain fit: effective batch {tr.effective_batch} objects per optimizer step")
    return StageProgress("mvtrain fit", max(0, cfg.max_steps - tr.step), unit="steps").__enter__()


def _train_step(cfg: FitConfig, rt: Runtime, tr: _Training) -> dict:
    """One optimizer step (``tr.step`` advances by one); returns its record (``METRICS_FIELDS``, the loss the
    mean over ranks, + ``gpu_mem_gb`` on CUDA). Raises NonFiniteLoss (``_apply_gradients``)."""
    t0 = time.monotonic()
    # 4a. k micro-batches of the same kind; gradients all-reduced on the last one only.
    batch, losses, n_images, wait = _accumulate(cfg, rt, tr)
    # 4b. Clip, step (or skip a non-finite one), schedule, EMA.
    lr = tr.lr_sched.get_last_lr()[0]
    grad_norm = _apply_gradients(cfg, tr)
    tr.step += 1
    step_s = time.monotonic() - t0
    rec = {
        "step": tr.step,
        "epoch": batch["epoch"],
        "kind": batch["kind"],
        "loss": rt.mean(sum(losses) / len(losses)),
        "lr": lr,
        "grad_norm": grad_norm,
        "step_s": step_s,
        "images_per_s": n_images * rt.world_size / max(step_s, 1e-9),
        "loader_wait_share": wait / max(step_s, 1e-9),
        "effective_batch": tr.effective_batch,
        "nonfinite_skipped": tr.skipped,
    }
    if tr.m.device.type == "cuda":
        rec["gpu_mem_gb"] = torch.cuda.max_memory_allocated(tr.m.device) / 2**30
    return rec


def _accumulate(cfg: FitConfig, rt: Runtime, tr: _Training) -> tuple[dict, list[float], int, float]:
    """Forward and backward of the step's ``grad_accum_steps`` micro-batches (``no_sync`` on all but the last);
    returns (the last batch, each micro-batch's loss, images seen, seconds spent waiting for the loader)."""
    k, m, scaler = cfg.grad_accum_steps, tr.m, tr.scaler
    wait, n_images, losses = 0.0, 0, []
    for j in range(k):
        tw = time.monotonic()
        batch = next(tr.batches)
        wait += time.monotonic() - tw
        inputs = micro_batch_inputs(m, batch, step_generator(cfg.seed, tr.step, rt.rank, j), cfg)
        sync = j == k - 1 or not hasattr(m.model, "no_sync")
        with contextlib.nullcontext() if sync else m.model.no_sync():
            loss = micro_batch_loss(m, inputs, cfg)
            scaled = loss / k
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        losses.append(loss.item())
        n_images += batch["images"].shape[0] * batch["images"].shape[1]
    return batch, losses, n_images, wait


def _apply_gradients(cfg: FitConfig, tr: _Training) -> float:
    """``optimizer_step`` and the EMA update when the gradients are finite, else count the skipped step;
    returns the grad norm. Raises NonFiniteLoss at ``max_nonfinite_steps`` non-finite steps in a row."""
    grad_norm, finite = optimizer_step(tr.m, tr.optimizer, tr.lr_sched, tr.scaler, cfg)
    if finite:
        tr.nonfinite_run = 0
        if tr.ema is not None:
            tr.ema.step(tr.m.unet.parameters())
    else:
        tr.nonfinite_run, tr.skipped = tr.nonfinite_run + 1, tr.skipped + 1
        if tr.nonfinite_run >= cfg.max_nonfinite_steps:
            raise NonFiniteLoss(
                f"{tr.nonfinite_run} steps in a row had NaN/inf loss or gradients (last at step {tr.step + 1}); "
                "lower optim.lr, or use mixed_precision=bf16 instead of fp16"
            )
    return grad_norm


def _after_step(cfg: FitConfig, rt: Runtime, tr: _Training, rec: dict, stop: dict, progress) -> None:
    """4c. Metrics and TensorBoard (rank 0, every ``log_every`` steps and the last), validation, checkpoint
    (every ``checkpoint_every``, the last, and on SIGTERM or a driver's stop: all ranks alike), report,
    progress. ``stop["sigterm"]``: set by the SIGTERM handler. Raises Preempted after a stop's checkpoint."""
    step = tr.step
    log_now = step % cfg.log_every == 0 or step == cfg.max_steps
    if rt.rank == 0 and log_now:
        _append_metrics(tr.metrics_path, rec)
        if tr.writer is not None:
            _log_tb(tr.writer, rec)
    v = cfg.validation
    if v.every and (step % v.every == 0 or step == cfg.max_steps):
        if rt.rank == 0:
            from mvforge.train.validation import validate

            validate(tr.m, tr.ema, cfg, step, tr.out, tr.writer)
        rt.barrier()  # the other ranks wait for rank 0's grids
    _fault(rt.rank, step, tr.out)  # tests only (FAULT_ENV)
    # Read after the fault hook: its SIGTERM must stop this very step, as a real one arriving here would.
    preempted = rt.any(stop["sigterm"] or rt.stop_requested())
    ckpt = None
    if step % cfg.checkpoint_every == 0 or step == cfg.max_steps or preempted:
        ckpt = _save(cfg, rt, tr, tr.loader.state_dict())
    if log_now or ckpt is not None:
        rt.report(rec, ckpt)
    if progress is not None:
        progress.advance()
    if preempted:
        raise Preempted(step, ckpt)


def _redo_unfinished_validation(cfg: FitConfig, rt: Runtime, tr: _Training) -> None:
    """The validation of the resumed step when the run that wrote its checkpoint stopped inside it (a damaged
    val shard: its checkpoint is written, its ``validation.json`` is not). So the resumed run has every
    validation, and a val shard still damaged stops it before any step, not at the next validation."""
    from mvforge.formats import samples as sample_format

    v, step = cfg.validation, tr.step
    if not (v.every and step and step % v.every == 0):
        return
    if (sample_format.validation_step_dir(tr.out, step) / sample_format.VALIDATION_INDEX).exists():
        return
    if rt.rank == 0:
        from mvforge.train.validation import validate

        validate(tr.m, tr.ema, cfg, step, tr.out, tr.writer)
    rt.barrier()


def _save(cfg: FitConfig, rt: Runtime, tr: _Training, loader_state: dict) -> Path:
    """Checkpoint ``tr.step`` (all ranks call it) with the data position ``loader_state``."""
    state = {
        "unet": tr.m.unet,
        "ema": tr.ema,
        "optimizer": tr.optimizer,
        "lr_sched": tr.lr_sched,
        "scaler": tr.scaler,
    }
    ckpt = save_checkpoint(tr.out, tr.step, rt, state, loader_state, cfg)
    tr.checkpointed = tr.step
    return ckpt


def _summary(records, start_step, step, t_start, out, effective_batch, skipped) -> None:
    """The summary table of this call's steps (rank 0, ``show_progress``)."""
    from mvforge.progress import print_summary

    done = step - start_step
    losses = [r["loss"] for r in records]
    print_summary(
        "mvtrain fit",
        [
            ("steps this run", done),
            ("resumed from step", start_step),
            (
                "3d / 2d steps",
                f"{sum(r['kind'] == '3d' for r in records)} / {sum(r['kind'] == '2d' for r in records)}",
            ),
            ("effective batch (objects)", effective_batch),
            ("non-finite steps skipped", skipped),
            ("last loss", f"{losses[-1]:.4f}" if losses else "-"),
            ("mean loss", f"{sum(losses) / len(losses):.4f}" if losses else "-"),
            ("s / step", f"{(time.monotonic() - t_start) / max(done, 1):.3f}"),
            ("checkpoint", latest_checkpoint(out) or "-"),
        ],
    )
