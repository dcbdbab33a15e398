"""The multi-view diffusion model every stage uses (``MultiViewDiffusion``) and its diffusers pipeline
(``MVDreamPipeline``: text -> V views), design §1 and §10.

- ``MultiViewDiffusion``: the loaded parts (multi-view UNet, VAE, text encoder, tokenizer, training noise
  schedule) with what sampling, SDS, MVDreamBooth and evaluation need: encode prompts, encode images to latents
  (with or without gradient), decode latents, predict ε or x0 for groups of V views with classifier-free
  guidance. The order of the conditional/unconditional halves of a guided batch is ``CFG_ORDER``, defined here
  only.
- ``MVDreamPipeline``: a ``DiffusionPipeline`` subclass with the standard layout (``model_index.json``,
  ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, safetensors), plus a two-line module
  ``PIPELINE_MODULE.py`` that re-exports this class, named by ``model_index.json``'s ``_class_name``
  ([module, class]): diffusers' own mechanism for pipelines it does not ship, so
  ``DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)`` loads the directory with nothing imported
  first (docs/ecosystem.md). The UNet's class is recorded by import path (``mvforge.models.model.MultiViewUNet``):
  keep that path stable. ``unet/`` itself is a standard ``UNet2DConditionModel`` (vanilla diffusers loads it);
  the multi-view behaviour comes from the processors mvforge installs. mvforge's own loaders
  (``MultiViewDiffusion.from_pretrained``, ``MVDreamPipeline.from_pretrained``) read the components one by one
  and never run a ``.py`` found in a model directory.
- Two different "rescale" operations, named apart: ``guidance_rescale`` is diffusers' per-image std rescale of
  the guided ε (Lin et al. 2023, §3.4); ``rescale_x0_multiview`` is MVDream's rescale of the guided x0 to the
  std of the conditional x0 over each group of V views, mixed with a factor (design §10; SDS uses it).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from mvforge import rundir
from mvforge.errors import UserError
from mvforge.formats import runs
from mvforge.fsutil import atomic_write_json, atomic_write_text, remove_dead_tmp, tmp_path
from mvforge.models.camera_batch import camera_embedding, orbit_c2w_batch, orthogonal_views
from mvforge.models.model import (
    CAMERA_DIM,
    MultiViewUNet,
    encode_text,
    install_multiview_attention,
    multiview_from_sd,
)
from mvforge.models.resolve import frozen_source, is_pipeline_dir, local_model_dir, resolve_model

PIPELINE_MODULE = "mvforge_pipeline"
SAVED_FROM = "mvforge_saved_from.json"
"""In a pipeline directory ``save_pretrained`` wrote with a ``source``: what it was written from."""
"""The module a pipeline directory carries (``mvforge_pipeline.py``) and names in ``model_index.json``
(``"_class_name": ["mvforge_pipeline", "MVDreamPipeline"]``): diffusers imports it for
``DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)``. It only re-exports this module's class, so
the code that runs is the installed mvforge's, never a copy."""

_PIPELINE_MODULE_SOURCE = '''"""mvforge's MVDream pipeline (text -> multi-view images), re-exported for diffusers.

Load this directory with ``DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)`` (needs
``pip install "mvforge[train]"``); the pipeline's code is the installed mvforge's.
"""

from mvforge.models.pipeline import MVDreamPipeline

__all__ = ["MVDreamPipeline"]
'''

CFG_ORDER = ("cond", "uncond")
"""Order of the two halves of a classifier-free-guidance batch: ``[cond (N), uncond (N)]`` along dim 0
(MVDream-threestudio's guidance order). Only ``MultiViewDiffusion.predict_noise`` builds and splits such a
batch."""

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "pndm": PNDMScheduler,
}
"""The sampling schedulers offered and tested, all diffusers'. DDIM is the authors' (design §10.10)."""


def make_scheduler(name: str, config) -> object:
    """A sampling scheduler ``name`` (a key of ``SCHEDULERS``) on the noise schedule of ``config`` (any diffusers
    scheduler config of the model: betas, train timesteps, steps offset).

    The scheduler keeps the model's ``prediction_type`` (diffusers' convention: what the UNet outputs), so a
    pipeline saved with it loads as the model it is; ``MVDreamPipeline`` steps an ε copy of it
    (:func:`epsilon_stepper`), because ``predict_noise`` hands it ε whatever the UNet predicts. (Forcing epsilon
    here once made a v-prediction model's pipeline, and everything loaded from the saved directory, take its v
    for ε.) DDIM is set up as the official LDM sampler (design §10): no sample clipping,
    the last step's "previous" alpha is alphas_cumprod[0] (``set_alpha_to_one=False``), timesteps uniform with
    offset 1 (LDM's ``ddim_discretize="uniform"``). DPM-Solver++ is the 2nd-order multistep ``dpmsolver++``;
    PNDM skips its Runge-Kutta warm-up as SD's own scheduler config does.
    """
    if name not in SCHEDULERS:
        raise UserError(f"scheduler {name!r} is not offered; use one of {', '.join(SCHEDULERS)}")
    cfg = _public(config)
    extra = {
        "ddim": dict(clip_sample=False, set_alpha_to_one=False, timestep_spacing="leading"),
        "dpm++": dict(algorithm_type="dpmsolver++", solver_order=2),
        "pndm": dict(skip_prk_steps=True, set_alpha_to_one=False),
    }.get(name, {})
    cfg.update(extra)
    return SCHEDULERS[name].from_config(cfg)


def epsilon_stepper(scheduler):
    """A copy of the sampling ``scheduler`` that takes ε (``prediction_type="epsilon"``): what the pipeline's
    denoising loop steps with, since ``MultiViewDiffusion.predict_noise`` returns ε for an ε or a v model."""
    if scheduler.config.prediction_type == "epsilon":
        return scheduler
    return type(scheduler).from_config({**_public(scheduler.config), "prediction_type": "epsilon"})


def _public(config) -> dict:
    """A scheduler config without its private keys: "_use_default_values" would make ``from_config`` drop
    overrides of keys the source left at their defaults."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def make_stepper(name: str, config) -> object:
    """``make_scheduler`` for a loop that steps ``predict_noise``'s ε by hand (known-answer sampling, SDS's
    DDIM x0, validation): :func:`epsilon_stepper` of it."""
    return epsilon_stepper(make_scheduler(name, config))


def scheduler_name(scheduler) -> str:
    """The ``SCHEDULERS`` key of a scheduler instance (raises ValueError for another class)."""
    for name, cls in SCHEDULERS.items():
        if type(scheduler) is cls:
            return name
    raise ValueError(f"{type(scheduler).__name__} is not one of the offered schedulers {list(SCHEDULERS)}")


def orbit_cameras(
    num_views: int = 4, elevation_deg: float = 15.0, azimuth_start_deg: float = 90.0
) -> np.ndarray:
    """(V, 16) float32 MVDream camera embeddings: V azimuths 360/V apart from ``azimuth_start_deg`` at one
    elevation (the official inference: 4 views, elevation 15, start 90; design §10)."""
    az = orthogonal_views(azimuth_start_deg, num_views)
    return camera_embedding(orbit_c2w_batch(elevation_deg, az))


# ---------------------------------------------------------------- the model every stage uses
class MultiViewDiffusion:
    """The multi-view diffusion model: loaded parts plus encode / predict (with CFG) / decode.

    Attributes: ``unet`` (MultiViewUNet), ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` (the training
    noise schedule, a DDPMScheduler), ``num_train_timesteps``, ``vae_scale_factor`` (8 for SD),
    ``resolution`` (native image side: UNet sample size x VAE factor), ``alphas_cumprod`` ((T,) float32 on the
    model's device), ``ema`` (whether ``from_pretrained`` loaded a checkpoint's EMA weights: True or False; None
    when the UNet came from a pipeline or Stable Diffusion directory, which holds one UNet). Latents of V views of an object are contiguous along dim 0 ((B*V, 4, h, w)).
    """

    def __init__(self, unet: MultiViewUNet, vae, text_encoder, tokenizer, scheduler) -> None:
        if not isinstance(unet, MultiViewUNet):
            raise TypeError(f"unet must be a MultiViewUNet, got {type(unet).__name__}")
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.scheduler = DDPMScheduler.from_config(scheduler.config)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.resolution = int(unet.config.sample_size) * self.vae_scale_factor
        self._alphas = None
        self.ema: bool | None = None

    # -- loading, moving, saving
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        use_ema: bool = True,
        stable_diffusion: bool = False,
        unet_from: str | Path | None = None,
    ) -> MultiViewDiffusion:
        """The one loader of a model, for every stage (sample, sds, eval, fit, dreambooth).

        ``path``: a pipeline directory, an ``mvtrain fit`` checkpoint (``unet_ema/`` when ``use_ema`` and
        present; the frozen parts from the SD its ``config.toml`` names) or run (its latest checkpoint), via
        ``resolve_model``. With ``stable_diffusion`` it is instead the Stable Diffusion directory or Hub id a fit
        starts from (``check_sd_dir``): frozen parts and UNet from it, a UNet without the camera embedding
        given the camera MLP (``multiview_from_sd``: equal to SD at init), a multi-view one loaded as is.
        ``unet_from``: a checkpoint directory whose ``unet/`` (the trained weights, not the EMA: the trainer
        resumes the average itself) replaces ``path``'s UNet, which is then not loaded (a resume of fit or
        MVDreamBooth). Every module ends on ``device`` in ``dtype``, in eval mode without gradients: a trainer
        switches its UNet back on.

        Raises UserError for a missing directory or, without ``stable_diffusion``, a UNet without the camera
        embedding (a plain SD model: train it first)."""
        if stable_diffusion:
            vae, text_encoder, tokenizer, sched = _load_frozen(path)  # checks the directory first
            parts = _load_unet(unet_from or path), vae, text_encoder, tokenizer, sched
        else:
            path = resolve_model(path)
            if is_pipeline_dir(path):
                rundir.check_model_dir(path)
                found = _load_pipeline_parts(path, sampling_scheduler=False, unet_from=unet_from)
                parts = tuple(found[k] for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"))
            else:
                sub = runs.UNET_EMA if use_ema and (path / runs.UNET_EMA).is_dir() else runs.UNET
                rundir.check_model_dir(path / sub)
                _require_multiview(path / sub)
                vae, text_encoder, tokenizer, sched = _load_frozen(frozen_source(path))
                unet = _load_unet(unet_from, runs.UNET) if unet_from else _load_unet(path, sub)
                parts = unet, vae, text_encoder, tokenizer, sched
                ema = sub == runs.UNET_EMA and not unet_from
        model = cls(*parts)
        if not stable_diffusion and not is_pipeline_dir(path):
            model.ema = ema  # recorded by sample.json: a checkpoint of a run without an EMA has only unet/
        return model.to(device, dtype)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        for m in (self.unet, self.vae, self.text_encoder):
            m.to(device)
            if dtype is not None and m.dtype != dtype:  # (an equal dtype would only make diffusers warn)
                m.to(dtype)
            m.eval().requires_grad_(False)
        self._alphas = None
        return self

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        if self._alphas is None or self._alphas.device != self.device:
            self._alphas = self.scheduler.alphas_cumprod.to(self.device, torch.float32)
        return self._alphas

    def pipeline(self, scheduler: str = "ddim") -> MVDreamPipeline:
        """The diffusers pipeline over these same modules (nothing reloaded) with sampling ``scheduler``."""
        return MVDreamPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=make_scheduler(scheduler, self.scheduler.config),
        )

    def save_pretrained(self, out: str | Path, source: dict | None = None) -> Path:
        """Write a pipeline directory (safetensors; the official DDIM as its scheduler; ``PIPELINE_MODULE``)
        to ``out``, which must not exist or be empty. Filled as ``out.tmp-<pid>`` and renamed into place:
        complete or absent. ``source`` (e.g. the weights fingerprint of the model it came from) is written
        with it as ``SAVED_FROM``, so that a rerun can tell its own finished pipeline from another."""
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} is not empty; pass a new directory for the pipeline")
        remove_dead_tmp(out)  # a killed save's copy (hundreds of MB at SD size)
        tmp = tmp_path(out)
        shutil.rmtree(tmp, ignore_errors=True)
        self.pipeline("ddim").save_pretrained(tmp)
        if source is not None:
            atomic_write_json(tmp / SAVED_FROM, source)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        return out

    # -- encode / predict / decode
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Text conditioning (N, 77, D) in the model's dtype for N prompts (padded with the tokenizer's pad
        id, 0 for SD 2.x as for OpenCLIP: ``model.tokenize`` says why it matters)."""
        if isinstance(prompts, str):
            raise TypeError("encode_prompt takes a list of prompts")
        return encode_text(self.tokenizer, self.text_encoder, list(prompts), self.device).to(self.dtype)

    def encode_images(self, images: torch.Tensor, *, grad: bool = False, generator=None) -> torch.Tensor:
        """Latents (N, 4, H/f, W/f) of images (N, 3, H, W) float in [-1, 1], sampled from the VAE posterior
        and multiplied by the VAE's scaling factor. ``grad=True`` keeps the graph through the encoder (SDS
        backpropagates into the rendered images); ``generator`` seeds the posterior sample."""
        with torch.set_grad_enabled(grad):
            dist = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist
            return dist.sample(generator) * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] (clamped) of latents (N, 4, h, w) scaled as ``encode_images``."""
        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return images.clamp(-1, 1)

    def predict_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor | int,
        cond: torch.Tensor,
        uncond: torch.Tensor | None = None,
        cameras: torch.Tensor | None = None,
        num_views: int = 4,
        guidance_scale: float = 1.0,
        guidance_rescale: float = 0.0,
        *,
        return_cond: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Guided ε (B*V, 4, h, w) for noisy latents (B*V, 4, h, w), views of an object contiguous.

        ``t``: int timesteps (B*V,) or a scalar; ``cond``/``uncond``: (B*V, 77, D) text conditioning (uncond
        None: no guidance, ``guidance_scale`` must be 1); ``cameras``: (B*V, 16) embeddings or None (2D mode,
        every image on its own: pass ``num_views=1``). CFG: ``uncond + s * (cond - uncond)``, one UNet call
        on the batch ``CFG_ORDER`` describes, the cameras on both halves (design §10). ``guidance_rescale``:
        diffusers' per-image std rescale of the guided ε (0 = off; not MVDream's x0 rescale). A
        v-prediction model's output is converted to ε. Gradients flow to ``latents`` if it requires them.
        The output has ``latents``' dtype.

        ``return_cond=True`` returns ``(guided ε, conditional ε)``, both (B*V, 4, h, w), the conditional half
        from the same UNet call: MVDream's SDS rescales the guided x0 to the std of the conditional x0
        (§3.3, design §10; ``rescale_x0_multiview``). It needs ``uncond``.

        Raises ValueError for a batch that is not a multiple of ``num_views``, for ``guidance_scale != 1`` or
        ``return_cond`` without ``uncond``.
        """
        n = latents.shape[0]
        if n % num_views:
            raise ValueError(f"batch {n} is not a multiple of num_views {num_views}")
        guided = uncond is not None
        if not guided and guidance_scale != 1.0:
            raise ValueError("guidance_scale != 1 needs the unconditional embeddings (uncond)")
        if not guided and return_cond:
            raise ValueError("return_cond needs the unconditional embeddings (uncond)")
        t = torch.as_tensor(t, device=self.device)
        t = t.expand(n) if t.ndim == 0 else t
        x, text, cams, tt = latents, cond, cameras, t
        if guided:
            halves = {"cond": cond, "uncond": uncond}
            x = torch.cat([latents, latents])
            text = torch.cat([halves[k] for k in CFG_ORDER])
            cams = None if cameras is None else torch.cat([cameras, cameras])
            tt = torch.cat([t, t])
        dtype = self.unet.dtype
        out = self.unet(
            x.to(dtype), tt, text.to(dtype), None if cams is None else cams.to(dtype), num_views
        ).to(latents.dtype)
        if self.scheduler.config.prediction_type == "v_prediction":
            out = self._v_to_eps(x, tt, out)
        if not guided:
            return out
        parts = dict(zip(CFG_ORDER, out.chunk(2), strict=True))
        eps = parts["uncond"] + guidance_scale * (parts["cond"] - parts["uncond"])
        if guidance_rescale > 0:
            eps = rescale_noise_cfg(eps, parts["cond"], guidance_rescale)
        return (eps, parts["cond"]) if return_cond else eps

    def _coeffs(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alphas_cumprod[torch.as_tensor(t, device=self.device).long()].to(like.dtype)
        a = a.reshape(-1, *([1] * (like.ndim - 1)))
        return a.sqrt(), (1 - a).sqrt()

    def _v_to_eps(self, x: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        sa, s1 = self._coeffs(t, x)
        return sa * v + s1 * x

    def predict_x0(self, latents: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """x0 = (x_t - sqrt(1 - a_t) ε) / sqrt(a_t) for (N, 4, h, w) latents, ``t`` (N,) or a scalar."""
        t = torch.as_tensor(t, device=self.device)
        t = t.expand(latents.shape[0]) if t.ndim == 0 else t
        sa, s1 = self._coeffs(t, latents)
        return (latents - s1 * eps) / sa

    @staticmethod
    def rescale_x0_multiview(
        x0_guided: torch.Tensor, x0_cond: torch.Tensor, num_views: int, factor: float
    ) -> torch.Tensor:
        """MVDream's x0 std rescale (design §10, CFG rescale 0.5 in its SDS): per group of V views, the guided
        x0 (B*V, C, h, w) scaled to the std of the conditional x0 over the whole group, then mixed
        ``factor * rescaled + (1 - factor) * x0_guided``. Not diffusers' ``guidance_rescale`` (per image, on ε).
        """
        n = x0_guided.shape[0]
        if n % num_views:
            raise ValueError(f"batch {n} is not a multiple of num_views {num_views}")
        g = x0_guided.reshape(n // num_views, -1)
        c = x0_cond.reshape(n // num_views, -1)
        # 1e-8 keeps a constant group finite (the official code's epsilon).
        ratio = (c.std(dim=1) + 1e-8) / (g.std(dim=1) + 1e-8)
        rescaled = x0_guided * ratio.repeat_interleave(num_views).reshape(-1, *([1] * (x0_guided.ndim - 1)))
        return factor * rescaled + (1 - factor) * x0_guided


# ---------------------------------------------------------------- loading (behind from_pretrained)
def check_sd_dir(path: str | Path) -> Path:
    """The local directory of the diffusers SD model ``path`` (a directory or a Hub id, through
    ``local_model_dir``), checked to hold vae/, text_encoder/, tokenizer/ and scheduler/. Raises UserError.
    `mvtrain fit` calls it before it creates anything; loading checks again."""
    path = local_model_dir(path)
    if not path.is_dir():
        raise UserError(
            f"{path} does not exist; pass a diffusers Stable Diffusion directory or Hub id "
            "(or make a tiny one: mvtrain make-tiny-sd --out DIR)"
        )
    for sub in ("vae", "text_encoder", "tokenizer", "scheduler"):
        if not (path / sub).is_dir():
            raise UserError(
                f"{path} has no {sub}/; pass a diffusers Stable Diffusion directory "
                "(or make a tiny one: mvtrain make-tiny-sd --out DIR)"
            )
    for sub in ("vae", "text_encoder", "tokenizer", "scheduler"):
        rundir.check_model_dir(path / sub)
    return path


def _load_frozen(path: str | Path):
    """(vae, text_encoder, tokenizer, noise scheduler) of a diffusers SD directory, frozen."""
    from transformers import CLIPTextModel, CLIPTokenizer

    path = check_sd_dir(path)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae").eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder").eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    return vae, text_encoder, tokenizer, scheduler


def _is_multiview_config(config: dict) -> bool:
    return (
        config.get("class_embed_type") == "projection"
        and config.get("projection_class_embeddings_input_dim") == CAMERA_DIM
    )


def _load_unet(path: str | Path, subfolder: str = "unet") -> MultiViewUNet:
    """A MultiViewUNet from a diffusers directory: an SD UNet (camera MLP added, last layer zero) or a
    multi-view checkpoint of ours (loaded as is). The same path for SD 2.1 base and the tiny test model."""
    path = local_model_dir(path)
    config_file = path / subfolder / "config.json"
    if not config_file.is_file():
        raise UserError(
            f"{path / subfolder} holds no diffusers UNet (config.json); pass a Stable Diffusion directory "
            "(unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a run checkpoint"
        )
    # A truncated or damaged copy: one line naming the file, not diffusers' traceback.
    rundir.check_model_dir(path / subfolder)
    config = json.loads(config_file.read_text())
    if _is_multiview_config(config):
        unet = MultiViewUNet.from_pretrained(path, subfolder=subfolder)
        install_multiview_attention(unet)
        return unet
    if config.get("class_embed_type") is None:
        return multiview_from_sd(UNet2DConditionModel.from_pretrained(path, subfolder=subfolder))
    raise UserError(
        f"{path / subfolder} has class_embed_type={config.get('class_embed_type')!r}; "
        "pass a plain Stable Diffusion UNet or an mvtrain checkpoint"
    )


def _require_multiview(unet_dir: Path) -> None:
    config_file = unet_dir / "config.json"
    if not config_file.is_file():
        raise UserError(f"{unet_dir} holds no UNet (config.json); re-save the model")
    config = json.loads(config_file.read_text())
    if "camera_dim" in config and "model_channels" in config:  # the community port's LDM-layout UNet
        raise UserError(
            f"{unet_dir.parent} is the community diffusers port's layout; convert it once: "
            f"mvtrain convert {unet_dir.parent} --out NEW_DIR"
        )
    if not _is_multiview_config(config):
        raise UserError(
            f"{unet_dir} has no camera embedding (a plain Stable Diffusion UNet?); train it with "
            "`mvtrain fit --model DIR`, then pass the run"
        )


def _load_pipeline_parts(
    path: Path, *, sampling_scheduler: bool, unet_from: str | Path | None = None
) -> dict:
    """The components of a pipeline directory, each through its own class's ``from_pretrained`` (no module
    of the directory is imported). ``sampling_scheduler``: the saved scheduler as saved (one of
    ``SCHEDULERS``), else the training schedule as a DDPMScheduler; ``unet_from``: a checkpoint whose ``unet/``
    is loaded instead of the directory's. Raises UserError for a UNet without the camera embedding or a
    scheduler mvforge does not offer."""
    _require_multiview(path / "unet")
    vae, text_encoder, tokenizer, ddpm = _load_frozen(path)
    scheduler = ddpm
    if sampling_scheduler:
        saved = json.loads((path / "scheduler" / "scheduler_config.json").read_text()).get("_class_name")
        classes = {cls.__name__: cls for cls in SCHEDULERS.values()}
        if saved not in classes:
            raise UserError(
                f"{path / 'scheduler'} holds a {saved}; mvforge samples with {', '.join(classes)}: re-save the "
                "pipeline with one of them"
            )
        scheduler = classes[saved].from_pretrained(path, subfolder="scheduler")
    unet = _load_unet(unet_from or path, "unet")
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def write_pipeline_entry(directory: str | Path) -> None:
    """Make a saved pipeline directory loadable by ``DiffusionPipeline.from_pretrained(dir,
    trust_remote_code=True)``: write ``PIPELINE_MODULE.py`` and point ``model_index.json``'s ``_class_name`` at
    it ([module, class], diffusers' convention for pipelines it does not ship). Idempotent."""
    directory = Path(directory)
    index_file = directory / "model_index.json"
    index = json.loads(index_file.read_text())
    index["_class_name"] = [PIPELINE_MODULE, MVDreamPipeline.__name__]
    atomic_write_text(directory / f"{PIPELINE_MODULE}.py", _PIPELINE_MODULE_SOURCE)
    atomic_write_json(index_file, index)


# ---------------------------------------------------------------- the diffusers pipeline
@dataclass
class MVDreamPipelineOutput(BaseOutput):
    """``images``: B*V images (views of an object contiguous): PIL list, (N, H, W, 3) float numpy in [0, 1],
    (N, 3, H, W) tensor in [0, 1] or latents (N, 4, h, w), per ``output_type``."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


class MVDreamPipeline(DiffusionPipeline):
    """Text -> V views of an object (MVDream §3, the official inference of design §10).

    ``DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)`` (diffusers' loader, all its options:
    ``torch_dtype``, ``variant``, ...) or ``MVDreamPipeline.from_pretrained(dir)`` (mvforge's: runs no code of
    the directory); ``save_pretrained(dir)`` keeps the directory loadable by both. The scheduler is one of
    ``SCHEDULERS`` (swap with ``make_scheduler(name, pipe.scheduler.config)``).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | Path, torch_dtype=None, dtype=None, **kwargs
    ):
        """The pipeline of a directory written by ``save_pretrained`` (or ``mvtrain convert``), loaded by
        mvforge: each component through its class's ``from_pretrained``, the directory's ``.py`` never
        imported. ``dtype`` (or diffusers' older ``torch_dtype``): cast after loading (default float32). Other
        diffusers loading options raise TypeError: use ``DiffusionPipeline.from_pretrained(dir,
        trust_remote_code=True, ...)`` for them.
        Raises UserError for a missing directory, a UNet without cameras or an unknown scheduler."""
        if kwargs:
            raise TypeError(
                f"MVDreamPipeline.from_pretrained takes dtype only (got {', '.join(sorted(kwargs))}); "
                "use DiffusionPipeline.from_pretrained(dir, trust_remote_code=True, ...) for diffusers' options"
            )
        path = resolve_model(pretrained_model_name_or_path)
        if not is_pipeline_dir(path):
            raise UserError(
                f"{path} is a training checkpoint, not a pipeline; load it with MultiViewDiffusion"
            )
        pipe = cls(**_load_pipeline_parts(path, sampling_scheduler=True))
        if (dtype or torch_dtype) is not None:
            pipe.to(dtype=dtype or torch_dtype)
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """diffusers' ``save_pretrained``, then ``write_pipeline_entry`` (``_class_name`` as [module, class]
        and the module beside it: diffusers itself writes the bare class name, which it cannot load back).
        ``push_to_hub`` raises ValueError: save, then upload the directory (``hf upload``)."""
        if kwargs.get("push_to_hub"):
            raise ValueError("push_to_hub would upload before the module is written; save, then `hf upload`")
        super().save_pretrained(save_directory, **kwargs)
        write_pipeline_entry(save_directory)

    def __init__(self, vae, text_encoder, tokenizer, unet: MultiViewUNet, scheduler) -> None:
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def check_inputs(self, n_prompts, negative, num_views, steps, height, width, n_images, latents) -> None:
        if num_views < 1 or steps < 1 or n_images < 1:
            raise ValueError(
                f"num_views {num_views}, num_inference_steps {steps} and num_images_per_prompt {n_images} "
                "must be >= 1"
            )
        if isinstance(negative, list) and len(negative) != n_prompts:
            raise ValueError(
                f"{len(negative)} negative prompts for {n_prompts} prompts; pass one or one each"
            )
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(
                f"height {height} and width {width} must be multiples of {self.vae_scale_factor}"
            )
        shape = (n_prompts * n_images * num_views, self.unet.config.in_channels)
        if latents is not None and tuple(latents.shape[:2]) != shape:
            raise ValueError(f"latents of shape {tuple(latents.shape)}; expected {shape} + (h, w)")

    def prepare_latents(
        self, n: int, height: int, width: int, generator, latents, scheduler=None
    ) -> torch.Tensor:
        """Initial latents (n, C, h, w) float32, scaled by ``scheduler``'s (default: the pipeline's) initial
        noise sigma."""
        shape = (
            n,
            self.unet.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if latents is None:
            latents = randn_tensor(
                shape, generator=generator, device=self._execution_device, dtype=torch.float32
            )
        sigma = (scheduler or self.scheduler).init_noise_sigma
        return latents.to(self._execution_device, torch.float32) * sigma

    def encode_prompt(
        self, prompts: list[str] | None, negative, prompt_embeds, negative_prompt_embeds, guided: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond (B, 77, D), uncond (B, 77, D) or None) from prompts or given embeddings; ``negative``: one
        string for all prompts or one per prompt. Embeddings passed in are used as they are."""
        device = self._execution_device
        if prompt_embeds is None:
            prompt_embeds = encode_text(self.tokenizer, self.text_encoder, prompts, device)
        if not guided:
            return prompt_embeds, None
        if negative_prompt_embeds is None:
            texts = [negative] * prompt_embeds.shape[0] if isinstance(negative, str) else list(negative)
            negative_prompt_embeds = encode_text(self.tokenizer, self.text_encoder, texts, device)
        if negative_prompt_embeds.shape != prompt_embeds.shape:
            raise ValueError(
                f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} and prompt_embeds "
                f"{tuple(prompt_embeds.shape)} differ in shape"
            )
        return prompt_embeds, negative_prompt_embeds

    def camera_batch(self, num_views, elevation_deg, azimuth_start_deg, c2ws) -> torch.Tensor:
        """(V, 16) float32 camera embeddings: the orbit of ``orbit_cameras``, or ``c2ws`` (V, 4, 4) camera-to-
        world matrices in mvforge's convention (OpenGL axes, Z up; design §3) when given."""
        if c2ws is None:
            return torch.from_numpy(orbit_cameras(num_views, elevation_deg, azimuth_start_deg))
        c2ws = torch.as_tensor(np.asarray(c2ws) if not torch.is_tensor(c2ws) else c2ws, dtype=torch.float32)
        if c2ws.ndim != 3 or tuple(c2ws.shape[1:]) != (4, 4):
            raise ValueError(
                f"c2ws of shape {tuple(c2ws.shape)}; expected (V, 4, 4) camera-to-world matrices"
            )
        return camera_embedding(c2ws.cpu())

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] = "",
        num_inference_steps: int = 50,
        guidance_scale: float = 10.0,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        eta: float = 0.0,
        guidance_rescale: float = 0.0,
        num_views: int | None = None,
        elevation_deg: float | None = None,
        azimuth_start_deg: float = 90.0,
        c2ws: np.ndarray | torch.Tensor | None = None,
        resolution: int | None = None,
        *,
        num_frames: int | None = None,
        elevation: float | None = None,
    ) -> MVDreamPipelineOutput | tuple:
        """V views of each of ``num_images_per_prompt`` objects per prompt (diffusers' call conventions).

        Defaults: the official inference (design §10): 4 views at elevation 15 deg from azimuth 90, CFG 10,
        DDIM eta 0, empty negative prompt, 50 steps of the pipeline's scheduler, the model's native side. The
        ", 3d asset" suffix of the official script is NOT added: append it to ``prompt`` (``mvtrain sample``
        does). The community port (ashawkey/mvdream_diffusers) differs: elevation 0, CFG 7, azimuth start 0,
        numpy output (docs/ecosystem.md).

        - ``prompt`` (B strings) or ``prompt_embeds`` (B, 77, D); ``negative_prompt`` one string or B, or
          ``negative_prompt_embeds`` (B, 77, D). CFG runs when ``guidance_scale != 1``.
        - ``height``/``width`` (px, multiples of the VAE factor; default the native side); ``resolution``
          sets both (mvforge's older name).
        - Cameras: ``num_views`` (alias ``num_frames``), ``elevation_deg`` (alias ``elevation``),
          ``azimuth_start_deg``: an orbit of V views 360/V apart; or ``c2ws`` (V, 4, 4) c2w matrices in
          mvforge's convention (design §3), which fix V.
        - ``latents``: initial noise (B*N*V, 4, h, w) instead of drawing it with ``generator``.
        - ``output_type``: "pil" (list), "np" (alias "numpy"; (B*N*V, H, W, 3) float in [0, 1]), "pt"
          ((B*N*V, 3, H, W) in [0, 1]) or "latent" ((B*N*V, 4, h, w)).
        - ``callback_on_step_end(pipe, i, t, kwargs) -> dict`` after each step with the tensors named in
          ``callback_on_step_end_tensor_inputs`` (default ``["latents"]``; the embeddings as used, (B*N*V,
          77, D)); a returned ``latents`` replaces the current one.

        Returns ``MVDreamPipelineOutput`` (images object-major: the V views of an object contiguous) or, with
        ``return_dict=False``, the tuple ``(images,)``. Raises ValueError for inconsistent arguments.
        """
        # 1. Resolve the aliases and defaults, then check the inputs.
        num_views = _alias("num_views", num_views, "num_frames", num_frames, None)
        elevation_deg = _alias("elevation_deg", elevation_deg, "elevation", elevation, 15.0)
        if c2ws is not None:
            if num_views is not None and num_views != len(c2ws):
                raise ValueError(f"num_views {num_views} but {len(c2ws)} c2ws; pass one of them")
            num_views = len(c2ws)
        num_views = 4 if num_views is None else num_views
        native = int(self.unet.config.sample_size) * self.vae_scale_factor
        if resolution is not None and (height or width) and (height, width) != (resolution, resolution):
            raise ValueError("pass height/width or resolution, not both")
        height = height or resolution or native
        width = width or resolution or native
        output_type = {"numpy": "np"}.get(output_type, output_type)
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type {output_type!r}; use pil, np, pt or latent")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt and prompt_embeds")
        prompts = None
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError("prompt must be a string or a non-empty list of strings")
        b = len(prompts) if prompts is not None else prompt_embeds.shape[0]
        self.check_inputs(
            b, negative_prompt, num_views, num_inference_steps, height, width, num_images_per_prompt, latents
        )
        tensor_inputs = list(callback_on_step_end_tensor_inputs or ["latents"])
        if unknown := set(tensor_inputs) - set(self._callback_tensor_inputs):
            raise ValueError(
                f"callback tensors {sorted(unknown)} unknown; use {self._callback_tensor_inputs}"
            )
        model = MultiViewDiffusion(self.unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler)
        device = self._execution_device
        per_object = num_images_per_prompt * num_views  # images per prompt
        n = b * per_object

        # 2. Encode the prompts: each object's text repeated over its V views.
        guided = guidance_scale != 1.0
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompts, negative_prompt, prompt_embeds, negative_prompt_embeds, guided
        )
        dtype = self.unet.dtype
        cond = prompt_embeds.to(device, dtype).repeat_interleave(per_object, dim=0)
        uncond = None
        if guided:
            uncond = negative_prompt_embeds.to(device, dtype).repeat_interleave(per_object, dim=0)

        # 3. Cameras: V views, the same for every object.
        cams = self.camera_batch(num_views, elevation_deg, azimuth_start_deg, c2ws)
        cams = cams.to(device).repeat(b * num_images_per_prompt, 1)

        # 4. Timesteps, on the scheduler that steps ε (the model's own is told them too, for callers that read
        # pipe.scheduler.timesteps).
        stepper = epsilon_stepper(self.scheduler)
        stepper.set_timesteps(num_inference_steps, device=device)
        if stepper is not self.scheduler:
            self.scheduler.set_timesteps(num_inference_steps, device=device)

        # 5. Initial noise.
        latents = self.prepare_latents(n, height, width, generator, latents, stepper)

        # 6. Denoise: guided ε for all views of all objects in one UNet call per step.
        step_kwargs = {}
        if isinstance(stepper, DDIMScheduler):
            step_kwargs["eta"] = eta
        if isinstance(stepper, EulerAncestralDiscreteScheduler | DDIMScheduler):
            step_kwargs["generator"] = generator
        for i, t in enumerate(self.progress_bar(stepper.timesteps)):
            x = stepper.scale_model_input(latents, t)
            eps = model.predict_noise(x, t, cond, uncond, cams, num_views, guidance_scale, guidance_rescale)
            latents = stepper.step(eps, t, latents, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                local = {"latents": latents, "prompt_embeds": cond, "negative_prompt_embeds": uncond}
                out = callback_on_step_end(self, i, t, {k: local[k] for k in tensor_inputs})
                latents = (out or {}).get("latents", latents)

        # 7. Decode.
        if output_type == "latent":
            images = latents
        else:
            images = model.decode_latents(latents).float()
            images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return MVDreamPipelineOutput(images=images)


def _alias(name: str, value, alias: str, alias_value, default):
    """``value`` or its community-port alias (the two may not disagree), else ``default``."""
    if alias_value is not None and value is not None and alias_value != value:
        raise ValueError(f"{name}={value} and its alias {alias}={alias_value} disagree; pass one")
    if value is not None:
        return value
    return alias_value if alias_value is not None else default
