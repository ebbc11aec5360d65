"""DC's evaluation augmentation (not differentiable; used to train evaluation networks under DC's protocol).

As the official DC code's ``get_daparam``/``augment`` (VICO-UoE/DatasetCondensation, utils.py) define it:
the strategy is chosen per dataset and evaluation model (:func:`dc_augmentation_for`), and each image of a
batch gets ONE transform drawn uniformly from the strategy's parts:

- ``crop``: pad by ``crop`` px with the batch's per-channel mean, take the H x W window at offset (r, c),
  r, c uniform in {0, ..., 2 crop - 1} (a shift in [-crop, crop - 1]);
- ``scale``: nearest-resize to (int(u_h H), int(u_w H)), u ~ U(1 - scale, 1 + scale), centre it on a zero
  canvas and take the centre H x W;
- ``rotate``: rotate by an integer angle uniform in [-rotate, rotate - 1] degrees about the centre (cubic
  spline, ``scipy.ndimage.rotate``), fill with the mean of the channel means, centre H x W;
- ``noise``: add ``noise`` x N(0, 1).

Randomness comes from a ``torch.Generator`` (the original uses NumPy's global RNG).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DC_AUGMENT_DEFAULTS", "DC_AUGMENTATIONS", "dc_augmentation_for", "dc_augment"]

# crop 4 px, scale 0.2, rotate 45 deg, noise 0.001: get_daparam in the official utils.py.
DC_AUGMENT_DEFAULTS = {"crop": 4, "scale": 0.2, "rotate": 45, "noise": 0.001}
DC_AUGMENTATIONS = ("none", "crop_scale_rotate", "crop_noise")
_PARTS = ("crop", "scale", "rotate", "noise")


def dc_augmentation_for(dataset_name: str, model: str) -> str:
    """The official DC evaluation strategy: ``"crop_noise"`` for a ``ConvNetBN`` evaluation model, else
    ``"crop_scale_rotate"`` on MNIST, else ``"none"`` (official get_daparam; the model test comes last there)."""
    if model == "ConvNetBN":
        return "crop_noise"
    if str(dataset_name).lower().split(":")[0] == "mnist":
        return "crop_scale_rotate"
    return "none"


def _uniform(gen, n):
    return torch.rand(n, generator=gen, device=gen.device, dtype=torch.float64).cpu()


def dc_augment(
    images: torch.Tensor,
    strategy: str,
    generator: torch.Generator,
    *,
    crop: int = 4,
    scale: float = 0.2,
    rotate: int = 45,
    noise: float = 0.001,
) -> torch.Tensor:
    """A new tensor: ``images`` [N, C, H, W] (square) with one transform of ``strategy`` per image (see the
    module docstring); ``strategy`` "none" or "" returns ``images`` unchanged."""
    if strategy in ("none", "", None):
        return images
    parts = strategy.split("_")
    bad = [p for p in parts if p not in _PARTS]
    if bad:
        raise ValueError(f"strategy parts must be among {_PARTS}, got {bad} in {strategy!r}")
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    n, ch, h, w = images.shape
    x = images.detach().clone()
    if n == 0:
        return x
    mean = x.mean(dim=(0, 2, 3))  # per channel, over the batch as given
    choice = (_uniform(generator, n) * len(parts)).long().clamp_max(len(parts) - 1).tolist()
    for i in range(n):
        kind = parts[choice[i]]
        if kind == "crop":
            r, c = (_uniform(generator, 2) * (2 * crop)).long().clamp_max(2 * crop - 1).tolist()
            pad = mean.view(ch, 1, 1).expand(ch, h + 2 * crop, w + 2 * crop).clone()
            pad[:, crop : crop + h, crop : crop + w] = x[i]
            x[i] = pad[:, r : r + h, c : c + w]
        elif kind == "scale":
            u = _uniform(generator, 2) * (2 * scale) + (1 - scale)
            sh, sw = int(float(u[0]) * h), int(float(u[1]) * h)  # both from H, as the original
            tmp = F.interpolate(x[i : i + 1], [sh, sw])[0]  # nearest
            m = max(sh, sw, h, w)
            canvas = x.new_zeros(ch, m, m)
            r, c = (m - sh) // 2, (m - sw) // 2
            canvas[:, r : r + sh, c : c + sw] = tmp
            r, c = (m - h) // 2, (m - w) // 2
            x[i] = canvas[:, r : r + h, c : c + w]
        elif kind == "rotate":
            from scipy.ndimage import rotate as nd_rotate

            angle = int((_uniform(generator, 1) * (2 * rotate)).long().clamp_max(2 * rotate - 1)) - rotate
            out = nd_rotate(x[i].cpu().numpy(), angle=angle, axes=(-2, -1), cval=float(mean.mean()))
            r, c = (out.shape[-2] - h) // 2, (out.shape[-1] - w) // 2
            x[i] = torch.as_tensor(out[:, r : r + h, c : c + w], dtype=x.dtype, device=x.device)
        else:  # noise
            x[i] = x[i] + noise * torch.randn(x.shape[1:], generator=generator, device=generator.device).to(x)
    return x
