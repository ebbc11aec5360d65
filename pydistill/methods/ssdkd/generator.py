"""Generator of SSD-KD's data inversion and the first-order meta update of its shared prior (Fast-DFKD).

:class:`MetaGenerator` keeps a shared generator *prior* ``theta``. Each synthesis round clones it
(``theta' = theta``), takes ``g_steps`` Adam steps on the clone and on the round's latent codes ``z`` (their own
lr), and then updates the prior with a first-order meta gradient (fast_meta.py of zju-vipa/Fast-Datafree):

- ``"fomaml"`` (the base's default, ``is_maml 1``): ``g = sum_k grad L(theta'_k)``, the clone's gradients at each
  inner step, summed;
- ``"reptile"``: ``g = theta - theta'_K`` (the prior moves toward the adapted clone).

``g`` is applied by the meta optimizer: Adam (0.5, 0.999) with lr ``lr_g * g_steps`` as in the base (or plain SGD,
``meta_optimizer="sgd"``). The images of a round are those of the inner step with the lowest loss (the base keeps
its ``best_inputs``).

``Generator(latent_dim=256, channel=3, im_size=32, mean, std)`` maps a latent ``z`` of shape
``[N, latent_dim]`` to images ``[N, channel, H, W]`` in the dataset's *normalized* space: the network ends in a
sigmoid (pixels in [0, 1]) followed by ``(x - mean) / std`` per channel, so its output can be fed to a teacher
trained on normalized data directly.

Architecture: Linear to ``2*width`` feature maps at a quarter of the output size, then two
(nearest upsample x2, 3x3 conv, BatchNorm, LeakyReLU 0.2) stages, a 3x3 conv to ``channel`` maps, sigmoid.
Sizes that are not a multiple of 4 are reached by a final bilinear resize of the last feature map.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Generator", "MetaGenerator", "reset_first_layer"]


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


def reset_first_layer(generator: nn.Module, rng: torch.Generator | None = None) -> None:
    """Re-initialise the first ``nn.Linear`` of ``generator``: weight ~ N(0, 0.02) drawn from ``rng``, bias 0
    (the base's reset_l0)."""
    lin = next((m for m in generator.modules() if isinstance(m, nn.Linear)), None)
    if lin is None:
        raise ValueError("reset_first_layer: the generator has no nn.Linear layer")
    with torch.no_grad():
        dev = rng.device if rng is not None else lin.weight.device
        lin.weight.copy_(0.02 * torch.randn(lin.weight.shape, generator=rng, device=dev))
        if lin.bias is not None:
            lin.bias.zero_()


class MetaGenerator:
    """Shared generator prior + per-round clone adapted by Adam, with a first-order meta update of the prior.

    Args:
        prior: the generator module (``z [N, latent] -> x``); any ``nn.Module``.
        lr_g: inner Adam lr of the clone's parameters; lr_z: inner Adam lr of the latent codes.
        g_steps: inner steps per round.
        meta: ``"fomaml"`` or ``"reptile"`` (see the module docstring).
        meta_optimizer: ``"adam"`` (betas (0.5, 0.999), lr ``meta_lr``) or ``"sgd"`` (plain, lr ``meta_lr``).
        meta_lr: default ``lr_g * g_steps`` (the base's meta-optimizer lr).
    """

    def __init__(
        self,
        prior: nn.Module,
        *,
        lr_g: float,
        lr_z: float,
        g_steps: int,
        meta: str = "fomaml",
        meta_optimizer: str = "adam",
        meta_lr: float | None = None,
    ):
        if meta not in ("fomaml", "reptile"):
            raise ValueError(f"meta must be 'fomaml' or 'reptile', got {meta!r}")
        if meta_optimizer not in ("adam", "sgd"):
            raise ValueError(f"meta_optimizer must be 'adam' or 'sgd', got {meta_optimizer!r}")
        if not isinstance(g_steps, int) or g_steps < 1:
            raise ValueError(f"g_steps must be a positive int, got {g_steps!r}")
        for name, v in (("lr_g", lr_g), ("lr_z", lr_z)):
            if not v > 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        self.prior = prior
        self.lr_g, self.lr_z, self.g_steps, self.meta = float(lr_g), float(lr_z), int(g_steps), meta
        self.meta_lr = float(meta_lr) if meta_lr is not None else self.lr_g * self.g_steps
        params = list(prior.parameters())
        if meta_optimizer == "adam":
            self.meta_opt = torch.optim.Adam(params, lr=self.meta_lr, betas=(0.5, 0.999))
        else:
            self.meta_opt = torch.optim.SGD(params, lr=self.meta_lr)

    def round(self, z: torch.Tensor, loss_fn: Callable[[torch.Tensor], tuple[torch.Tensor, dict]]):
        """One synthesis round on latents ``z [N, latent]`` (optimized in place).

        ``loss_fn(x) -> (loss, logs)`` is the inversion loss of a batch ``x = G'(z)``. Returns
        ``(best images [N, ...] detached, logs of the best step, z detached)``.
        """
        fast = copy.deepcopy(self.prior)
        fast.train()
        z = z.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam(
            [{"params": list(fast.parameters())}, {"params": [z], "lr": self.lr_z}], lr=self.lr_g, betas=(0.5, 0.999)
        )
        self.meta_opt.zero_grad(set_to_none=True)
        meta_grads = [torch.zeros_like(p) for p in self.prior.parameters()]
        best, best_loss, best_logs = None, math.inf, {}
        for _ in range(self.g_steps):
            x = fast(z)
            loss, logs = loss_fn(x)
            if float(loss.detach()) < best_loss or best is None:
                best, best_loss, best_logs = x.detach(), float(loss.detach()), dict(logs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.meta == "fomaml":
                for g, p in zip(meta_grads, fast.parameters()):
                    if p.grad is not None:
                        g.add_(p.grad)
            opt.step()
        if self.meta == "reptile":
            meta_grads = [p.detach() - q.detach() for p, q in zip(self.prior.parameters(), fast.parameters())]
        for p, g in zip(self.prior.parameters(), meta_grads):
            p.grad = g
        self.meta_opt.step()
        self.meta_opt.zero_grad(set_to_none=True)
        best_logs["loss_g"] = best_loss
        return best, best_logs, z.detach()

    def state_dict(self) -> dict:
        return {"prior": self.prior.state_dict(), "meta_opt": self.meta_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.prior.load_state_dict(state["prior"])
        self.meta_opt.load_state_dict(state["meta_opt"])
