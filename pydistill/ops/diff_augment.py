"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021) as one fused, differentiable op.

Groups (strategy ``"color_crop_cutout_flip_scale_rotate"``, groups separated by ``_``):

* ``color``: brightness ``x + b``, ``b ~ U(-0.5, 0.5) * brightness``; saturation around the per-pixel channel
  mean by ``s ~ U(0, 1) * saturation``; contrast around the image mean by ``k ~ U(0, 1) + contrast``.
* ``crop``: integer shift ``(dy, dx)`` up to ``int(size * crop + 0.5)`` pixels, zero fill:
  ``out[i, j] = in[i + dy, j + dx]``.
* ``cutout``: zero square of ``int(size * cutout + 0.5)`` pixels around a random centre (clipped to the image).
* ``flip``: horizontal flip with probability ``flip``.
* ``scale``: per-axis factors ``U(1/scale, scale)``; ``rotate``: angle ``U(-rotate, rotate)`` degrees. Both
  resample bilinearly as ``grid_sample(..., align_corners=True, padding_mode="zeros")`` of the affine map in
  normalised coordinates (as the original code).

Mode ``"one"`` activates one group per call, ``"all"`` every group in strategy order.

Fused semantics (what the reference and the kernels compute): colour is applied first, to the source pixels;
the geometric groups keep their order. The groups before the first scale/rotate ("pre" stages: crop, cutout,
flip) act exactly on the pixel grid; every scale/rotate (and any crop/flip/cutout after the first of them) is
composed into ONE affine map and ONE bilinear resampling, with crop bounds and the cutout box tested on the
intermediate (continuous) coordinates of their stage. With a single active group (mode ``"one"``) this is exactly
the original sequential pipeline (see :func:`diff_augment_sequential`); in mode ``"all"`` scale followed by
rotate interpolates once instead of twice.

Every 2-vector parameter is ordered (vertical, horizontal) = (H axis, W axis).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from pydistill import _backend

__all__ = [
    "DSAParams",
    "sample_dsa_params",
    "diff_augment",
    "diff_augment_reference",
    "diff_augment_sequential",
    "GROUPS",
    "DEFAULT_STRATEGY",
    "DEFAULT_RATIOS",
]

GROUPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
DEFAULT_RATIOS = {
    "brightness": 1.0,
    "saturation": 2.0,
    "contrast": 0.5,
    "crop": 0.125,
    "cutout": 0.5,
    "flip": 0.5,
    "scale": 1.2,
    "rotate": 15.0,
}
_RATIO_RANGES = {
    "brightness": (0.0, math.inf),
    "saturation": (0.0, math.inf),
    "contrast": (0.0, math.inf),
    "crop": (0.0, 1.0),
    "cutout": (0.0, 1.0),
    "flip": (0.0, 1.0),
    "scale": (1.0, math.inf),
    "rotate": (0.0, 180.0),
}
_MODES = ("one", "all")
_RESAMPLE = ("scale", "rotate")
_G = {g: i for i, g in enumerate(GROUPS)}


# --------------------------------------------------------------------------------------------- parameters
def _parse_strategy(strategy, arg: str = "strategy") -> tuple[str, ...]:
    if not isinstance(strategy, str):
        raise TypeError(f"{arg} must be a str such as {DEFAULT_STRATEGY!r}, got {type(strategy).__name__}")
    if strategy.strip().lower() in ("", "none"):
        return ()
    names = tuple(strategy.split("_"))
    for name in names:
        if name not in _G:
            raise ValueError(f"{arg}={strategy!r} has unknown group {name!r}; known groups: {', '.join(GROUPS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{arg}={strategy!r} repeats a group; each group may appear once")
    return names


def _split(groups: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Geometric groups before the first scale/rotate (exact on the grid) and from it on (continuous)."""
    geom = [g for g in groups if g != "color"]
    first = next((i for i, g in enumerate(geom) if g in _RESAMPLE), len(geom))
    return geom[:first], geom[first:]


@dataclasses.dataclass
class DSAParams:
    """Drawn DSA parameters; every tensor has a leading batch dim of 1 (shared, siamese) or N (per sample).

    active [B, 6] bool (groups in ``GROUPS`` order); brightness [B] (added offset), saturation [B] and
    contrast [B] (factors); shift [B, 2] int64 crop shift in pixels; centre [B, 2] int64 cutout centre pixel;
    flip [B] bool; scale [B, 2] factors; angle [B] radians. ``strategy`` (normalised group order),
    ``height``/``width`` (the image size the parameters were drawn for) and ``cutout_size`` (pixels) are static.
    """

    strategy: str
    height: int
    width: int
    cutout_size: tuple[int, int]
    active: torch.Tensor
    brightness: torch.Tensor
    saturation: torch.Tensor
    contrast: torch.Tensor
    shift: torch.Tensor
    centre: torch.Tensor
    flip: torch.Tensor
    scale: torch.Tensor
    angle: torch.Tensor

    _TENSORS = ("active", "brightness", "saturation", "contrast", "shift", "centre", "flip", "scale", "angle")

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in self._TENSORS)

    @property
    def batch_size(self) -> int:
        """1 when every tensor is shared across the batch, else the per-sample batch size."""
        return max(t.shape[0] for t in self.tensors())

    @property
    def device(self) -> torch.device:
        return self.active.device

    def to(self, device) -> "DSAParams":
        return dataclasses.replace(self, **{n: getattr(self, n).to(device) for n in self._TENSORS})


def _check_ratios(ratios: Mapping[str, float]) -> dict[str, float]:
    out = dict(DEFAULT_RATIOS)
    for name, value in ratios.items():
        if name not in _RATIO_RANGES:
            raise ValueError(f"unknown DSA ratio {name!r}; known: {', '.join(_RATIO_RANGES)}")
        lo, hi = _RATIO_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= value <= hi):
            raise ValueError(f"ratio {name} must be a number in [{lo}, {hi}], got {value!r}")
        out[name] = float(value)
    return out


def sample_dsa_params(
    batch_size: int,
    strategy: str = DEFAULT_STRATEGY,
    mode: str = "one",
    per_sample: bool = False,
    *,
    height: int,
    width: int,
    device=None,
    generator: torch.Generator | None = None,
    **ratios: float,
) -> DSAParams:
    """Draw DSA parameters on ``device`` without a host sync.

    ``per_sample=False`` draws one set shared by the batch (leading dim 1, siamese use); ``True`` draws
    ``batch_size`` sets. In mode ``"one"`` one group is chosen per call (for the whole batch, as the original);
    in mode ``"all"`` every group of ``strategy`` is active ("color" must then come first). ``ratios``: any of
    brightness, saturation, contrast, crop, cutout, flip (probability), scale, rotate (degrees); see
    ``DEFAULT_RATIOS``.

    Cost: one ``torch.rand((B, 12))`` call on ``generator`` and ~15 small device ops (constants are cached per
    configuration). Every field is an affine or floor/clamp map of its own column of that draw (the group pick
    of mode "one" is column 11 of row 0), so the fields are independent with the distributions of the module
    docstring; the returned tensors may be views of one [B, 12] buffer.
    """
    groups = _parse_strategy(strategy)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise ValueError(f"{name} must be an int >= 2, got {v!r}")
    if mode == "all" and "color" in groups and groups[0] != "color":
        raise ValueError(
            f"strategy={strategy!r}: in mode='all' 'color' must be the first group (the fused op "
            "applies colour before the geometric groups)"
        )
    r = _check_ratios(ratios)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device} but device is {device}")
    B = batch_size if per_sample else 1
    H, W = height, width
    cut = (int(H * r["cutout"] + 0.5), int(W * r["cutout"] + 0.5))
    scl, off, cap, sub, pos = _sample_constants(device, H, W, tuple(sorted(r.items())), groups, mode)
    # One draw u ~ U[0, 1)^(B x 12); column j is turned into field j by f = u * scl + off (module docstring):
    # 0 brightness, 1 saturation, 2 contrast, 3 flip (u < p), 4-5 scale, 6 angle, 7-8 crop shift, 9-10 cutout
    # centre and 11 the group pick of mode "one" (row 0 only): integers, floor clamped below the count.
    u = torch.rand((B, 12), device=device, generator=generator)
    f = torch.addcmul(off, u, scl)
    ints = torch.minimum(f.long(), cap) - sub  # floor (f >= 0 in the integer columns), clamped below the count
    if mode == "one":
        active = ints.narrow(0, 0, 1).narrow(1, 11, 1) == pos
    else:
        active = pos >= 0
    return DSAParams(
        "_".join(groups),
        H,
        W,
        cut,
        active,
        f.select(1, 0),
        f.select(1, 1),
        f.select(1, 2),
        ints.narrow(1, 7, 2),
        ints.narrow(1, 9, 2),
        u.select(1, 3) < r["flip"],
        f.narrow(1, 4, 2),
        f.select(1, 6),
    )


_SAMPLE_CACHE: "collections.OrderedDict[tuple, tuple[torch.Tensor, ...]]" = collections.OrderedDict()


def _sample_constants(device: torch.device, H: int, W: int, ratios: tuple, groups: tuple[str, ...], mode: str):
    """Device constants of ``sample_dsa_params`` (built once per configuration; never returned to the caller):
    scl/off [12] of f = u * scl + off, cap/sub [12] int64 of the integer columns (min(floor(f), cap) - sub),
    pos [1, 6] int64 (position of each group in the strategy, -1 when absent)."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (device, H, W, ratios, groups, mode)
    hit = _SAMPLE_CACHE.get(key)
    if hit is not None:
        _SAMPLE_CACHE.move_to_end(key)
        return hit
    r = dict(ratios)
    lo = 1.0 / r["scale"]
    rot = 2.0 * r["rotate"] * math.pi / 180.0
    m = (int(H * r["crop"] + 0.5), int(W * r["crop"] + 0.5))  # max crop shift per axis
    cut = (int(H * r["cutout"] + 0.5), int(W * r["cutout"] + 0.5))
    n_centre = (H + 1 - cut[0] % 2, W + 1 - cut[1] % 2)  # centres 0..n-1 keep the box's centre on the image
    scl = [
        r["brightness"],
        r["saturation"],
        1.0,
        1.0,
        r["scale"] - lo,
        r["scale"] - lo,
        rot,
        2 * m[0] + 1,
        2 * m[1] + 1,
        n_centre[0],
        n_centre[1],
        float(len(groups) if mode == "one" else 0),
    ]
    off = [-0.5 * r["brightness"], 0.0, r["contrast"], 0.0, lo, lo, -0.5 * rot, 0.0, 0.0, 0.0, 0.0, 0.0]
    pos = [groups.index(g) if g in groups else -1 for g in GROUPS]
    big = 2**62  # columns that are not integer fields: no clamp (their values are unused)
    cap = [big] * 7 + [2 * m[0], 2 * m[1], n_centre[0] - 1, n_centre[1] - 1, max(len(groups) - 1, 0)]
    sub = [0] * 7 + [m[0], m[1], 0, 0, 0]
    out = (
        torch.tensor(scl, device=device),
        torch.tensor(off, device=device),
        torch.tensor(cap, device=device),
        torch.tensor(sub, device=device),
        torch.tensor([pos], device=device),
    )
    _SAMPLE_CACHE[key] = out
    if len(_SAMPLE_CACHE) > 64:
        _SAMPLE_CACHE.popitem(last=False)
    return out


# --------------------------------------------------------------------------------------------- validation
def _check_x(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D NCHW batch, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got {x.dtype}")
    if x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"x must have height and width >= 2, got {tuple(x.shape[2:])}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(
            f"x must hold at least one image with at least one channel (N, C >= 1), got shape {tuple(x.shape)}"
        )


_FIELD_SPECS = {  # name: (trailing shape, kind)
    "active": ((len(GROUPS),), "bool"),
    "brightness": ((), "float"),
    "saturation": ((), "float"),
    "contrast": ((), "float"),
    "shift": ((2,), "int"),
    "centre": ((2,), "int"),
    "flip": ((), "bool"),
    "scale": ((2,), "float"),
    "angle": ((), "float"),
}


def _check_params(params, x: torch.Tensor) -> None:
    if not isinstance(params, DSAParams):
        raise TypeError(f"params must be a DSAParams (from sample_dsa_params), got {type(params).__name__}")
    _parse_strategy(params.strategy, "params.strategy")
    N, _, H, W = x.shape
    if (params.height, params.width) != (H, W):
        raise ValueError(f"params were drawn for {params.height}x{params.width} images but x is {H}x{W}")
    for name in DSAParams._TENSORS:
        t = getattr(params, name)
        tail, kind = _FIELD_SPECS[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"params.{name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 1 + len(tail) or tuple(t.shape[1:]) != tail or t.shape[0] not in (1, N):
            raise ValueError(
                f"params.{name} must have shape [1 or {N}, {', '.join(map(str, tail))}] "
                f"(batch dim 1 or x's batch size), got {tuple(t.shape)}".replace(", ]", "]")
            )
        ok = {
            "bool": t.dtype == torch.bool,
            "int": not t.is_floating_point() and t.dtype != torch.bool,
            "float": t.is_floating_point(),
        }[kind]
        if not ok:
            raise TypeError(f"params.{name} must be a {kind} tensor, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"params.{name} is on {t.device} but x is on {x.device}; use params.to(x.device)")


# --------------------------------------------------------------------------------------------- reference
def _rows(t: torch.Tensor, N: int) -> torch.Tensor:
    return t.expand(N, *t.shape[1:])


def _shift_zero(y: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """out[n, :, i, j] = y[n, :, i + dy[n], j + dx[n]], zero outside."""
    N, C, H, W = y.shape
    ri = torch.arange(H, device=y.device).view(1, H) + dy.view(N, 1)
    ci = torch.arange(W, device=y.device).view(1, W) + dx.view(N, 1)
    rv = (ri >= 0) & (ri < H)
    cv = (ci >= 0) & (ci < W)
    y = y.gather(2, ri.clamp(0, H - 1).view(N, 1, H, 1).expand(N, C, H, W))
    y = y.gather(3, ci.clamp(0, W - 1).view(N, 1, 1, W).expand(N, C, H, W))
    return y * (rv.view(N, 1, H, 1) & cv.view(N, 1, 1, W)).to(y.dtype)


def _in_box(u, v, centre, cut, N):
    lo_y = (centre[:, 0] - cut[0] // 2).view(N, 1, 1)
    lo_x = (centre[:, 1] - cut[1] // 2).view(N, 1, 1)
    return (v >= lo_y) & (v <= lo_y + cut[0] - 1) & (u >= lo_x) & (u <= lo_x + cut[1] - 1)


def _bilinear(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Sample y [N, C, H, W] at pixel coordinates (u: column, v: row) [N, H, W], zero outside."""
    N, C, H, W = y.shape
    x0 = torch.floor(u)
    y0 = torch.floor(v)
    fx = u - x0
    fy = v - y0
    flat = y.reshape(N, C, H * W)
    out = torch.zeros_like(y)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        qx = x0 + dx
        qy = y0 + dy
        valid = (qx >= 0) & (qx <= W - 1) & (qy >= 0) & (qy <= H - 1)
        w = (fx if dx else 1 - fx) * (fy if dy else 1 - fy) * valid.to(y.dtype)
        idx = (qy.clamp(0, H - 1) * W + qx.clamp(0, W - 1)).long().view(N, 1, H * W).expand(N, C, H * W)
        out = out + flat.gather(2, idx).view(N, C, H, W) * w.unsqueeze(1)
    return out


def _reference_impl(
    x, active, brightness, saturation, contrast, shift, centre, flip, scale, angle, strategy, cut_h, cut_w
):
    N, C, H, W = x.shape
    groups = _parse_strategy(strategy)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = x.to(cdt)
    act = _rows(active, N)
    A = {g: act[:, _G[g]] for g in GROUPS}
    cut = (cut_h, cut_w)
    if "color" in groups:
        b = _rows(brightness, N).to(cdt).view(N, 1, 1, 1)
        s = _rows(saturation, N).to(cdt).view(N, 1, 1, 1)
        k = _rows(contrast, N).to(cdt).view(N, 1, 1, 1)
        z = y + b
        m = z.mean(1, keepdim=True)
        z = (z - m) * s + m
        m = z.mean((1, 2, 3), keepdim=True)
        z = (z - m) * k + m
        y = torch.where(A["color"].view(N, 1, 1, 1), z, y)
    shift = _rows(shift, N)
    centre = _rows(centre, N)
    flip = _rows(flip, N)
    pre, post = _split(groups)
    for g in pre:
        a = A[g]
        if g == "crop":
            y = _shift_zero(y, shift[:, 0] * a, shift[:, 1] * a)
        elif g == "cutout":
            u = torch.arange(W, device=x.device).view(1, 1, W)
            v = torch.arange(H, device=x.device).view(1, H, 1)
            hole = _in_box(u, v, centre, cut, N) & a.view(N, 1, 1)
            y = y * (~hole).unsqueeze(1).to(cdt)
        elif g == "flip":
            y = torch.where((a & flip).view(N, 1, 1, 1), y.flip(3), y)
    # post stages: walk back from the output pixel grid to pre-space coordinates
    u = torch.arange(W, device=x.device, dtype=cdt).view(1, 1, W).expand(N, H, W)
    v = torch.arange(H, device=x.device, dtype=cdt).view(1, H, 1).expand(N, H, W)
    keep = torch.ones((N, H, W), dtype=torch.bool, device=x.device)
    cx, cy = (W - 1) / 2.0, (H - 1) / 2.0
    for g in reversed(post):
        a = A[g].view(N, 1, 1)
        if g == "scale":
            sc = _rows(scale, N).to(cdt)
            sy = torch.where(a, sc[:, 0].view(N, 1, 1), 1.0)
            sx = torch.where(a, sc[:, 1].view(N, 1, 1), 1.0)
            u, v = cx + sx * (u - cx), cy + sy * (v - cy)
        elif g == "rotate":
            th = torch.where(a, _rows(angle, N).to(cdt).view(N, 1, 1), 0.0)
            c, s = torch.cos(th), torch.sin(th)
            du, dv = u - cx, v - cy
            u, v = cx + c * du - s * (cx / cy) * dv, cy + s * (cy / cx) * du + c * dv
        elif g == "flip":
            u = torch.where(a & flip.view(N, 1, 1), (W - 1) - u, u)
        elif g == "crop":
            u = u + (shift[:, 1].view(N, 1, 1) * a).to(cdt)
            v = v + (shift[:, 0].view(N, 1, 1) * a).to(cdt)
            keep = keep & (((u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1)) | ~a)
        elif g == "cutout":
            keep = keep & ~(_in_box(u, v, centre, cut, N) & a)
    out = _bilinear(y, u, v) * keep.unsqueeze(1).to(cdt)
    return out.to(x.dtype)


def diff_augment_reference(x: torch.Tensor, params: DSAParams) -> torch.Tensor:
    """Plain PyTorch DSA with the fused semantics (module docstring); differentiable w.r.t. x [N, C, H, W]."""
    _check_x(x)
    _check_params(params, x)
    return _reference_impl(x, *params.tensors(), params.strategy, *params.cutout_size)


# --------------------------------------------------------------------------------------------- original style
def diff_augment_sequential(x: torch.Tensor, params: DSAParams) -> torch.Tensor:
    """Original-style DSA: each transform a separate pass (scale/rotate via affine_grid + grid_sample).

    Shared group choices are read on the host (a sync, as the original); per-sample ones use ``torch.where``.
    Equals :func:`diff_augment_reference` when one group is active per image (mode "one").
    """
    _check_x(x)
    _check_params(params, x)
    N, C, H, W = x.shape
    groups = _parse_strategy(params.strategy)
    act = params.active
    shared = act.shape[0] == 1
    col = lambda t: _rows(t, N).view(N, 1, 1, 1).to(x.dtype)  # noqa: E731
    shift, centre = _rows(params.shift, N), _rows(params.centre, N)

    def crop(x):
        gb, gi, gj = torch.meshgrid(
            torch.arange(N, device=x.device),
            torch.arange(H, device=x.device),
            torch.arange(W, device=x.device),
            indexing="ij",
        )
        gi = torch.clamp(gi + shift[:, 0].view(N, 1, 1) + 1, 0, H + 1)
        gj = torch.clamp(gj + shift[:, 1].view(N, 1, 1) + 1, 0, W + 1)
        xp = F.pad(x, [1, 1, 1, 1])
        return xp.permute(0, 2, 3, 1)[gb, gi, gj].permute(0, 3, 1, 2)

    def cutout(x):
        ch, cw = params.cutout_size
        gb, gi, gj = torch.meshgrid(
            torch.arange(N, device=x.device),
            torch.arange(ch, device=x.device),
            torch.arange(cw, device=x.device),
            indexing="ij",
        )
        gi = torch.clamp(gi + centre[:, 0].view(N, 1, 1) - ch // 2, 0, H - 1)
        gj = torch.clamp(gj + centre[:, 1].view(N, 1, 1) - cw // 2, 0, W - 1)
        mask = torch.ones((N, H, W), dtype=x.dtype, device=x.device)
        mask[gb, gi, gj] = 0
        return x * mask.unsqueeze(1)

    def resample(x, theta):
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def scale(x):
        s = _rows(params.scale, N)
        z = torch.zeros_like(s[:, 0])
        theta = torch.stack([torch.stack([s[:, 1], z, z], 1), torch.stack([z, s[:, 0], z], 1)], 1)
        return resample(x, theta)

    def rotate(x):
        a = _rows(params.angle, N)
        z = torch.zeros_like(a)
        theta = torch.stack(
            [torch.stack([torch.cos(a), torch.sin(-a), z], 1), torch.stack([torch.sin(a), torch.cos(a), z], 1)], 1
        )
        return resample(x, theta)

    def color(x):
        x = x + col(params.brightness)
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * col(params.saturation) + m
        m = x.mean(dim=[1, 2, 3], keepdim=True)
        return (x - m) * col(params.contrast) + m

    fns = {
        "color": color,
        "crop": crop,
        "cutout": cutout,
        "scale": scale,
        "rotate": rotate,
        "flip": lambda x: torch.where(_rows(params.flip, N).view(N, 1, 1, 1), x.flip(3), x),
    }
    for g in groups:
        if shared:
            if not bool(act[0, _G[g]]):
                continue
            x = fns[g](x)
        else:
            x = torch.where(act[:, _G[g]].view(N, 1, 1, 1), fns[g](x), x)
    return x


# --------------------------------------------------------------------------------------------- kernel table
def _kernel_table(
    active, brightness, saturation, contrast, shift, centre, flip, scale, angle, strategy, cut_h, cut_w, H, W, dtype
):
    """Per-image coefficients of the fused kernel (the first 34 columns of ``pydistill.kernels.diff_augment.COLS``)
    with plain torch ops: the readable specification of ``_diff_augment_table_kernel``, which tests compare it with."""
    groups = _parse_strategy(strategy)
    pre, post = _split(groups)
    ts = (active, brightness, saturation, contrast, shift, centre, flip, scale, angle)
    B = max(t.shape[0] for t in ts)
    dev = active.device
    act = _rows(active, B)
    A = {g: act[:, _G[g]] for g in GROUPS}
    one = torch.ones(B, dtype=dtype, device=dev)
    zero = torch.zeros(B, dtype=dtype, device=dev)
    shift = _rows(shift, B).to(dtype)
    centre = _rows(centre, B).to(dtype)
    flip = _rows(flip, B)
    if "color" in groups:
        a = A["color"]
        b = torch.where(a, _rows(brightness, B).to(dtype), zero)
        s = torch.where(a, _rows(saturation, B).to(dtype), one)
        k = torch.where(a, _rows(contrast, B).to(dtype), one)
    else:
        b, s, k = zero, one, one
    colour = [k * s, k * (1 - s), b, 1 - k]
    # pre stages, walked back from q to the source pixel: src = (fx*qx + ox, qy + oy)
    fx, ox, oy = one, zero, zero
    fk, kx, ky = one, zero, zero
    for g in reversed(pre):
        a = A[g]
        if g == "flip":
            f = a & flip
            fx, ox = torch.where(f, -fx, fx), torch.where(f, (W - 1) - ox, ox)
        elif g == "crop":
            ox = ox + torch.where(a, shift[:, 1], zero)
            oy = oy + torch.where(a, shift[:, 0], zero)
        elif g == "cutout":
            fk, kx, ky = fx, ox, oy
    # post stages, walked back from the output pixel p: homogeneous 3x3 maps
    T = torch.eye(3, dtype=dtype, device=dev).expand(B, 3, 3)
    crop_aff = torch.zeros(B, 6, dtype=dtype, device=dev)
    cut_aff = torch.zeros(B, 6, dtype=dtype, device=dev)
    crop_act = zero
    cx, cy = (W - 1) / 2.0, (H - 1) / 2.0

    def mat(r0, r1):
        return torch.stack([torch.stack(r0, 1), torch.stack(r1, 1), torch.stack([zero, zero, one], 1)], 1)

    for g in reversed(post):
        a = A[g]
        if g == "scale":
            sc = _rows(scale, B).to(dtype)
            sy, sx = torch.where(a, sc[:, 0], one), torch.where(a, sc[:, 1], one)
            M = mat([sx, zero, cx - sx * cx], [zero, sy, cy - sy * cy])
        elif g == "rotate":
            th = torch.where(a, _rows(angle, B).to(dtype), zero)
            c, s_ = torch.cos(th), torch.sin(th)
            M = mat([c, -s_ * (cx / cy), cx - c * cx + s_ * cx], [s_ * (cy / cx), c, cy - s_ * cy - c * cy])
        elif g == "flip":
            f = (a & flip).to(dtype)
            M = mat([1 - 2 * f, zero, f * (W - 1)], [zero, one, zero])
        elif g == "crop":
            M = mat([one, zero, torch.where(a, shift[:, 1], zero)], [zero, one, torch.where(a, shift[:, 0], zero)])
        else:  # cutout: tested on the current coordinates, no move
            cut_aff = T[:, :2, :].reshape(B, 6)
            continue
        T = torch.bmm(M, T)
        if g == "crop":
            crop_aff = T[:, :2, :].reshape(B, 6)
            crop_act = a.to(dtype)
    lo_y = centre[:, 0] - cut_h // 2
    lo_x = centre[:, 1] - cut_w // 2
    cut_act = A["cutout"].to(dtype) if "cutout" in groups else zero
    empty = cut_act == 0  # an empty box (lo > hi) switches the cutout off
    lo_y, lo_x = torch.where(empty, one, lo_y), torch.where(empty, one, lo_x)
    hi_y = torch.where(empty, zero, lo_y + cut_h - 1)
    hi_x = torch.where(empty, zero, lo_x + cut_w - 1)
    cols = [
        T[:, :2, :].reshape(B, 6),
        torch.stack([fx, ox, oy], 1),
        crop_aff,
        crop_act.view(B, 1),
        cut_aff,
        torch.stack([fk, kx, ky, cut_act, lo_y, hi_y, lo_x, hi_x], 1),
        torch.stack(colour, 1),
    ]
    table = torch.cat(cols, 1).contiguous()
    flags = {"has_cut": "cutout" in groups, "cut_pre": "cutout" in pre, "crop_post": "crop" in post}
    return table, flags


# --------------------------------------------------------------------------------------------- triton ops
@functools.lru_cache(maxsize=256)
def _triton_spec(strategy: str) -> tuple[dict, dict]:
    """Static launch arguments of a strategy: (forward/backward flags, table-kernel constexprs)."""
    groups = _parse_strategy(strategy)
    pre, post = _split(groups)
    flags = {"has_cut": "cutout" in groups, "cut_pre": "cutout" in pre, "crop_post": "crop" in post}
    table = {
        "has_color": "color" in groups,
        "has_cut": "cutout" in groups,
        "pre": _tk.encode_stages([_STAGE[g] for g in reversed(pre)]),
        "post": _tk.encode_stages([_STAGE[g] for g in reversed(post)]),
    }
    return flags, table


_HAS_TRITON_KERNELS = False
if _backend.has_triton():
    try:
        from pydistill.kernels import diff_augment as _tk

        _STAGE = {
            "crop": _tk.STAGE_CROP,
            "cutout": _tk.STAGE_CUTOUT,
            "flip": _tk.STAGE_FLIP,
            "scale": _tk.STAGE_SCALE,
            "rotate": _tk.STAGE_ROTATE,
        }
        _HAS_TRITON_KERNELS = True
    except ImportError:  # pragma: no cover - triton present but unusable
        _HAS_TRITON_KERNELS = False


def _assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without importing ``torch._dynamo`` (the decorator only sets
    this flag, which torch.compile reads when it traces)."""
    fn._dynamo_marked_constant = True
    return fn


_HAS_TRITON_OPS: bool | None = None  # None: not registered yet


@_assume_constant_result
def _triton_ops_ready() -> bool:
    """Register the ``triton_op`` wrappers on first use; True when they are available. Registering imports
    ``torch._inductor`` (~1.4 s of CPU), which a CPU run never needs: at import time every process importing
    ``pydistill.ops`` paid it (the first DC/DSA/DM iteration, not the official loops)."""
    global _HAS_TRITON_OPS
    if _HAS_TRITON_OPS is not None:
        return _HAS_TRITON_OPS
    _HAS_TRITON_OPS = False
    if not _HAS_TRITON_KERNELS:
        return False
    try:
        from torch.library import triton_op
    except ImportError:  # pragma: no cover
        return False

    @triton_op("pydistill::diff_augment_triton_table", mutates_args={})
    def _triton_table_op(
        x: torch.Tensor,
        active: torch.Tensor,
        brightness: torch.Tensor,
        saturation: torch.Tensor,
        contrast: torch.Tensor,
        shift: torch.Tensor,
        centre: torch.Tensor,
        flip: torch.Tensor,
        scale: torch.Tensor,
        angle: torch.Tensor,
        strategy: str,
        cut_h: int,
        cut_w: int,
        mean: bool,
    ) -> torch.Tensor:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        return _tk.diff_augment_table(
            x,
            (active, brightness, saturation, contrast, shift, centre, flip, scale, angle),
            cut_h=cut_h,
            cut_w=cut_w,
            mean=mean,
            dtype=acc,
            **_triton_spec(strategy)[1],
        )

    @triton_op("pydistill::diff_augment_triton_fwd", mutates_args={})
    def _triton_fwd(
        x: torch.Tensor, table: torch.Tensor, has_cut: bool, cut_pre: bool, crop_post: bool
    ) -> torch.Tensor:
        return _tk.diff_augment_fwd(x, table, has_cut=has_cut, cut_pre=cut_pre, crop_post=crop_post)

    @triton_op("pydistill::diff_augment_triton_bwd", mutates_args={})
    def _triton_bwd(
        grad: torch.Tensor, table: torch.Tensor, has_cut: bool, cut_pre: bool, crop_post: bool
    ) -> torch.Tensor:
        # the table's scratch columns are overwritten: work on a private copy (the eager path passes its own)
        return _tk.diff_augment_bwd(grad, table.clone(), has_cut=has_cut, cut_pre=cut_pre, crop_post=crop_post)

    _HAS_TRITON_OPS = True
    return True


def _triton_table(x, tensors, strategy, cut_h, cut_w, mean: bool):
    """The coefficient table [N, width] (one launch, no host sync) from the raw parameter tensors."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return _tk.diff_augment_table(
        x, tensors, cut_h=cut_h, cut_w=cut_w, mean=mean, dtype=acc, **_triton_spec(strategy)[1]
    )


def _triton_forward(x, tensors, strategy, cut_h, cut_w, direct: bool = False):
    """Fused forward: table launch + forward launch. ``direct`` (eager fast path) launches without the
    triton_op dispatch and also returns the table and flags, for the backward to reuse."""
    x = x.contiguous()
    flags = _triton_spec(strategy)[0]
    if direct:
        table = _triton_table(x, tensors, strategy, cut_h, cut_w, True)
        return _tk.diff_augment_fwd(x, table, **flags), table, flags
    table = torch.ops.pydistill.diff_augment_triton_table(x, *tensors, strategy, cut_h, cut_w, True)
    return torch.ops.pydistill.diff_augment_triton_fwd(x, table, **flags)


def _triton_backward(grad, tensors, strategy, cut_h, cut_w):
    grad = grad.contiguous()
    flags = _triton_spec(strategy)[0]
    table = _triton_table(grad, tensors, strategy, cut_h, cut_w, False)  # fresh, so scratch use is private
    return _tk.diff_augment_bwd(grad, table, **flags)


def _reference_backward(grad, tensors, strategy, cut_h, cut_w):
    # the map is affine in x, so its vjp does not depend on x: take it at zero (torch.func works below autograd)
    _, vjp = torch.func.vjp(lambda z: _reference_impl(z, *tensors, strategy, cut_h, cut_w), torch.zeros_like(grad))
    return vjp(grad)[0].contiguous()


# --------------------------------------------------------------------------------------------- custom op
@torch.library.custom_op("pydistill::diff_augment", mutates_args=())
def _diff_augment_op(
    x: torch.Tensor,
    active: torch.Tensor,
    brightness: torch.Tensor,
    saturation: torch.Tensor,
    contrast: torch.Tensor,
    shift: torch.Tensor,
    centre: torch.Tensor,
    flip: torch.Tensor,
    scale: torch.Tensor,
    angle: torch.Tensor,
    strategy: str,
    cut_h: int,
    cut_w: int,
    backend: str,
) -> torch.Tensor:
    tensors = (active, brightness, saturation, contrast, shift, centre, flip, scale, angle)
    if backend == "triton":
        return _triton_forward(x, tensors, strategy, cut_h, cut_w)
    return _reference_impl(x, *tensors, strategy, cut_h, cut_w).contiguous()


def _check_fake(op: str, name: str, x, tensors) -> None:
    """Fake-kernel checks (``torch._check``) of a batch ``x`` [N, C, H, W] (floating) and the DSA parameter
    tensors (``DSAParams._TENSORS`` order): the shapes, dtype kinds and device ``_check_params`` requires."""
    torch._check(x.dim() == 4, lambda: f"{op}: {name} must be a 4-D NCHW batch, got shape {tuple(x.shape)}")
    torch._check(x.is_floating_point(), lambda: f"{op}: {name} must be a floating tensor, got {x.dtype}")
    N = x.shape[0]
    for field, t in zip(DSAParams._TENSORS, tensors):
        tail, kind = _FIELD_SPECS[field]
        torch._check(
            t.dim() == 1 + len(tail) and tuple(t.shape[1:]) == tail and (t.shape[0] == 1 or t.shape[0] == N),
            lambda field=field, t=t, tail=tail: (
                f"{op}: {field} must have shape [1 or {N}{''.join(f', {d}' for d in tail)}], got {tuple(t.shape)}"
            ),
        )
        ok = {
            "bool": t.dtype == torch.bool,
            "int": not t.is_floating_point() and t.dtype != torch.bool,
            "float": t.is_floating_point(),
        }[kind]
        torch._check(ok, lambda field=field, t=t, kind=kind: f"{op}: {field} must be a {kind} tensor, got {t.dtype}")
        torch._check(
            t.device == x.device, lambda field=field, t=t: f"{op}: {field} is on {t.device} but {name} is on {x.device}"
        )


@_diff_augment_op.register_fake
def _(x, active, brightness, saturation, contrast, shift, centre, flip, scale, angle, strategy, cut_h, cut_w, backend):
    _check_fake("diff_augment", "x", x, (active, brightness, saturation, contrast, shift, centre, flip, scale, angle))
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("pydistill::diff_augment_backward", mutates_args=())
def _diff_augment_backward_op(
    grad: torch.Tensor,
    active: torch.Tensor,
    brightness: torch.Tensor,
    saturation: torch.Tensor,
    contrast: torch.Tensor,
    shift: torch.Tensor,
    centre: torch.Tensor,
    flip: torch.Tensor,
    scale: torch.Tensor,
    angle: torch.Tensor,
    strategy: str,
    cut_h: int,
    cut_w: int,
    backend: str,
) -> torch.Tensor:
    """grad_x = L^T grad of the (affine in x) DSA map."""
    tensors = (active, brightness, saturation, contrast, shift, centre, flip, scale, angle)
    if backend == "triton":
        return _triton_backward(grad, tensors, strategy, cut_h, cut_w)
    return _reference_backward(grad, tensors, strategy, cut_h, cut_w)


@_diff_augment_backward_op.register_fake
def _(
    grad, active, brightness, saturation, contrast, shift, centre, flip, scale, angle, strategy, cut_h, cut_w, backend
):
    _check_fake(
        "diff_augment_backward",
        "grad",
        grad,
        (active, brightness, saturation, contrast, shift, centre, flip, scale, angle),
    )
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[1:10])
    ctx.static = inputs[10:]


def _backward(ctx, grad):
    gx = torch.ops.pydistill.diff_augment_backward(grad, *ctx.saved_tensors, *ctx.static)
    return (gx,) + (None,) * 13


_diff_augment_op.register_autograd(_backward, setup_context=_setup_context)


def _bwd_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[1:10])
    ctx.static = inputs[10:]


def _bwd_backward(ctx, gg):
    # d(L^T g)/dg applied to gg is the linear part of the forward map: f(gg) - f(0)
    tensors = ctx.saved_tensors
    out = torch.ops.pydistill.diff_augment(gg, *tensors, *ctx.static)
    out0 = torch.ops.pydistill.diff_augment(torch.zeros_like(gg), *tensors, *ctx.static)
    return (out - out0,) + (None,) * 13


_diff_augment_backward_op.register_autograd(_bwd_backward, setup_context=_bwd_setup_context)


# --------------------------------------------------------------------------------------------- eager fast path
class _EagerDiffAugment(torch.autograd.Function):
    """Same forward/backward as ``pydistill::diff_augment`` (+ its registered autograd), in eager mode."""

    @staticmethod
    def forward(ctx, x, strategy, cut_h, cut_w, backend, *tensors):
        table = flags = None
        if backend == "triton":
            out, table, flags = _triton_forward(x, tensors, strategy, cut_h, cut_w, direct=True)
        else:
            out = _reference_impl(x, *tensors, strategy, cut_h, cut_w).contiguous()
        ctx.save_for_backward(*tensors)
        ctx.static = (strategy, cut_h, cut_w, backend)
        ctx.table, ctx.flags = table, flags  # derived from the saved params only (no reference to x)
        return out

    @staticmethod
    def backward(ctx, grad):
        tensors = ctx.saved_tensors
        strategy, cut_h, cut_w, backend = ctx.static
        if not ctx.needs_input_grad[0]:
            gx = None
        elif torch.is_grad_enabled():  # create_graph=True: the registered op (same double-backward behaviour)
            gx = torch.ops.pydistill.diff_augment_backward(grad, *tensors, *ctx.static)
        elif backend == "triton":
            gx = _tk.diff_augment_bwd(grad.contiguous(), ctx.table, **ctx.flags)
        else:
            gx = _reference_backward(grad, tensors, strategy, cut_h, cut_w)
        return (gx,) + (None,) * (4 + len(tensors))


# --------------------------------------------------------------------------------------------- public
@_assume_constant_result
def _resolve(backend: str, device_type: str) -> str:
    # host-side choice; a constant for torch.compile (no tracing into the backend probes)
    return _backend.resolve(backend, torch.device(device_type), available=("triton", "reference"))


def diff_augment(
    x: torch.Tensor,
    strategy: str = DEFAULT_STRATEGY,
    *,
    params: DSAParams | None = None,
    mode: str = "one",
    per_sample: bool = False,
    generator: torch.Generator | None = None,
    return_params: bool = False,
    backend: str = "auto",
    ratios: Mapping[str, float] | None = None,
):
    """Differentiable Siamese Augmentation of x [N, C, H, W] (float), differentiable w.r.t. x.

    Without ``params``, draws them on x's device (``sample_dsa_params(N, strategy, mode, per_sample, ...)``
    with ``ratios``); with ``params`` (e.g. returned for the real batch with ``return_params=True``) applies
    exactly those (``strategy``/``mode``/``per_sample``/``ratios`` are then ignored): shared params (batch dim
    1) apply the same transform to a batch of any size. Returns x_aug [N, C, H, W] (and the params).
    ``backend="auto"``: Triton on a GPU; on the CPU the reference, or, for one shared group, that group's own
    pass (:func:`diff_augment_sequential`, equal to the reference there).
    """
    _check_x(x)
    if not isinstance(return_params, bool):
        raise TypeError(f"return_params must be a bool, got {type(return_params).__name__}")
    N, _, H, W = x.shape
    if params is None:
        if not isinstance(per_sample, bool):
            raise TypeError(f"per_sample must be a bool, got {type(per_sample).__name__}")
        if ratios is not None and not isinstance(ratios, Mapping):
            raise TypeError(f"ratios must be a mapping such as {{'scale': 1.2}}, got {type(ratios).__name__}")
        params = sample_dsa_params(
            N, strategy, mode, per_sample, height=H, width=W, device=x.device, generator=generator, **dict(ratios or {})
        )
    else:
        _check_params(params, x)
    be = _resolve(backend, x.device.type)
    if (
        backend == "auto"
        and be == "triton"
        and (x.dtype == torch.float64 or torch.are_deterministic_algorithms_enabled())
    ):
        # deterministic mode: the Triton backward scatters with atomics, the reference does not.
        # fp64 is for checking, not speed; Triton 3.6 fails to compile the fp64 backward on sm_90 (layout bug).
        be = "reference"
    if be == "triton" and not _triton_ops_ready():
        raise RuntimeError("backend='triton': the Triton kernels of diff_augment could not be loaded")
    tensors = params.tensors()
    eager = _backend.plain_eager((x, *tensors))
    if (
        eager
        and backend == "auto"
        and be == "reference"
        and x.device.type == "cpu"
        and params.active.shape[0] == 1
        and int(params.active.sum()) <= 1
    ):
        # CPU, one shared group (mode "one", the DC/DSA/DM default): the separate pass of that group alone is
        # exact (see diff_augment_sequential) and 3-5x faster on a CPU than the fused all-groups reference
        # (benchmarks/results/2026-11-23-cpu-ops.md). Reading `active` is free on the CPU (no device sync).
        out = diff_augment_sequential(x, params)
    elif eager:
        out = _EagerDiffAugment.apply(x, params.strategy, params.cutout_size[0], params.cutout_size[1], be, *tensors)
    else:
        out = torch.ops.pydistill.diff_augment(
            x, *tensors, params.strategy, params.cutout_size[0], params.cutout_size[1], be
        )
    return (out, params) if return_params else out
