"""Helpers shared by the methods that learn images (DC/DSA, DM, MTT, DD): labels, initial images, networks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["class_labels", "init_synthetic_images", "fresh_network", "draw_seed"]


def draw_seed(generator: torch.Generator) -> int:
    """A seed in [0, 2**62) drawn from ``generator``."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


def fresh_network(method, cfg) -> nn.Module:
    """A freshly initialised ``cfg.model`` (``cfg.model_kwargs``) on the method's device, its initialisation
    drawn from a seed taken from ``method.generator`` (runs and resumes are reproducible; the global RNG is left
    untouched)."""
    from pydistill.models import seeded_network

    ds = method.dataset
    return seeded_network(
        cfg.model,
        ds.channel,
        ds.num_classes,
        ds.im_size,
        draw_seed(method.generator),
        device=method.device,
        **dict(cfg.model_kwargs),
    )


def class_labels(num_classes: int, ipc: int, device) -> torch.Tensor:
    """Labels [num_classes * ipc] int64: ``ipc`` copies of each class, class-major."""
    return torch.arange(num_classes, device=device).repeat_interleave(int(ipc))


def init_synthetic_images(method, init: str) -> torch.Tensor:
    """Initial synthetic images [num_classes * ipc, C, H, W] (class-major): ``"real"`` random real images of
    each class (repeated when a class has fewer than ipc images), ``"noise"`` standard normal."""
    ds, ipc = method.dataset, method.ipc
    if init == "noise":
        shape = (ds.num_classes * ipc, ds.channel, *ds.im_size)
        return torch.randn(shape, generator=method.generator, device=method.device)
    if init != "real":
        raise ValueError(f"init must be 'real' or 'noise', got {init!r}")
    parts = []
    for c in range(ds.num_classes):
        x = ds.sample_real(c, ipc, method.generator)
        if x.shape[0] < ipc:
            x = x[torch.arange(ipc, device=x.device) % x.shape[0]]
        parts.append(x)
    return torch.cat(parts).to(method.device).clone()
