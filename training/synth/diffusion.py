"""The diffusion process behind one factory: training schedule, training loss and sampler.

Mirrors facebookresearch/DiT `diffusion/__init__.py: create_diffusion`, built on diffusers'
schedulers instead of DiT's own Gaussian diffusion: a `DDPMScheduler` defines the forward (noising)
process and the training targets; sampling uses a fresh scheduler of the chosen kind made from the
same config (DPM-Solver++, Lu et al. 2022; DDIM, Song et al. 2021; or ancestral DDPM). Timesteps
are "trailing" so that the first sampling step starts from pure noise at every step count
(Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed", WACV 2024).
"""

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.synth.networks import ConditionalDiT, import_diffusers

SAMPLERS = {"dpm": "DPMSolverMultistepScheduler", "ddim": "DDIMScheduler", "ddpm": "DDPMScheduler"}


@dataclass
class Diffusion:
    """One generator's noise process: `training_loss` for the trainer, `sample` for the sampler."""

    scheduler: object  # diffusers DDPMScheduler: betas, alphas, add_noise, get_velocity
    sampler: str
    class_dropout: float

    @property
    def num_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def training_loss(self, model: ConditionalDiT, latents: torch.Tensor, labels: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
        """MSE between the model's prediction and the target at random timesteps; latents (N, C, h, w).

        Each label is replaced by the null class with probability `class_dropout` (classifier-free
        guidance training); every draw comes from `generator` (CPU), so a step is reproducible.
        """
        n = latents.shape[0]
        timesteps = torch.randint(0, self.num_timesteps, (n,), generator=generator).to(latents.device)
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        dropped = (torch.rand(n, generator=generator) < self.class_dropout).to(latents.device)
        labels = torch.where(dropped, torch.full_like(labels, model.null_class), labels)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)  # (N, C, h, w)
        if self.scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        prediction = model(noisy, timesteps, labels)
        return F.mse_loss(prediction.float(), target.float())

    def make_sampler(self, name: str | None = None):
        """A fresh diffusers scheduler of kind `name` (default: this process's sampler), same betas."""
        name = name or self.sampler
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
        scheduler_class = getattr(import_diffusers(), SAMPLERS[name])
        return scheduler_class.from_config(self.scheduler.config, timestep_spacing="trailing")

    @torch.no_grad()
    def sample(self, model: ConditionalDiT, noise: torch.Tensor, labels: torch.Tensor, *, steps: int,
               guidance: float, sampler: str | None = None, generator: torch.Generator | None = None,
               progress: bool = False) -> torch.Tensor:
        """Denoise `noise` (N, C, h, w) into latents of class `labels` (N,) with guidance, in `steps` steps.

        `generator` feeds the samplers that add noise on the way (DDPM); DPM-Solver++ and DDIM
        (eta 0) are deterministic given the starting noise.
        """
        scheduler = self.make_sampler(sampler)
        with warnings.catch_warnings():  # diffusers 0.42's DPM-Solver calls np.array(tensor) the numpy-2-deprecated way
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            scheduler.set_timesteps(steps, device=noise.device)
        latents = noise * scheduler.init_noise_sigma
        for timestep in tqdm(scheduler.timesteps, desc="denoising", unit="step", leave=False, disable=not progress):
            model_input = scheduler.scale_model_input(latents, timestep)
            timesteps = torch.full((latents.shape[0],), int(timestep), device=latents.device, dtype=torch.long)
            prediction = model.forward_with_cfg(model_input, timesteps, labels, guidance)
            latents = scheduler.step(prediction.float(), timestep, latents, generator=generator).prev_sample
        return latents


def create_diffusion(*, num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                     prediction_type: str = "epsilon", sampler: str = "dpm", class_dropout: float = 0.1) -> Diffusion:
    """The noise process with DiT's defaults (1000 steps, linear betas 1e-4 .. 0.02, epsilon target)."""
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
    scheduler = import_diffusers().DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_start=1e-4, beta_end=0.02, beta_schedule=beta_schedule,
        prediction_type=prediction_type, clip_sample=False)  # latents are not confined to [-1, 1]
    return Diffusion(scheduler=scheduler, sampler=sampler, class_dropout=class_dropout)
