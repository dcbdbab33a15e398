"""The frozen multi-view diffusion model as a 3D prior: multi-view SDS with x0 reconstruction (MVDream §3.3).

MVDream §3.3 and the official ``multiview_diffusion_guidance.py`` (docs/design.md §10.6), through
``mvforge.models``:

1. the renders (N, H, W, 3) in [0, 1] are resized to the model's resolution (256² for MVDream) with bilinear
   interpolation at every phase, mapped to [-1, 1] and encoded by the VAE *with* gradients: z (N, 4, h, w);
2. one timestep t for the whole batch (the official draws ``randint(min_t, max_t + 1)`` once) and Gaussian
   noise: z_t = sqrt(a_t) z + sqrt(1 - a_t) eps;
3. one UNet call on the conditional and the unconditional (negative prompt) halves, the camera embeddings on
   both; CFG eps = eps_u + s (eps_c - eps_u) with s = 50, by ``MultiViewDiffusion.predict_noise`` (the one CFG,
   design §1), which also returns eps_c for step 4;
4. x0 = (z_t - sqrt(1 - a_t) eps) / sqrt(a_t); with ``recon_std_rescale`` f > 0, x0 is rescaled per group of V
   views to the std of the conditional x0 and mixed f * rescaled + (1 - f) * x0 (``rescale_x0_multiview``);
5. loss = 0.5 * ||z - sg(x0)||² summed / N, so d loss / d z = (z - x0) / N.

With ``x0_ddim_steps`` N > 0 (mvforge, not official) steps 3-4 become a DDIM run: t is snapped down to the
N-step grid of the model's DDIM scheduler (``mvforge.models.pipeline.make_stepper``), and x0 is where diffusers' DDIM
steps, CFG at each, take z_t at t = 0 (no std rescale). A prior too weak for its one-step x0 at large t to be
more than a blur (the demo world, docs/demo.md) still gives a sharp target this way.

The text embeddings are computed once per run (:meth:`MultiViewSDS.encode_text`). The prompt gets
``prompt_suffix`` (empty by default: the official SDS adds no ", 3d asset").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mvforge.errors import UserError
from mvforge.sds.config import GuidanceConfig


@dataclass
class TextEmbeddings:
    """Conditional and unconditional text embeddings of one prompt, each (1, 77, D) in the model's dtype."""

    cond: torch.Tensor
    uncond: torch.Tensor

    def expand(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cond.expand(n, -1, -1), self.uncond.expand(n, -1, -1)


@dataclass
class GuidanceOutput:
    """One SDS evaluation: the loss (scalar float32 with a graph to the renders) and what it was made of."""

    loss: torch.Tensor
    latents: torch.Tensor
    """(N, 4, h, w) z of the renders (its ``.grad`` is kept after backward, for tests and diagnostics)."""
    x0: torch.Tensor
    """(N, 4, h, w) the detached target sg(x0) after CFG and rescale."""
    t: int
    """The timestep used for every view."""


class MultiViewSDS:
    """Multi-view score distillation against ``model`` (a ``mvforge.models.MultiViewDiffusion``), frozen."""

    def __init__(self, model, cfg: GuidanceConfig, num_views: int = 4):
        self.model, self.cfg, self.num_views = model, cfg, num_views
        self.image_size = cfg.image_size or int(model.resolution)
        if self.image_size % model.vae_scale_factor:
            raise UserError(
                f"guidance.image_size {self.image_size} is not a multiple of the VAE factor "
                f"{model.vae_scale_factor}; pick a multiple"
            )
        self.latent_size = self.image_size // model.vae_scale_factor
        self.ddim = None
        if cfg.x0_ddim_steps > 0:
            from mvforge.models.pipeline import make_stepper

            self.ddim = make_stepper("ddim", model.scheduler.config)
            self.ddim.set_timesteps(cfg.x0_ddim_steps)

    def encode_text(self, prompt: str) -> TextEmbeddings:
        """Embeddings of ``prompt + prompt_suffix`` and of the negative prompt. Raises UserError on empty text."""
        if not prompt.strip():
            raise UserError("the prompt is empty; pass --prompt 'a description of the object'")
        emb = self.model.encode_prompt([prompt + self.cfg.prompt_suffix, self.cfg.negative_prompt])
        return TextEmbeddings(emb[:1], emb[1:2])

    def draw(self, n: int, t_range: tuple[int, int], generator: torch.Generator) -> tuple[int, torch.Tensor]:
        """One timestep uniform in the inclusive ``t_range`` and noise (n, 4, h, w) float32 on CPU. With
        ``x0_ddim_steps`` the timestep is snapped down to the DDIM grid (never below its smallest step)."""
        t = int(torch.randint(t_range[0], t_range[1] + 1, (1,), generator=generator))
        noise = torch.randn((n, 4, self.latent_size, self.latent_size), generator=generator)
        if self.ddim is not None:
            grid = self.ddim.timesteps
            t = int(grid[grid <= t].max()) if bool((grid <= t).any()) else int(grid.min())
        return t, noise

    def __call__(
        self,
        rgb: torch.Tensor,
        cameras: torch.Tensor,
        text: TextEmbeddings,
        t: int,
        noise: torch.Tensor,
        vae_generator: torch.Generator | None = None,
    ) -> GuidanceOutput:
        """SDS loss of renders rgb (N, H, W, 3) in [0, 1] with cameras (N, 16) at timestep ``t``.

        N must be a multiple of ``num_views`` (views of an object contiguous); ``noise`` is (N, 4, h, w).
        ``vae_generator`` seeds the VAE posterior sample. Raises ValueError on mismatched shapes.
        """
        n = rgb.shape[0]
        if n % self.num_views or cameras.shape != (n, 16) or noise.shape[0] != n:
            raise ValueError(
                f"rgb {tuple(rgb.shape)}, cameras {tuple(cameras.shape)}, noise {tuple(noise.shape)}"
            )
        model = self.model
        # 1. resize to the model's resolution (every phase, official), [0, 1] -> [-1, 1], encode with grad
        x = rgb.permute(0, 3, 1, 2)
        x = F.interpolate(x, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        latents = model.encode_images(x * 2.0 - 1.0, grad=True, generator=vae_generator).float()
        if latents.requires_grad:
            latents.retain_grad()
        with torch.no_grad():
            # 2. one t for every view, noise
            noise = noise.to(latents.device, latents.dtype)
            a = model.alphas_cumprod[t].to(latents.dtype)
            noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
            # 3. CFG by the model's one implementation: one UNet call on both halves, the cameras on both; the
            # conditional ε comes back too, for the x0 std rescale of step 4
            cond, uncond = text.expand(n)
            eps, eps_cond = model.predict_noise(
                noisy,
                t,
                cond,
                uncond,
                cameras=cameras.to(latents.device),
                num_views=self.num_views,
                guidance_scale=self.cfg.guidance_scale,
                return_cond=True,
            )
            # 4. x0 reconstruction with MVDream's multi-view std rescale, or the end of a DDIM run from z_t
            if self.ddim is not None:
                x0 = self._ddim_x0(noisy, t, eps, cond, uncond, cameras.to(latents.device))
            else:
                x0 = model.predict_x0(noisy, t, eps)
                if self.cfg.recon_std_rescale > 0:
                    x0_cond = model.predict_x0(noisy, t, eps_cond)
                    x0 = model.rescale_x0_multiview(x0, x0_cond, self.num_views, self.cfg.recon_std_rescale)
        # 5. x0-reconstruction loss (MVDream §3.3): gradient (z - x0) / N
        loss = 0.5 * F.mse_loss(latents, x0, reduction="sum") / n
        return GuidanceOutput(loss=loss, latents=latents, x0=x0, t=t)

    def _ddim_x0(self, noisy, t: int, eps, cond, uncond, cameras) -> torch.Tensor:
        """z_0 of diffusers' DDIM (eta 0) from ``noisy`` at grid timestep ``t``, whose ε ``eps`` is given."""
        z = noisy
        for step_t in self.ddim.timesteps[self.ddim.timesteps <= t]:
            if int(step_t) != t:
                eps = self.model.predict_noise(
                    z, int(step_t), cond, uncond, cameras=cameras, num_views=self.num_views,
                    guidance_scale=self.cfg.guidance_scale,
                )  # fmt: skip
            z = self.ddim.step(eps.float(), int(step_t), z.float()).prev_sample.to(z.dtype)
        return z
