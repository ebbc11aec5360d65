"""Translate the official DSA draws (``DiffAugment(x, strategy, seed=s)`` in Siamese mode "S") into
pydistill ``DSAParams``, and compare the two augmentations group by group.

The official code re-seeds the global torch RNG before each draw (seed s picks the group, s+1, s+2, ... its
parameters, first sample's values shared by the batch); this module replays those draws in the same order and
dtypes and fills pydistill's fields: colour offsets/factors, crop shift (H, W), cutout centre (H, W), flip,
scale factors (H, W) and rotation angle. The official scale/rotate call ``affine_grid``/``grid_sample`` with
today's default ``align_corners=False``; ``align_corners=True`` is what they computed under the PyTorch
(< 1.3) the papers ran on, and what pydistill implements. ``official_with_align_corners`` runs the official
functions with that flag fixed, to measure the difference.
"""

from __future__ import annotations

import contextlib
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

from pydistill.ops.diff_augment import GROUPS, DSAParams


def official_group(seed: int, strategy: str) -> str:
    """The group the official mode "S" picks for ``seed``."""
    groups = strategy.split("_")
    torch.random.manual_seed(seed)
    return groups[torch.randint(0, len(groups), size=(1,)).item()]


def params_from_official_seed(
    param,
    seed: int,
    strategy: str,
    n: int,
    h: int,
    w: int,
    dtype=torch.float32,
    all_groups: bool = False,
    per_sample: bool = False,
    field_dtype=torch.float32,
) -> DSAParams:
    """pydistill parameters equal to the official draw ``DiffAugment(x [n, C, h, w], strategy, seed=seed)``.

    ``param``: the official ``ParamDiffAug()``; ``dtype``: x's dtype (the colour draws use it).
    ``all_groups``: the official mode "M" (``param.aug_mode = 'M'``: every group in order, draws from seed on)
    as pydistill's mode "all". ``per_sample``: instead the official unseeded call ``torch.random.manual_seed(seed);
    DiffAugment(x, strategy, param=param)`` (``seed=-1``, as MTT's distill.py: one group for the batch, then
    per-sample draws, all from the global stream without re-seeding), as pydistill per-sample parameters (the
    fields [n], ``active`` [1, 6]). The other draws (non-colour floats) use the default dtype at call time, as
    the official ones. ``field_dtype``: the dtype of the float fields (float64 keeps fp64 draws exact)."""
    g = official_group(seed, strategy) if not all_groups else None  # per_sample: the stream continues from here
    s = seed + 1 if not all_groups else seed
    if per_sample and all_groups:
        torch.random.manual_seed(seed)

    def rnd(*shape, dt=None):
        nonlocal s
        if not per_sample:
            torch.random.manual_seed(s)
        s += 1
        return torch.rand(*shape, dtype=dt) if dt is not None else torch.rand(*shape)

    def rint(lo, hi, shape):
        nonlocal s
        if not per_sample:
            torch.random.manual_seed(s)
        s += 1
        return torch.randint(lo, hi, size=shape)

    b = n if per_sample else 1  # fields per sample, or the first sample's values shared (batch mode)
    fd = dict(dtype=field_dtype)
    bright = torch.zeros(b, **fd)
    sat = torch.ones(b, **fd)
    con = torch.ones(b, **fd)
    shift = torch.zeros(b, 2, dtype=torch.long)
    centre = torch.zeros(b, 2, dtype=torch.long)
    flip = torch.zeros(b, dtype=torch.bool)
    scale = torch.ones(b, 2, **fd)
    angle = torch.zeros(b, **fd)
    todo = strategy.split("_") if all_groups else [g]
    for g in todo:
        _draw_group(g, param, rnd, rint, n, h, w, dtype, bright, sat, con, shift, centre, flip, scale, angle)
    active = torch.tensor([[gg in todo for gg in GROUPS]])
    ch, cw = int(h * param.ratio_cutout + 0.5), int(w * param.ratio_cutout + 0.5)
    return DSAParams(strategy, h, w, (ch, cw), active, bright, sat, con, shift, centre, flip, scale, angle)


def _draw_group(g, param, rnd, rint, n, h, w, dtype, bright, sat, con, shift, centre, flip, scale, angle):
    """The official draws of group ``g`` (in its order) written into pydistill's fields (their first
    ``len(field)`` samples: the first one in batch mode, all n per sample)."""
    b = bright.shape[0]

    def first(t):  # the draw's first b values as a flat vector
        return t.reshape(-1)[:b]

    if g == "color":
        bright[:] = (first(rnd(n, 1, 1, 1, dt=dtype)) - 0.5) * param.brightness
        sat[:] = first(rnd(n, 1, 1, 1, dt=dtype)) * param.saturation
        con[:] = first(rnd(n, 1, 1, 1, dt=dtype)) + param.contrast
    elif g == "crop":
        mh, mw = int(h * param.ratio_crop_pad + 0.5), int(w * param.ratio_crop_pad + 0.5)
        shift[:, 0] = first(rint(-mh, mh + 1, [n, 1, 1]))
        shift[:, 1] = first(rint(-mw, mw + 1, [n, 1, 1]))
    elif g == "cutout":
        ch, cw = int(h * param.ratio_cutout + 0.5), int(w * param.ratio_cutout + 0.5)
        centre[:, 0] = first(rint(0, h + (1 - ch % 2), [n, 1, 1]))
        centre[:, 1] = first(rint(0, w + (1 - cw % 2), [n, 1, 1]))
    elif g == "flip":
        flip[:] = first(rnd(n, 1, 1, 1)) < param.prob_flip
    elif g == "scale":
        r = param.ratio_scale
        sx = first(rnd(n)) * (r - 1.0 / r) + 1.0 / r  # multiplies the horizontal (W) coordinate
        sy = first(rnd(n)) * (r - 1.0 / r) + 1.0 / r
        scale[:, 0], scale[:, 1] = sy, sx
    elif g == "rotate":
        angle[:] = (first(rnd(n)) - 0.5) * 2 * param.ratio_rotate / 180 * float(np.pi)


@contextlib.contextmanager
def official_with_align_corners(utils, align_corners: bool = True):
    """Run the official ``utils`` module's scale/rotate with ``align_corners`` fixed (its ``F`` replaced by a
    shim for the duration); the float32 sampling grid is cast to the images' dtype (float64 runs)."""
    shim = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
    # (MTT's utils passes align_corners=True itself; the flag given here wins)
    shim.affine_grid = lambda theta, size, **kw: F.affine_grid(theta, size, align_corners=align_corners)
    # the official theta (hence grid) is float32; cast it to x's dtype so that float64 runs are possible
    shim.grid_sample = lambda x, grid, **kw: F.grid_sample(x, grid.to(x.dtype), align_corners=align_corners)
    old = utils.F
    utils.F = shim
    try:
        yield
    finally:
        utils.F = old


@contextlib.contextmanager
def pydistill_with_float32_grids():
    """Diagnostic for float64 runs: pydistill's per-op scale/rotate (``diff_augment_sequential``) build their
    sampling grid from the float32-rounded theta in float32, then cast it back, as the official code does
    (``torch.tensor(theta, dtype=torch.float)``, float32 ``affine_grid``); only the grid's rounding changes."""
    da = sys.modules["pydistill.ops.diff_augment"]
    shim = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
    shim.affine_grid = lambda theta, size, **kw: F.affine_grid(theta.float(), size, **kw).to(theta.dtype)
    old = da.F
    da.F = shim
    try:
        yield
    finally:
        da.F = old


@contextlib.contextmanager
def pydistill_standard_layout():
    """Diagnostic: pydistill's per-op DSA (``diff_augment_sequential``) returns its result in the standard
    layout, as :func:`standard_layout` gives the official's; values are unchanged, only the memory layout the
    network's first convolution sees (the crop of 1-channel images is otherwise also channels-last)."""
    da = sys.modules["pydistill.ops.diff_augment"]
    orig = da.diff_augment_sequential
    da.diff_augment_sequential = lambda x, params: standard_layout(orig(x, params))
    try:
        yield
    finally:
        da.diff_augment_sequential = orig


def standard_layout(x: torch.Tensor) -> torch.Tensor:
    """x in the standard (NCHW-contiguous) layout. The official crop returns, for 1-channel images, a tensor
    PyTorch also reads as channels-last, and the official networks' ``view`` then fails on today's PyTorch;
    the values are unchanged."""
    return x.clone(memory_format=torch.contiguous_format)


def compare_groups(utils, x: torch.Tensor, seeds, strategy: str = "color_crop_cutout_flip_scale_rotate") -> list:
    """Per seed: group, max |pydistill - official| with the official at align_corners False (as run today)
    and True (as in the papers' PyTorch), on images x [N, C, H, W]."""
    from pydistill.ops.diff_augment import diff_augment

    param = utils.ParamDiffAug()
    n, _, h, w = x.shape
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    rows = []

    def run(f):
        xx = x.clone().requires_grad_(True)
        y = f(xx)
        (g,) = torch.autograd.grad((y * upstream).sum(), xx)
        return y.detach(), g

    for seed in seeds:
        p = params_from_official_seed(param, seed, strategy, n, h, w, x.dtype)
        ours, g_ours = run(lambda xx: diff_augment(xx, strategy, params=p))
        off_false, g_false = run(lambda xx: utils.DiffAugment(xx, strategy, seed=seed, param=param))
        with official_with_align_corners(utils, True):
            off_true, g_true = run(lambda xx: utils.DiffAugment(xx, strategy, seed=seed, param=param))
        rows.append(
            {
                "seed": seed,
                "group": official_group(seed, strategy),
                "err_vs_official_align_false": float((ours - off_false).abs().max()),
                "err_vs_official_align_true": float((ours - off_true).abs().max()),
                "grad_err_vs_official_align_false": float((g_ours - g_false).abs().max()),
                "grad_err_vs_official_align_true": float((g_ours - g_true).abs().max()),
            }
        )
    return rows


_ORIGINAL = {}


def install_official_draws(seed_of, utils, strategy: str, num_classes: int) -> None:
    """Make pydistill's siamese DSA draws (``diff_augment(x, ..., generator=g, return_params=True)``) use the
    official draws: the k-th such call (class k % num_classes of outer step k // num_classes) gets
    ``params_from_official_seed(seed_of(outer, class))``. Undo with :func:`uninstall`."""
    import pydistill.ops.diff_augment  # noqa: F401  (pydistill.ops re-exports the function under the same name)

    da = sys.modules["pydistill.ops.diff_augment"]
    orig = da.diff_augment
    _ORIGINAL["diff_augment"] = orig
    param = utils.ParamDiffAug()
    count = [0]

    def patched(x, strategy_=None, *args, params=None, return_params=False, generator=None, **kw):
        if params is None and return_params and not kw.get("per_sample", False):
            k = count[0]
            count[0] += 1
            n, _, h, w = x.shape
            params = params_from_official_seed(
                param, seed_of(k // num_classes, k % num_classes), strategy_, n, h, w, x.dtype
            )
            return orig(x, strategy_, *args, params=params, **kw), params
        if params is None and not return_params:
            raise RuntimeError("parity: an unmatched (per-sample) DSA draw; use --outer-loop 1")
        return orig(x, strategy_, *args, params=params, return_params=return_params, generator=generator, **kw)

    da.diff_augment = patched


def uninstall() -> None:
    da = sys.modules["pydistill.ops.diff_augment"]
    if "diff_augment" in _ORIGINAL:
        da.diff_augment = _ORIGINAL.pop("diff_augment")


def compare_mode_all(utils, x: torch.Tensor, seeds, strategy: str = "color_crop_cutout_flip_scale_rotate") -> list:
    """Per seed: pydistill mode "all" (one fused resampling for scale + rotate) against the official mode "M"
    (scale, then rotate, each resampling with zero padding) on the same draws, official at align_corners=True:
    max and mean abs difference and the fraction of pixels differing by more than 1e-3."""
    from pydistill.ops.diff_augment import diff_augment

    param = utils.ParamDiffAug()
    param.aug_mode = "M"
    n, _, h, w = x.shape
    rows = []
    for seed in seeds:
        p = params_from_official_seed(param, seed, strategy, n, h, w, x.dtype, all_groups=True)
        ours = diff_augment(x, strategy, params=p, mode="all")
        with official_with_align_corners(utils, True):
            off = utils.DiffAugment(x.clone(), strategy, seed=seed, param=param)
        d = (ours - off).abs()
        rows.append(
            {
                "seed": seed,
                "max": float(d.max()),
                "mean": float(d.mean()),
                "frac_gt_1e-3": float((d > 1e-3).float().mean()),
            }
        )
    return rows
