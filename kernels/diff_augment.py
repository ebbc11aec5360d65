"""Triton kernels of ``diff_augment`` (fused DSA: colour + crop/cutout/flip + scale/rotate in one pass).

Each image ``n`` has one row of a coefficient table (layout ``COLS`` below), built on the device by one launch
of ``_diff_augment_table_kernel`` straight from the raw DSA parameter tensors (``diff_augment_table``): no host
work per call besides the launch. For an output pixel ``p = (px, py)`` (column, row) the kernel computes

* ``s = A p``: the sampling point in "pre" space (the image before the first scale/rotate stage);
* the 4 bilinear neighbours ``q`` of ``s`` (zero outside the image), each mapped to a source pixel
  ``src = (fx*qx + ox, qy + oy)`` (flip and crop shift of the pre stages; zero when outside the image),
  and masked by a cutout box tested on ``(fk*qx + kx, qy + ky)`` when the cutout is a pre stage;
* the colour map on the source pixels, ``alpha*x + beta*mean_c(x) + gamma + delta*mean(x)``;
* post masks on ``p``: crop bounds (``Cp p`` inside the image) and a cutout box on ``Kp p``.

The backward scatters ``L^T g`` with atomics (float32/float64 accumulator); each program stores its share of
the per-image contrast-mean term in its own slot at the end of the image's table row (no atomics), and a
finishing launch adds the fixed-order sum of those slots to the image (and casts to the gradient dtype).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

# column layout of the per-image coefficient table
COLS = (
    "a00",
    "a01",
    "a02",
    "a10",
    "a11",
    "a12",  # p -> s (pre space)
    "fx",
    "ox",
    "oy",  # q -> source pixel
    "c00",
    "c01",
    "c02",
    "c10",
    "c11",
    "c12",
    "crop_act",  # post crop: p -> crop input coordinates
    "k00",
    "k01",
    "k02",
    "k10",
    "k11",
    "k12",  # post cutout: p -> cutout coordinates
    "fk",
    "kx",
    "ky",  # pre cutout: q -> cutout coordinates
    "cut_act",
    "lo_y",
    "hi_y",
    "lo_x",
    "hi_x",  # cutout box (inclusive; empty when inactive)
    "alpha",
    "beta",
    "gamma",
    "delta",  # colour
    "mean",  # per-image mean of x (0 when the colour group is inactive or absent)
)
K = len(COLS)
# Codes of the geometric stages in the table kernel's constexpr stage lists (3 bits each, GROUPS order of the
# ops module: color 0, crop 1, cutout 2, flip 3, scale 4, rotate 5; 7 = no stage).
STAGE_CROP, STAGE_CUTOUT, STAGE_FLIP, STAGE_SCALE, STAGE_ROTATE, STAGE_NONE = 1, 2, 3, 4, 5, 7


def encode_stages(codes) -> int:
    """Pack a walk order of stage codes (at most 5) into one constexpr int, 3 bits per stage, padded with NONE."""
    codes = list(codes)
    if len(codes) > 5:
        raise ValueError(f"at most 5 geometric stages, got {len(codes)}")
    out = 0
    for i, c in enumerate(codes + [STAGE_NONE] * (5 - len(codes))):
        out |= c << (3 * i)
    return out


@triton.jit
def _diff_augment_table_kernel(
    x_ptr,
    tab_ptr,
    act_ptr,
    bri_ptr,
    sat_ptr,
    con_ptr,
    sft_ptr,
    cen_ptr,
    flp_ptr,
    scl_ptr,
    ang_ptr,
    s_act,
    c_act,
    s_bri,
    s_sat,
    s_con,
    s_sft,
    c_sft,
    s_cen,
    c_cen,
    s_flp,
    s_scl,
    c_scl,
    s_ang,
    CHW,
    wm1,
    hm1,
    half_h,
    ext_h,
    half_w,
    ext_w,
    tab_stride,
    HAS_COLOR: tl.constexpr,
    HAS_CUT: tl.constexpr,
    PRE: tl.constexpr,
    POST: tl.constexpr,
    MEAN: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Row n of the coefficient table from parameter row n (or 0 where a parameter is shared: row stride 0).

    Mirrors ``pydistill.ops.diff_augment._kernel_table``: the pre stages (PRE, walk order from the sampling point
    back to the source pixel) give the flip/shift of q and the pre-cutout coordinates; the post stages (POST,
    walk order from the output pixel back) compose 2x3 affine maps; cutout box, colour coefficients and the
    image mean (MEAN: read x[n] when the colour group is active) complete the row.
    """
    n = tl.program_id(0)
    t = tab_ptr + n.to(tl.int64) * tab_stride
    dt = tab_ptr.dtype.element_ty
    zero = tl.sum(tl.zeros([1], dtype=dt), axis=0)  # a scalar of the table dtype
    one = zero + 1.0
    hm1 = zero + hm1
    wm1 = zero + wm1
    cx = wm1 * 0.5
    cy = hm1 * 0.5
    a = act_ptr + n * s_act
    a_color = tl.load(a).to(tl.int32) != 0
    a_crop = tl.load(a + c_act).to(tl.int32) != 0
    a_cut = tl.load(a + 2 * c_act).to(tl.int32) != 0
    a_flip = tl.load(a + 3 * c_act).to(tl.int32) != 0
    a_scale = tl.load(a + 4 * c_act).to(tl.int32) != 0
    a_rot = tl.load(a + 5 * c_act).to(tl.int32) != 0
    do_flip = a_flip & (tl.load(flp_ptr + n * s_flp).to(tl.int32) != 0)
    dy = tl.where(a_crop, tl.load(sft_ptr + n * s_sft).to(dt), zero)
    dx = tl.where(a_crop, tl.load(sft_ptr + n * s_sft + c_sft).to(dt), zero)
    # colour: alpha*x + beta*mean_c + gamma + delta*mean(x) with (b, s, k) = (0, 1, 1) when inactive
    b = zero
    s = one
    k = one
    if HAS_COLOR:
        b = tl.where(a_color, tl.load(bri_ptr + n * s_bri).to(dt), zero)
        s = tl.where(a_color, tl.load(sat_ptr + n * s_sat).to(dt), one)
        k = tl.where(a_color, tl.load(con_ptr + n * s_con).to(dt), one)
    # pre stages, walked back from q to the source pixel: src = (fx*qx + ox, qy + oy)
    fx = one
    ox = zero
    oy = zero
    fk = one
    kx = zero
    ky = zero
    for i in tl.static_range(5):
        code = (PRE >> (3 * i)) & 7
        if code == 3:  # flip
            fx = tl.where(do_flip, -fx, fx)
            ox = tl.where(do_flip, wm1 - ox, ox)
        elif code == 1:  # crop
            ox = ox + dx
            oy = oy + dy
        elif code == 2:  # cutout: tested on the coordinates of its stage
            fk = fx
            kx = ox
            ky = oy
    # post stages, walked back from the output pixel p: T = M_last ... M_first (2x3 affine maps)
    t00 = one
    t01 = zero
    t02 = zero
    t10 = zero
    t11 = one
    t12 = zero
    c00 = zero
    c01 = zero
    c02 = zero
    c10 = zero
    c11 = zero
    c12 = zero
    k00 = zero
    k01 = zero
    k02 = zero
    k10 = zero
    k11 = zero
    k12 = zero
    crop_act = zero
    for i in tl.static_range(5):
        code = (POST >> (3 * i)) & 7
        if code == 2:  # cutout: tested on the current coordinates, no move
            k00 = t00
            k01 = t01
            k02 = t02
            k10 = t10
            k11 = t11
            k12 = t12
        elif code != 7:
            m00 = one
            m01 = zero
            m02 = zero
            m10 = zero
            m11 = one
            m12 = zero
            if code == 4:  # scale
                sy = tl.where(a_scale, tl.load(scl_ptr + n * s_scl).to(dt), one)
                sx = tl.where(a_scale, tl.load(scl_ptr + n * s_scl + c_scl).to(dt), one)
                m00 = sx
                m02 = cx - sx * cx
                m11 = sy
                m12 = cy - sy * cy
            elif code == 5:  # rotate
                th = tl.where(a_rot, tl.load(ang_ptr + n * s_ang).to(dt), zero)
                co = tl.cos(th)
                si = tl.sin(th)
                m00 = co
                m01 = -si * (cx / cy)
                m02 = cx - co * cx + si * cx
                m10 = si * (cy / cx)
                m11 = co
                m12 = cy - si * cy - co * cy
            elif code == 3:  # flip
                f = tl.where(do_flip, one, zero)
                m00 = 1.0 - 2.0 * f
                m02 = f * wm1
            elif code == 1:  # crop
                m02 = dx
                m12 = dy
            n00 = m00 * t00 + m01 * t10
            n01 = m00 * t01 + m01 * t11
            n02 = m00 * t02 + m01 * t12 + m02
            n10 = m10 * t00 + m11 * t10
            n11 = m10 * t01 + m11 * t11
            n12 = m10 * t02 + m11 * t12 + m12
            t00 = n00
            t01 = n01
            t02 = n02
            t10 = n10
            t11 = n11
            t12 = n12
            if code == 1:
                c00 = t00
                c01 = t01
                c02 = t02
                c10 = t10
                c11 = t11
                c12 = t12
                crop_act = tl.where(a_crop, one, zero)
    # cutout box (inclusive); an empty box (lo > hi) switches the cutout off
    cut_act = zero
    if HAS_CUT:
        cut_act = tl.where(a_cut, one, zero)
    lo_y = tl.where(a_cut, tl.load(cen_ptr + n * s_cen).to(dt) - half_h, one)
    lo_x = tl.where(a_cut, tl.load(cen_ptr + n * s_cen + c_cen).to(dt) - half_w, one)
    if not HAS_CUT:
        lo_y = one
        lo_x = one
    hi_y = tl.where(cut_act != 0.0, lo_y + ext_h, zero)
    hi_x = tl.where(cut_act != 0.0, lo_x + ext_w, zero)
    m = zero
    if MEAN:
        if a_color:  # the mean only matters to an active colour group: skip reading x otherwise
            base = x_ptr + n.to(tl.int64) * CHW
            acc = tl.zeros([BLOCK], dtype=dt)
            for off in range(0, CHW, BLOCK):
                idx = off + tl.arange(0, BLOCK)
                acc += tl.load(base + idx, mask=idx < CHW, other=0.0).to(dt)
            m = tl.sum(acc, axis=0) / CHW.to(dt)
    tl.store(t + 0, t00)
    tl.store(t + 1, t01)
    tl.store(t + 2, t02)
    tl.store(t + 3, t10)
    tl.store(t + 4, t11)
    tl.store(t + 5, t12)
    tl.store(t + 6, fx)
    tl.store(t + 7, ox)
    tl.store(t + 8, oy)
    tl.store(t + 9, c00)
    tl.store(t + 10, c01)
    tl.store(t + 11, c02)
    tl.store(t + 12, c10)
    tl.store(t + 13, c11)
    tl.store(t + 14, c12)
    tl.store(t + 15, crop_act)
    tl.store(t + 16, k00)
    tl.store(t + 17, k01)
    tl.store(t + 18, k02)
    tl.store(t + 19, k10)
    tl.store(t + 20, k11)
    tl.store(t + 21, k12)
    tl.store(t + 22, fk)
    tl.store(t + 23, kx)
    tl.store(t + 24, ky)
    tl.store(t + 25, cut_act)
    tl.store(t + 26, lo_y)
    tl.store(t + 27, hi_y)
    tl.store(t + 28, lo_x)
    tl.store(t + 29, hi_x)
    tl.store(t + 30, k * s)
    tl.store(t + 31, k * (1.0 - s))
    tl.store(t + 32, b)
    tl.store(t + 33, 1.0 - k)
    tl.store(t + 34, m)


@triton.jit
def _pixel_setup(tab, n, tab_stride, offs, H, W, HAS_CUT: tl.constexpr, CUT_PRE: tl.constexpr, CROP_POST: tl.constexpr):
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
            incut = (
                (kv >= tl.load(t + 26)) & (kv <= tl.load(t + 27)) & (ku >= tl.load(t + 28)) & (ku <= tl.load(t + 29))
            )
            post = tl.where(incut, 0.0, post)
    return x0, y0, fxr, fyr, post, pmask


@triton.jit
def _corner(
    tab,
    n,
    tab_stride,
    x0,
    y0,
    fxr,
    fyr,
    pmask,
    H,
    W,
    DX: tl.constexpr,
    DY: tl.constexpr,
    HAS_CUT: tl.constexpr,
    CUT_PRE: tl.constexpr,
):
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
            incut = (
                (kv >= tl.load(t + 26)) & (kv <= tl.load(t + 27)) & (ku >= tl.load(t + 28)) & (ku <= tl.load(t + 29))
            )
            valid = valid & (incut == 0)
    # Masks as multiplications (w is finite): tl.where here trips a Triton 3.6 layout bug on fp64 (H100).
    w = w * valid.to(w.dtype)
    idx = (srcy.to(tl.int32) * W + srcx.to(tl.int32)) * valid.to(tl.int32)
    return w, idx, valid


@triton.jit
def _diff_augment_fwd_kernel(
    x_ptr,
    tab,
    out_ptr,
    C,
    H,
    W,
    tab_stride,
    HAS_CUT: tl.constexpr,
    CUT_PRE: tl.constexpr,
    CROP_POST: tl.constexpr,
    C_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
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
        w, idx, valid = _corner(
            tab, n, tab_stride, x0, y0, fxr, fyr, pmask, H, W, corner % 2, corner // 2, HAS_CUT, CUT_PRE
        )
        v = tl.load(
            x_ptr + base + offs_c[:, None] * HW + idx[None, :], mask=cmask[:, None] & valid[None, :], other=0.0
        ).to(dt)
        S += v * w[None, :]
        wsum += w
    t = tab + n * tab_stride
    alpha = tl.load(t + 30)
    beta = tl.load(t + 31)
    gamma = tl.load(t + 32)
    delta = tl.load(t + 33)
    m = tl.load(t + 34)
    ssum = tl.sum(S, axis=0)
    out = alpha * S + (beta / C) * ssum[None, :] + ((gamma + delta * m) * wsum)[None, :]
    out = out * post[None, :]
    tl.store(
        out_ptr + base + offs_c[:, None] * HW + offs[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=cmask[:, None] & pmask[None, :],
    )


@triton.jit
def _diff_augment_bwd_kernel(
    g_ptr,
    tab,
    gx_ptr,
    C,
    H,
    W,
    tab_stride,
    HAS_CUT: tl.constexpr,
    CUT_PRE: tl.constexpr,
    CROP_POST: tl.constexpr,
    C_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
    SLOT: tl.constexpr,
):
    n = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    HW = H * W
    x0, y0, fxr, fyr, post, pmask = _pixel_setup(tab, n, tab_stride, offs, H, W, HAS_CUT, CUT_PRE, CROP_POST)
    dt = fxr.dtype
    offs_c = tl.arange(0, C_PAD)
    cmask = offs_c < C
    base = n.to(tl.int64) * C * HW
    g = tl.load(
        g_ptr + base + offs_c[:, None] * HW + offs[None, :], mask=cmask[:, None] & pmask[None, :], other=0.0
    ).to(dt)
    g = g * post[None, :]
    G = tl.sum(g, axis=0)
    t = tab + n * tab_stride
    alpha = tl.load(t + 30)
    beta = tl.load(t + 31)
    delta = tl.load(t + 33)
    val = alpha * g + (beta / C) * G[None, :]
    wsum = tl.zeros((BLOCK,), dtype=dt)
    for corner in tl.static_range(4):
        w, idx, valid = _corner(
            tab, n, tab_stride, x0, y0, fxr, fyr, pmask, H, W, corner % 2, corner // 2, HAS_CUT, CUT_PRE
        )
        tl.atomic_add(
            gx_ptr + base + offs_c[:, None] * HW + idx[None, :], val * w[None, :], mask=cmask[:, None] & valid[None, :]
        )
        wsum += w
    partial = tl.sum(G * wsum, axis=0) * delta / (C * HW).to(dt)
    tl.store(t + SLOT + tl.program_id(1), partial)  # this program's own slot: no atomics, fixed-order sum later


@triton.jit
def _diff_augment_bwd_finish_kernel(
    gx_ptr, tab, out_ptr, CHW, n_slots, tab_stride, SLOT: tl.constexpr, SLOTS_PAD: tl.constexpr, BLOCK: tl.constexpr
):
    """out[n] = gx[n] + sum of image n's contrast-mean slots (fixed order), cast to out's dtype."""
    n = tl.program_id(0)
    j = tl.arange(0, SLOTS_PAD)
    r = tl.sum(tl.load(tab + n.to(tl.int64) * tab_stride + SLOT + j, mask=j < n_slots, other=0.0), axis=0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < CHW
    base = n.to(tl.int64) * CHW
    g = tl.load(gx_ptr + base + offs, mask=mask, other=0.0)
    tl.store(out_ptr + base + offs, (g + r).to(out_ptr.dtype.element_ty), mask=mask)


def _launch_cfg(C: int, HW: int) -> tuple[int, int]:
    c_pad = triton.next_power_of_2(C)
    block = max(16, min(1024 // c_pad if c_pad <= 64 else 16, triton.next_power_of_2(HW)))
    return c_pad, block


def table_width(C: int, H: int, W: int) -> int:
    """Row length of the table of a [N, C, H, W] batch: the K coefficients + one backward slot per pixel block."""
    return K + triton.cdiv(H * W, _launch_cfg(C, H * W)[1])


_MEAN_BLOCK = 1024
_FINISH_BLOCK = 1024


def diff_augment_table(
    x: torch.Tensor,
    params,
    *,
    cut_h: int,
    cut_w: int,
    has_color: bool,
    has_cut: bool,
    pre: int,
    post: int,
    mean: bool,
    dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Coefficient table [N, table_width(C, H, W)] of ``dtype`` (float32/float64) for x [N, C, H, W], one launch.

    params: the 9 DSA parameter tensors (active [B, 6] bool, brightness/saturation/contrast [B], shift/centre
    [B, 2] int, flip [B] bool, scale [B, 2], angle [B] radians; B = 1 (shared) or N, any strides).
    ``pre``/``post``: ``encode_stages`` of the pre/post stage walk orders. ``mean``: store the per-image mean of
    x (contiguous) in column ``mean`` (needed by the forward only). Columns past K are backward scratch.
    """
    N, C, H, W = x.shape
    if out is None:
        out = torch.empty((N, table_width(C, H, W)), dtype=dtype, device=x.device)
    act, bri, sat, con, sft, cen, flp, scl, ang = params

    def rs(t):  # row stride; 0 broadcasts a shared (batch dim 1) parameter
        return 0 if t.shape[0] == 1 else t.stride(0)

    wrap_triton(_diff_augment_table_kernel)[(N,)](
        x,
        out,
        act,
        bri,
        sat,
        con,
        sft,
        cen,
        flp,
        scl,
        ang,
        rs(act),
        act.stride(1),
        rs(bri),
        rs(sat),
        rs(con),
        rs(sft),
        sft.stride(1),
        rs(cen),
        cen.stride(1),
        rs(flp),
        rs(scl),
        scl.stride(1),
        rs(ang),
        C * H * W,
        float(W - 1),
        float(H - 1),
        float(cut_h // 2),
        float(cut_h - 1),
        float(cut_w // 2),
        float(cut_w - 1),
        out.stride(0),
        HAS_COLOR=has_color,
        HAS_CUT=has_cut,
        PRE=pre,
        POST=post,
        MEAN=mean,
        BLOCK=_MEAN_BLOCK,
    )
    return out


def _tab_stride(table: torch.Tensor) -> int:
    return 0 if table.shape[0] == 1 else table.stride(0)


def diff_augment_fwd(
    x: torch.Tensor,
    table: torch.Tensor,
    *,
    has_cut: bool,
    cut_pre: bool,
    crop_post: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused DSA forward. x: [N, C, H, W] contiguous; table: [1 or N, >= K] (float32, float64 for float64 x)
    with the image mean in column ``mean``. Returns [N, C, H, W] in x's dtype (written to ``out`` when given:
    contiguous, x's shape and dtype)."""
    N, C, H, W = x.shape
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    c_pad, block = _launch_cfg(C, H * W)
    grid = (N, triton.cdiv(H * W, block))
    wrap_triton(_diff_augment_fwd_kernel)[grid](
        x,
        table,
        out,
        C,
        H,
        W,
        _tab_stride(table),
        HAS_CUT=has_cut,
        CUT_PRE=cut_pre,
        CROP_POST=crop_post,
        C_PAD=c_pad,
        BLOCK=block,
    )
    return out


def diff_augment_bwd(
    grad: torch.Tensor, table: torch.Tensor, *, has_cut: bool, cut_pre: bool, crop_post: bool
) -> torch.Tensor:
    """grad_x = L^T grad for the fused DSA map. grad: [N, C, H, W] contiguous; table: [N, table_width(C, H, W)]
    from ``diff_augment_table`` (its scratch columns are overwritten). Returns grad's dtype."""
    N, C, H, W = grad.shape
    c_pad, block = _launch_cfg(C, H * W)
    n_slots = triton.cdiv(H * W, block)
    if table.dim() != 2 or table.shape[0] != N or table.shape[1] < K + n_slots:
        raise ValueError(
            f"table must be [{N}, >= {K + n_slots}] (diff_augment_table of this batch), got {tuple(table.shape)}"
        )
    acc = table.dtype
    gx = torch.zeros((N, C, H, W), dtype=acc, device=grad.device)
    wrap_triton(_diff_augment_bwd_kernel)[(N, n_slots)](
        grad,
        table,
        gx,
        C,
        H,
        W,
        table.stride(0),
        HAS_CUT=has_cut,
        CUT_PRE=cut_pre,
        CROP_POST=crop_post,
        C_PAD=c_pad,
        BLOCK=block,
        SLOT=K,
    )
    out = gx if grad.dtype == acc else torch.empty_like(grad, memory_format=torch.contiguous_format)
    chw = C * H * W
    wrap_triton(_diff_augment_bwd_finish_kernel)[(N, triton.cdiv(chw, _FINISH_BLOCK))](
        gx,
        table,
        out,
        chw,
        n_slots,
        table.stride(0),
        SLOT=K,
        SLOTS_PAD=max(16, triton.next_power_of_2(n_slots)),
        BLOCK=_FINISH_BLOCK,
    )
    return out
