"""DCGAN-style image generator for data-free distillation (Fast-DFKD / SSD-KD inversion).

``Generator(latent_dim=256, channel=3, im_size=32, mean, std)`` maps a latent ``z`` of shape
``[N, latent_dim]`` to images ``[N, channel, H, W]`` in the dataset's *normalized* space: the network ends in a
sigmoid (pixels in [0, 1]) followed by ``(x - mean) / std`` per channel, so its output can be fed to a teacher
trained on normalized data directly.

Architecture: Linear to ``2*width`` feature maps at a quarter of the output size, then two
(nearest upsample x2, 3x3 conv, BatchNorm, LeakyReLU 0.2) stages, a 3x3 conv to ``channel`` maps, sigmoid.
Sizes that are not a multiple of 4 are reached by a final bilinear resize of the last feature map.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Generator"]


def _per_channel(value, channel: int, name: str) -> torch.Tensor:
    if value is None:
        value = [0.0 if name == "mean" else 1.0] * channel
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(channel).clone()
    if t.numel() != channel:
        raise ValueError(f"{name} must have one value per channel ({channel}), got {t.numel()} values")
    if name == "std" and bool((t <= 0).any()):
        raise ValueError(f"std must be positive, got {t.tolist()}")
    return t.view(1, channel, 1, 1)


class Generator(nn.Module):
    """DCGAN-style generator: ``z [N, latent_dim] -> images [N, channel, H, W]`` (normalized space).

    Args:
        latent_dim: size of the latent code (default 256).
        channel: image channels (3 for CIFAR, 1 for MNIST/digits).
        im_size: output height/width, an int or ``(H, W)`` (default 32).
        mean, std: per-channel dataset normalization applied after the sigmoid (defaults 0 and 1).
        width: feature maps of the last stage (the first stage has ``2 * width``; default 64).
    """

    def __init__(
        self,
        latent_dim: int = 256,
        channel: int = 3,
        im_size: int | Sequence[int] = 32,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        width: int = 64,
    ):
        super().__init__()
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
        if not isinstance(channel, int) or channel < 1:
            raise ValueError(f"channel must be a positive int, got {channel!r}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        if isinstance(im_size, int):
            im_size = (im_size, im_size)
        im_size = tuple(int(s) for s in im_size)
        if len(im_size) != 2 or min(im_size) < 1:
            raise ValueError(f"im_size must be a positive int or (H, W), got {im_size!r}")
        self.latent_dim = latent_dim
        self.channel = channel
        self.im_size = im_size
        self.width = width
        self.init_size = (max(1, math.ceil(im_size[0] / 4)), max(1, math.ceil(im_size[1] / 4)))
        h0, w0 = self.init_size
        self.project = nn.Linear(latent_dim, 2 * width * h0 * w0)
        self.bn0 = nn.BatchNorm2d(2 * width)
        self.conv1 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * width)
        self.conv2 = nn.Conv2d(2 * width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.to_image = nn.Conv2d(width, channel, 3, padding=1)
        self.register_buffer("mean", _per_channel(mean, channel, "mean"))
        self.register_buffer("std", _per_channel(std, channel, "std"))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape [N, {self.latent_dim}], got {tuple(z.shape)}")
        h0, w0 = self.init_size
        x = self.project(z).view(z.shape[0], 2 * self.width, h0, w0)
        x = self.bn0(x)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.leaky_relu(self.bn1(self.conv1(x)), 0.2)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.leaky_relu(self.bn2(self.conv2(x)), 0.2)
        if tuple(x.shape[-2:]) != self.im_size:
            x = F.interpolate(x, size=self.im_size, mode="bilinear", align_corners=False)
        x = torch.sigmoid(self.to_image(x))
        return (x - self.mean) / self.std

    def sample_latent(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard-normal latents ``[n, latent_dim]`` on the module's device."""
        dev = self.project.weight.device
        gdev = generator.device if generator is not None else dev
        return torch.randn(n, self.latent_dim, generator=generator, device=gdev).to(dev)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, channel={self.channel}, im_size={self.im_size}, width={self.width}"
