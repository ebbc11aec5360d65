"""Triton kernels of ``diff_augment`` (fused DSA: colour + crop/cutout/flip + scale/rotate in one pass).

Each image ``n`` has one row of a coefficient table (built by ``pydistill.ops.diff_augment``, layout
``COLS`` below). For an output pixel ``p = (px, py)`` (column, row) the kernel computes

* ``s = A p``: the sampling point in "pre" space (the image before the first scale/rotate stage);
* the 4 bilinear neighbours ``q`` of ``s`` (zero outside the image), each mapped to a source pixel
  ``src = (fx*qx + ox, qy + oy)`` (flip and crop shift of the pre stages; zero when outside the image),
  and masked by a cutout box tested on ``(fk*qx + kx, qy + ky)`` when the cutout is a pre stage;
* the colour map on the source pixels, ``alpha*x + beta*mean_c(x) + gamma + delta*mean(x)``;
* post masks on ``p``: crop bounds (``Cp p`` inside the image) and a cutout box on ``Kp p``.

The backward scatters ``L^T g`` with atomics (float32/float64 accumulator) and adds the per-image
contrast-mean term through a second tiny accumulator.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

# column layout of the per-image coefficient table
COLS = (
    "a00", "a01", "a02", "a10", "a11", "a12",  # p -> s (pre space)
    "fx", "ox", "oy",  # q -> source pixel
    "c00", "c01", "c02", "c10", "c11", "c12", "crop_act",  # post crop: p -> crop input coordinates
    "k00", "k01", "k02", "k10", "k11", "k12",  # post cutout: p -> cutout coordinates
    "fk", "kx", "ky",  # pre cutout: q -> cutout coordinates
    "cut_act", "lo_y", "hi_y", "lo_x", "hi_x",  # cutout box (inclusive; empty when inactive)
    "alpha", "beta", "gamma", "delta",  # colour
)
K = len(COLS)


@triton.jit
def _pixel_setup(tab, n, tab_stride, offs, H, W, HAS_CUT: tl.constexpr, CUT_PRE: tl.constexpr,
                 CROP_POST: tl.constexpr):
    """Sampling point, bilinear base corner/fractions and post mask of a block of output pixels."""
    t = tab + n * tab_stride
    a00 = tl.load(t + 0)
    dt = a00.dtype
    pmask = offs < H * W
    py = offs // W
    px = offs - py * W
    pxf = px.to(dt)
    pyf = py.to(dt)
    sx = a00 * pxf + tl.load(t + 1) * pyf + tl.load(t + 2)
    sy = tl.load(t + 3) * pxf + tl.load(t + 4) * pyf + tl.load(t + 5)
    x0f = tl.floor(sx)
    y0f = tl.floor(sy)
    fxr = sx - x0f
    fyr = sy - y0f
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    wmax = (W - 1).to(dt)
    hmax = (H - 1).to(dt)
    post = tl.where(pmask, 1.0, 0.0).to(dt)
    if CROP_POST:
        cu = tl.load(t + 9) * pxf + tl.load(t + 10) * pyf + tl.load(t + 11)
        cv = tl.load(t + 12) * pxf + tl.load(t + 13) * pyf + tl.load(t + 14)
        inside = (cu >= 0.0) & (cu <= wmax) & (cv >= 0.0) & (cv <= hmax)
        post = tl.where(inside, post, post * (1.0 - tl.load(t + 15)))
    if HAS_CUT:
        if not CUT_PRE:
            ku = tl.load(t + 16) * pxf + tl.load(t + 17) * pyf + tl.load(t + 18)
            kv = tl.load(t + 19) * pxf + tl.load(t + 20) * pyf + tl.load(t + 21)
            incut = (kv >= tl.load(t + 26)) & (kv <= tl.load(t + 27)) & (ku >= tl.load(t + 28)) & (ku <= tl.load(t + 29))
            post = tl.where(incut, 0.0, post)
    return x0, y0, fxr, fyr, post, pmask


@triton.jit
def _corner(tab, n, tab_stride, x0, y0, fxr, fyr, pmask, H, W, DX: tl.constexpr, DY: tl.constexpr,
            HAS_CUT: tl.constexpr, CUT_PRE: tl.constexpr):
    """Weight (0 where invalid) and flat source index of one bilinear corner."""
    t = tab + n * tab_stride
    fx = tl.load(t + 6)
    dt = fx.dtype
    qx = x0 + DX
    qy = y0 + DY
    if DX == 1:
        wx = fxr
    else:
        wx = 1.0 - fxr
    if DY == 1:
        wy = fyr
    else:
        wy = 1.0 - fyr
    w = wx * wy
    qxf = qx.to(dt)
    qyf = qy.to(dt)
    srcx = fx * qxf + tl.load(t + 7)
    srcy = qyf + tl.load(t + 8)
    wmax = (W - 1).to(dt)
    hmax = (H - 1).to(dt)
    valid = pmask & (qx >= 0) & (qx < W) & (qy >= 0) & (qy < H)
    valid = valid & (srcx >= 0.0) & (srcx <= wmax) & (srcy >= 0.0) & (srcy <= hmax)
    if HAS_CUT:
        if CUT_PRE:
            ku = tl.load(t + 22) * qxf + tl.load(t + 23)
            kv = qyf + tl.load(t + 24)
            incut = (kv >= tl.load(t + 26)) & (kv <= tl.load(t + 27)) & (ku >= tl.load(t + 28)) & (ku <= tl.load(t + 29))
            valid = valid & (incut == 0)
    # Masks as multiplications (w is finite): tl.where here trips a Triton 3.6 layout bug on fp64 (H100).
    w = w * valid.to(w.dtype)
    idx = (srcy.to(tl.int32) * W + srcx.to(tl.int32)) * valid.to(tl.int32)
    return w, idx, valid


@triton.jit
def _dsa_fwd_kernel(x_ptr, tab, mean_ptr, out_ptr, C, H, W, tab_stride,
                    HAS_CUT: tl.constexpr, CUT_PRE: tl.constexpr, CROP_POST: tl.constexpr,
                    C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    HW = H * W
    x0, y0, fxr, fyr, post, pmask = _pixel_setup(tab, n, tab_stride, offs, H, W, HAS_CUT, CUT_PRE, CROP_POST)
    dt = fxr.dtype
    offs_c = tl.arange(0, C_PAD)
    cmask = offs_c < C
    base = n.to(tl.int64) * C * HW
    S = tl.zeros((C_PAD, BLOCK), dtype=dt)
    wsum = tl.zeros((BLOCK,), dtype=dt)
    for corner in tl.static_range(4):
        w, idx, valid = _corner(tab, n, tab_stride, x0, y0, fxr, fyr, pmask, H, W, corner % 2, corner // 2,
                                HAS_CUT, CUT_PRE)
        v = tl.load(x_ptr + base + offs_c[:, None] * HW + idx[None, :], mask=cmask[:, None] & valid[None, :],
                    other=0.0).to(dt)
        S += v * w[None, :]
        wsum += w
    t = tab + n * tab_stride
    alpha = tl.load(t + 30)
    beta = tl.load(t + 31)
    gamma = tl.load(t + 32)
    delta = tl.load(t + 33)
    m = tl.load(mean_ptr + n).to(dt)
    ssum = tl.sum(S, axis=0)
    out = alpha * S + (beta / C) * ssum[None, :] + ((gamma + delta * m) * wsum)[None, :]
    out = out * post[None, :]
    tl.store(out_ptr + base + offs_c[:, None] * HW + offs[None, :], out.to(out_ptr.dtype.element_ty),
             mask=cmask[:, None] & pmask[None, :])


@triton.jit
def _dsa_bwd_kernel(g_ptr, tab, gx_ptr, r_ptr, C, H, W, tab_stride,
                    HAS_CUT: tl.constexpr, CUT_PRE: tl.constexpr, CROP_POST: tl.constexpr,
                    C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    HW = H * W
    x0, y0, fxr, fyr, post, pmask = _pixel_setup(tab, n, tab_stride, offs, H, W, HAS_CUT, CUT_PRE, CROP_POST)
    dt = fxr.dtype
    offs_c = tl.arange(0, C_PAD)
    cmask = offs_c < C
    base = n.to(tl.int64) * C * HW
    g = tl.load(g_ptr + base + offs_c[:, None] * HW + offs[None, :], mask=cmask[:, None] & pmask[None, :],
                other=0.0).to(dt)
    g = g * post[None, :]
    G = tl.sum(g, axis=0)
    t = tab + n * tab_stride
    alpha = tl.load(t + 30)
    beta = tl.load(t + 31)
    delta = tl.load(t + 33)
    val = alpha * g + (beta / C) * G[None, :]
    wsum = tl.zeros((BLOCK,), dtype=dt)
    for corner in tl.static_range(4):
        w, idx, valid = _corner(tab, n, tab_stride, x0, y0, fxr, fyr, pmask, H, W, corner % 2, corner // 2,
                                HAS_CUT, CUT_PRE)
        tl.atomic_add(gx_ptr + base + offs_c[:, None] * HW + idx[None, :], val * w[None, :],
                      mask=cmask[:, None] & valid[None, :])
        wsum += w
    partial = tl.sum(G * wsum, axis=0) * delta / (C * HW).to(dt)
    tl.atomic_add(r_ptr + n, partial)


def _launch_cfg(C: int, HW: int) -> tuple[int, int]:
    c_pad = triton.next_power_of_2(C)
    block = max(16, min(1024 // c_pad if c_pad <= 64 else 16, triton.next_power_of_2(HW)))
    return c_pad, block


def dsa_forward(x: torch.Tensor, table: torch.Tensor, mean: torch.Tensor, *, has_cut: bool, cut_pre: bool,
                crop_post: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """Fused DSA forward. x: [N, C, H, W] contiguous; table: [1 or N, K] (float32, float64 for float64 x);
    mean: [N] per-image mean of x in the table dtype. Returns [N, C, H, W] in x's dtype (written to ``out``
    when given: contiguous, x's shape and dtype)."""
    N, C, H, W = x.shape
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    c_pad, block = _launch_cfg(C, H * W)
    tab_stride = 0 if table.shape[0] == 1 else table.shape[1]
    grid = (N, triton.cdiv(H * W, block))
    wrap_triton(_dsa_fwd_kernel)[grid](x, table, mean, out, C, H, W, tab_stride, HAS_CUT=has_cut, CUT_PRE=cut_pre,
                                       CROP_POST=crop_post, C_PAD=c_pad, BLOCK=block)
    return out


def dsa_backward(grad: torch.Tensor, table: torch.Tensor, *, has_cut: bool, cut_pre: bool,
                 crop_post: bool) -> torch.Tensor:
    """grad_x = L^T grad for the fused DSA map. grad: [N, C, H, W] contiguous; returns grad's dtype."""
    N, C, H, W = grad.shape
    acc = table.dtype
    gx = torch.zeros((N, C, H, W), dtype=acc, device=grad.device)
    r = torch.zeros((N,), dtype=acc, device=grad.device)
    c_pad, block = _launch_cfg(C, H * W)
    tab_stride = 0 if table.shape[0] == 1 else table.shape[1]
    grid = (N, triton.cdiv(H * W, block))
    wrap_triton(_dsa_bwd_kernel)[grid](grad, table, gx, r, C, H, W, tab_stride, HAS_CUT=has_cut, CUT_PRE=cut_pre,
                                       CROP_POST=crop_post, C_PAD=c_pad, BLOCK=block)
    return (gx + r.view(N, 1, 1, 1)).to(grad.dtype)
