"""Shared flow-matching pieces (FLUX.1, SD3.5 and the newer transformer families), as diffusers'
``train_dreambooth_lora_{flux,sd3}.py`` do them: timestep density sampling
(``compute_density_for_timestep_sampling``: weighting_scheme "none" = uniform, "logit_normal", "mode"),
``noisy = (1 - σ) x + σ ε`` and the loss weighting ``compute_loss_weighting_for_sd3``.

A family mixes :class:`FlowMatching` in explicitly; nothing inherits a loss by accident."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gal.families.base import LOSS_MASK, reduce_loss


@dataclass
class FlowDraw:
    """One batch's draws, already sliced to ``rows``: latents, noise, timesteps, sigmas ``[b, 1, 1, 1]``,
    the noisy latents and the conditioning."""

    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    sigmas: torch.Tensor
    noisy: torch.Tensor
    cond: dict[str, torch.Tensor]
    mask: torch.Tensor | None = None  # the loss masks (``cond[LOSS_MASK]``, taken out of ``cond``)

    @property
    def empty(self) -> bool:
        return not len(self.latents)


class FlowMatching:
    """Mixin: the training scheduler, the draws and the weighting of rectified-flow families."""

    def noise_scheduler(self, pipe):
        from diffusers import FlowMatchEulerDiscreteScheduler

        # A fresh copy: the pipeline's scheduler keeps only the last generation's timesteps.
        return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)

    @staticmethod
    def flow_draw(scheduler, latents, cond, generator, cfg, rows: slice | None) -> FlowDraw:
        """Noise and timesteps for the whole batch from ``generator``, then ``rows`` of them."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        device = latents.device
        b = len(latents)
        noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
        u = compute_density_for_timestep_sampling(
            cfg.flow.weighting_scheme,
            b,
            logit_mean=cfg.flow.logit_mean,
            logit_std=cfg.flow.logit_std,
            mode_scale=cfg.flow.mode_scale,
            generator=generator,
        )
        indices = (u * scheduler.config.num_train_timesteps).long().clamp(max=len(scheduler.timesteps) - 1)
        if rows is not None:  # one process's slice of the batch: the draws above were made for all of it
            latents, noise, indices = latents[rows], noise[rows], indices[rows]
            cond = {k: v[rows] for k, v in cond.items()}
        b = len(latents)
        timesteps = scheduler.timesteps[indices].to(device)
        sigmas = scheduler.sigmas[indices].to(device, torch.float32).view(b, *([1] * (latents.ndim - 1)))
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        cond = dict(cond)
        mask = cond.pop(LOSS_MASK, None)
        return FlowDraw(latents, noise, timesteps, sigmas, noisy, cond, mask)

    @staticmethod
    def flow_loss(cfg, sigmas, pred, target, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted MSE per sample ``[b]`` (float32), over ``mask`` when given (``reduce_loss``)."""
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        weighting = compute_loss_weighting_for_sd3(cfg.flow.weighting_scheme, sigmas).float()
        error = weighting * (pred.float() - target.float()).pow(2)
        return reduce_loss(error, mask, cfg.mask_floor)

    def schedulers(self) -> tuple[str, ...]:
        return ("flow-euler",)

    def set_scheduler(self, pipe, name: str | None) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        if name not in (None, "flow-euler"):
            raise ValueError(
                f"{self.label} samples by flow matching: scheduler {name!r} does not apply, use flow-euler"
            )
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
