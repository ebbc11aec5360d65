"""Mode discovery and mode-guided sampling (MGD3, Chan-Santiago et al., ICML 2025).

Modes: the real images of one class, in the diffusion model's sample space (VAE latents x scaling factor, or
pixels in [-1, 1] for a pixel-space model), are clustered into ``k = IPC`` groups; the k-th centre guides the
k-th generated sample.

Guided step (one sampler step at timestep ``t``, step index ``i`` counted from 0 at the noisiest step)::

    x0_hat   = the scheduler's prediction of the clean sample (epsilon / v / sample per its config,
               clipped when the scheduler clips)
    g        = m_k - x0_hat
    x_prev   = scheduler.step(model_output, t, x_t).prev_sample + lambda * sigma_t * g   while i < n_guided
    x_prev   = scheduler.step(model_output, t, x_t).prev_sample                          afterwards

with ``n_guided = round(t_stop * num_inference_steps)`` and ``sigma_t`` defined per scheduler
(see :func:`guidance_sigma`):

- DDPM: the standard deviation of the step's own noise, as the official MGD3 sampler adds
  ``lambda * exp(0.5 * log_variance) * (m_k - x0_hat)`` next to the ancestral noise (its
  ``p_sample_with_mode_guidance``, vendored in third-party forks; see the README's MGD3 table):

  * a model that learns its variance (DiT, improved-DDPM ``learn_sigma``: the output has 2C channels, the second
    half ``v`` in [-1, 1]) and a scheduler with ``variance_type="learned_range"``: the learned range
    ``log sigma_t^2 = f log beta_t + (1 - f) log beta_tilde_t``, ``f = (v + 1) / 2``, per element;
  * otherwise the scheduler's fixed variance: small ``sigma_t^2 = beta_tilde_t`` (the default), or large
    ``sigma_t^2 = beta_t`` with ``variance_type="fixed_large"``,

  with ``beta_t = 1 - abar_t / abar_prev`` (the respaced beta) and the posterior variance
  ``beta_tilde_t = (1 - abar_prev) / (1 - abar_t) * beta_t``, ``abar_prev`` at the schedule's previous timestep
  (1 after the last step; beta_tilde is clamped at 1e-20 before the log, as diffusers does).
- DDIM: the noise level of the current sample, ``sigma_t = sqrt(1 - abar_t)`` (the DDIM step's own sigma is 0
  for eta = 0 and would switch guidance off).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

__all__ = [
    "discover_modes",
    "scheduler_kind",
    "guidance_sigma",
    "learns_variance",
    "num_guided_steps",
    "guided_step",
    "mode_guided_sample",
]


def discover_modes(
    x: torch.Tensor,
    k: int,
    *,
    method: str = "kmeans",
    seed: int = 0,
    n_init: int = 10,
    max_iter: int = 300,
    oversample: int = 1,
) -> torch.Tensor:
    """Cluster centres of one class's samples.

    x: [N, ...] float (latents or pixels of one class); k: number of modes (the IPC), 1 <= k <= N.
    method: "kmeans" (scikit-learn KMeans, ``random_state=seed``, ``n_init`` restarts) or "gmm" (a diagonal-
    covariance Gaussian mixture initialised by k-means; its means). Returns [k, ...] in x's dtype and device,
    in scikit-learn's cluster order.
    oversample: r >= 1. r = 1 is the paper's clustering. r > 1 clusters into min(k * r, N) groups and returns the
    centres of the k most populated ones (most members first; ties by cluster order): the densest regions
    rather than centroids that can fall between sub-modes (at k = 1 the class mean); at k > 1 a large group can
    supply several of the k modes, trading coverage for density.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a tensor [N, ...] with at least 2 dims, got {getattr(x, 'shape', type(x))}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int (the number of modes), got {k!r}")
    if x.shape[0] < k:
        raise ValueError(f"k={k} modes need at least k samples, got x with {x.shape[0]} samples")
    if method not in ("kmeans", "gmm"):
        raise ValueError(f"method must be 'kmeans' or 'gmm', got {method!r}")
    if n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    if isinstance(oversample, bool) or not isinstance(oversample, int) or oversample < 1:
        raise ValueError(f"oversample must be an int >= 1 (clusters per mode), got {oversample!r}")
    flat = x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64).numpy()
    n_clusters = min(k * oversample, x.shape[0])
    if method == "kmeans":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, random_state=seed).fit(flat)
        centres, assign = km.cluster_centers_, km.labels_
    else:
        from sklearn.mixture import GaussianMixture

        gmm = GaussianMixture(
            n_components=n_clusters,
            covariance_type="diag",
            n_init=n_init,
            max_iter=max_iter,
            random_state=seed,
            reg_covar=1e-4,
        ).fit(flat)
        centres, assign = gmm.means_, gmm.predict(flat)
    if n_clusters > k:
        counts = np.bincount(assign, minlength=n_clusters)
        keep = np.argsort(-counts, kind="stable")[:k]
        centres = centres[keep]
    out = torch.from_numpy(np.ascontiguousarray(centres)).to(device=x.device, dtype=x.dtype)
    return out.reshape(k, *x.shape[1:])


def scheduler_kind(scheduler) -> str:
    """ "ddim" or "ddpm" for a diffusers DDIMScheduler / DDPMScheduler; anything else is an error."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if isinstance(scheduler, DDIMScheduler):
        return "ddim"
    if isinstance(scheduler, DDPMScheduler):
        return "ddpm"
    raise TypeError(
        f"scheduler must be a diffusers DDIMScheduler or DDPMScheduler, got {type(scheduler).__name__}; "
        "build one with DDIMScheduler.from_config(other.config)"
    )


def _prev_timestep(scheduler, step_index: int) -> int:
    ts = scheduler.timesteps
    return int(ts[step_index + 1]) if step_index + 1 < len(ts) else -1


def _ddpm_betas(scheduler, step_index: int) -> tuple[float, float]:
    """(beta_t, beta_tilde_t) of the respaced chain at ``scheduler.timesteps[step_index]``, in float64."""
    abar = scheduler.alphas_cumprod.double()
    abar_t = float(abar[int(scheduler.timesteps[step_index])])
    prev = _prev_timestep(scheduler, step_index)
    abar_prev = float(abar[prev]) if prev >= 0 else 1.0
    beta_t = 1.0 - abar_t / abar_prev
    return beta_t, (1.0 - abar_prev) / (1.0 - abar_t) * beta_t


def learns_variance(scheduler) -> bool:
    """Whether a DDPM scheduler takes the variance from the model output (``variance_type`` "learned_range")."""
    return scheduler_kind(scheduler) == "ddpm" and scheduler.config.variance_type == "learned_range"


def guidance_sigma(scheduler, step_index: int, predicted_variance: torch.Tensor | None = None):
    """sigma_t of the guidance term at ``scheduler.timesteps[step_index]`` (module docstring gives the formulas).

    predicted_variance: the model's variance channels v [B, C, h, w] in [-1, 1], required with a "learned_range"
    DDPM scheduler (ignored otherwise). Returns a float, or a tensor like ``predicted_variance`` (learned range).
    """
    if scheduler.num_inference_steps is None:
        raise ValueError("scheduler has no timesteps: call scheduler.set_timesteps(num_inference_steps) first")
    kind = scheduler_kind(scheduler)
    if kind == "ddim":
        abar_t = float(scheduler.alphas_cumprod.double()[int(scheduler.timesteps[step_index])])
        return math.sqrt(1.0 - abar_t)
    beta_t, beta_tilde = _ddpm_betas(scheduler, step_index)
    vt = scheduler.config.variance_type
    if vt == "learned_range":
        if predicted_variance is None:
            raise ValueError(
                "a 'learned_range' DDPM scheduler needs the model's variance channels "
                "(model output with 2C channels); got none"
            )
        frac = (predicted_variance.double() + 1.0) / 2.0
        log_var = frac * math.log(beta_t) + (1.0 - frac) * math.log(max(beta_tilde, 1e-20))
        return torch.exp(0.5 * log_var).to(predicted_variance.dtype)
    if vt in ("fixed_large", "fixed_large_log"):
        return math.sqrt(beta_t)
    if vt not in ("fixed_small", "fixed_small_log"):
        raise ValueError(
            f"mode guidance supports DDPM variance_type 'fixed_small', 'fixed_large' or 'learned_range', got {vt!r}"
        )
    return math.sqrt(max(beta_tilde, 0.0))


def num_guided_steps(num_inference_steps: int, t_stop: float) -> int:
    """How many of the first steps are guided: ``round(t_stop * num_inference_steps)``; t_stop in [0, 1]."""
    if not (0.0 <= float(t_stop) <= 1.0):
        raise ValueError(f"t_stop must be a fraction of the steps in [0, 1], got {t_stop}")
    return int(round(float(t_stop) * num_inference_steps))


def guided_step(
    scheduler,
    model_output: torch.Tensor,
    step_index: int,
    sample: torch.Tensor,
    modes: torch.Tensor | None,
    lambda_: float,
    *,
    guide: bool = True,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sampler step plus, when ``guide``, the mode-guidance term ``lambda_ * sigma_t * (modes - x0_hat)``.

    model_output: [B, C(, or 2C with learned variance), h, w]; sample, modes: [B, C, h, w] (modes row b guides
    sample b). Returns (x_prev [B, C, h, w], x0_hat [B, C, h, w]).
    """
    kind = scheduler_kind(scheduler)
    t = scheduler.timesteps[step_index]
    C = sample.shape[1]
    predicted_variance = None
    if kind == "ddim":
        out = scheduler.step(model_output[:, :C], t, sample, eta=eta, generator=generator if eta > 0 else None)
    else:
        if learns_variance(scheduler):
            if model_output.shape[1] != 2 * C:
                raise ValueError(
                    f"a 'learned_range' DDPM scheduler needs a model output with 2 x {C} channels "
                    f"(prediction, variance), got {model_output.shape[1]}"
                )
            predicted_variance = model_output[:, C:]
        else:
            model_output = model_output[:, :C]  # learned-variance channels, if any, unused by a fixed variance
        out = scheduler.step(model_output, t, sample, generator=generator)
    prev, x0_hat = out.prev_sample, out.pred_original_sample
    if guide and modes is not None and lambda_ != 0.0:
        sigma = guidance_sigma(scheduler, step_index, predicted_variance)
        prev = prev + (lambda_ * sigma) * (modes.to(prev.dtype) - x0_hat)
    return prev, x0_hat


@torch.no_grad()
def mode_guided_sample(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler,
    shape: tuple[int, ...],
    modes: torch.Tensor | None = None,
    *,
    num_inference_steps: int = 50,
    lambda_: float = 0.1,
    t_stop: float = 0.5,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, dict]:
    """Sample ``shape`` = [B, C, h, w] from noise with mode guidance.

    denoise(x_t [B, C, h, w], t (int64 tensor [B])) -> model output (classifier-free guidance, if any, done by
    the caller). modes: [B, C, h, w] or None (plain, unguided sampling). Initial noise and DDPM noise come from
    ``generator``. Returns (x0 [B, C, h, w], {"guided_steps": int, "steps": int}).
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if lambda_ < 0:
        raise ValueError(f"lambda_ must be >= 0, got {lambda_}")
    device = torch.device(device)
    if modes is not None and tuple(modes.shape) != tuple(shape):
        raise ValueError(f"modes must have the sample shape {tuple(shape)}, got {tuple(modes.shape)}")
    scheduler_kind(scheduler)
    scheduler.set_timesteps(num_inference_steps, device=device)
    n_guided = num_guided_steps(num_inference_steps, t_stop) if modes is not None and lambda_ > 0 else 0
    gen_dev = generator.device if generator is not None else device
    x = torch.randn(shape, generator=generator, device=gen_dev, dtype=torch.float32).to(device, dtype)
    x = x * float(getattr(scheduler, "init_noise_sigma", 1.0))
    m = modes.to(device, dtype) if modes is not None else None
    guided = 0
    for i, t in enumerate(scheduler.timesteps):
        tb = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        out = denoise(scheduler.scale_model_input(x, t), tb)
        guide = i < n_guided
        guided += int(guide)
        x, _ = guided_step(scheduler, out, i, x, m, lambda_, guide=guide, eta=eta, generator=generator)
    return x, {"guided_steps": guided, "steps": len(scheduler.timesteps)}
