"""Triton kernels of ``match_loss`` (DC gradient-matching distance) and their launchers.

Multi-tensor design, one launch per direction for the whole gradient list, no copy of the gradients:
an int64 table holds per tensor the data pointers (cast back to typed pointers inside the kernel with
``tl.load(table).to(tl.pointer_type(dtype))``; this also works under ``TRITON_INTERPRET=1``), the row count,
row length, chunks per row, first chunk and first stats row. Every tensor is split into rows ("ours":
``size(0)`` rows; "mse"/"cos": the whole tensor is one row) and rows into chunks of ``CHUNK`` elements; one
program per chunk. The forward writes per-chunk partial sums, then the last program to take a ticket
(atomic counter at the head of the table) combines them per row in a fixed order (deterministic),
writes the per-row stats ``[R, 3] = (<a,b>, |a|^2, |b|^2)`` and the loss, and resets the counter to 0.
Tables (and the forward's scratch) are cached per device, stream, metric, dtype, pointers and shapes, so a
training loop's repeated calls on the same storages launch with no host-side table work (see ``_CACHE``). The
backward writes ``alpha_row * b + beta_row * a`` (or ``2 g (a - b)`` for "mse") with coefficients from the stats.

These launchers are plain Python called from the opaque ``pydistill::match_loss`` custom op (not
``triton_op``): the pointer table hides which tensors a kernel reads and writes, so the kernels must not
be traced by the compiler.
"""

from __future__ import annotations

import collections

import torch
import triton
import triton.language as tl

from ._launch import on_device, stream_id

METRICS = {"ours": 0, "mse": 1, "cos": 2}
FIELDS = 9  # a, b, g, rows, row_len, cpr, chunk_start, seg, active
HEADER = 2  # table[0]: ticket counter (int32 view), table[1]: unused
F_A, F_B, F_G, F_ROWS, F_LEN, F_CPR, F_CS, F_SEG, F_ACTIVE = range(FIELDS)
CHUNK = 4096
BLOCK = 1024
BLOCK_R = 128
EPS = tl.constexpr(1e-6)  # a constexpr global: Triton kernels may read only constexpr globals

_TL_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}


@triton.jit
def _find(meta_ptr, key, T, FIELD: tl.constexpr, F: tl.constexpr, H: tl.constexpr, STEPS: tl.constexpr):
    """Last tensor index t in [0, T) whose (non-decreasing) table field FIELD is <= key (scalar or block)."""
    lo = key * 0
    hi = key * 0 + (T - 1)
    for _ in tl.static_range(STEPS):
        mid = (lo + hi + 1) // 2
        v = tl.load(meta_ptr + H + mid * F + FIELD)
        ok = v <= key
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid - 1)
    return lo


@triton.jit
def _match_loss_fwd_kernel(
    meta_ptr,
    counter_ptr,
    part_ptr,
    stats_ptr,
    loss_ptr,
    T,
    W,
    R,
    KMAX,
    n_programs,
    METRIC: tl.constexpr,
    DT: tl.constexpr,
    ACC: tl.constexpr,
    STEPS: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_R: tl.constexpr,
    F: tl.constexpr,
    H: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64)
    if c < W:
        t = _find(meta_ptr, c, T, 6, F, H, STEPS)
        base = meta_ptr + H + t * F
        a_ptr = tl.load(base + 0).to(tl.pointer_type(DT))
        b_ptr = tl.load(base + 1).to(tl.pointer_type(DT))
        row_len = tl.load(base + 4)
        cpr = tl.load(base + 5)
        local = c - tl.load(base + 6)
        row = local // cpr
        k = local - row * cpr
        start = row * row_len + k * CHUNK
        n = tl.minimum(row_len - k * CHUNK, CHUNK)
        s0 = tl.zeros([BLOCK], ACC)
        s1 = tl.zeros([BLOCK], ACC)
        s2 = tl.zeros([BLOCK], ACC)
        for off in tl.static_range(0, CHUNK, BLOCK):
            idx = off + tl.arange(0, BLOCK)
            m = idx < n
            x = tl.load(a_ptr + start + idx, mask=m, other=0.0).to(ACC)
            y = tl.load(b_ptr + start + idx, mask=m, other=0.0).to(ACC)
            if METRIC == 1:
                d = x - y
                s0 += d * d
            else:
                s0 += x * y
                s1 += x * x
                s2 += y * y
        tl.store(part_ptr + 3 * c, tl.sum(s0, axis=0))
        tl.store(part_ptr + 3 * c + 1, tl.sum(s1, axis=0))
        tl.store(part_ptr + 3 * c + 2, tl.sum(s2, axis=0))
    # Ordering (checked in the sm_80/sm_90 PTX): the barrier orders every thread's partial stores before the
    # ticket, which one thread takes with atom.acq_rel.gpu (release: our partials; acquire: everyone's); the
    # ticket reaches the other threads through shared memory + bar.sync, and the partials are read with
    # volatile (L1-bypassing) loads. Each program takes exactly one ticket (a scalar atomic runs once).
    tl.debug_barrier()
    ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
    if ticket == n_programs - 1:
        # Every program of this launch has taken its one ticket, so no one touches the counter again in this
        # launch: reset it for the next launch (stream-ordered after this one), which lets the cached table be
        # reused without a memset or a fresh copy. Correct under any scheduling, not only sequential.
        tl.atomic_xchg(counter_ptr, 0, sem="relaxed")
        # Last program: fixed-order combination of the chunk partials.
        if METRIC == 0:
            total = tl.zeros([BLOCK_R], ACC)
            for r0 in range(0, R, BLOCK_R):
                r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
                rm = r < R
                t = _find(meta_ptr, r, T, 7, F, H, STEPS)
                cpr = tl.load(meta_ptr + H + t * F + 5)
                cb = tl.load(meta_ptr + H + t * F + 6) + (r - tl.load(meta_ptr + H + t * F + 7)) * cpr
                d = tl.zeros([BLOCK_R], ACC)
                aa = tl.zeros([BLOCK_R], ACC)
                bb = tl.zeros([BLOCK_R], ACC)
                for k in range(0, KMAX):
                    km = rm & (k < cpr)
                    p = part_ptr + 3 * (cb + k)
                    d += tl.load(p, mask=km, other=0.0, volatile=True)
                    aa += tl.load(p + 1, mask=km, other=0.0, volatile=True)
                    bb += tl.load(p + 2, mask=km, other=0.0, volatile=True)
                tl.store(stats_ptr + 3 * r, d, mask=rm)
                tl.store(stats_ptr + 3 * r + 1, aa, mask=rm)
                tl.store(stats_ptr + 3 * r + 2, bb, mask=rm)
                dist = 1.0 - d / (tl.sqrt(aa) * tl.sqrt(bb) + EPS)
                total += tl.where(rm, dist, 0.0)
            tl.store(loss_ptr, tl.sum(total, axis=0).to(DT))
        else:
            s0 = tl.zeros([BLOCK_R], ACC)
            s1 = tl.zeros([BLOCK_R], ACC)
            s2 = tl.zeros([BLOCK_R], ACC)
            for i0 in range(0, W, BLOCK_R):
                i = i0 + tl.arange(0, BLOCK_R).to(tl.int64)
                im = i < W
                s0 += tl.load(part_ptr + 3 * i, mask=im, other=0.0, volatile=True)
                if METRIC == 2:
                    s1 += tl.load(part_ptr + 3 * i + 1, mask=im, other=0.0, volatile=True)
                    s2 += tl.load(part_ptr + 3 * i + 2, mask=im, other=0.0, volatile=True)
            d = tl.sum(s0, axis=0)
            if METRIC == 1:
                tl.store(loss_ptr, d.to(DT))
            else:
                aa = tl.sum(s1, axis=0)
                bb = tl.sum(s2, axis=0)
                tl.store(stats_ptr, d)
                tl.store(stats_ptr + 1, aa)
                tl.store(stats_ptr + 2, bb)
                tl.store(loss_ptr, (1.0 - d / (tl.sqrt(aa) * tl.sqrt(bb) + EPS)).to(DT))


@triton.jit
def _match_loss_bwd_kernel(
    meta_ptr,
    stats_ptr,
    grad_ptr,
    T,
    R,
    METRIC: tl.constexpr,
    DT: tl.constexpr,
    ACC: tl.constexpr,
    STEPS: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
    F: tl.constexpr,
    H: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64)
    t = _find(meta_ptr, c, T, 6, F, H, STEPS)
    base = meta_ptr + H + t * F
    a_ptr = tl.load(base + 0).to(tl.pointer_type(DT))
    b_ptr = tl.load(base + 1).to(tl.pointer_type(DT))
    g_ptr = tl.load(base + 2).to(tl.pointer_type(DT))
    row_len = tl.load(base + 4)
    cpr = tl.load(base + 5)
    local = c - tl.load(base + 6)
    seg = tl.load(base + 7)
    active = tl.load(base + 8) != 0
    row = local // cpr
    k = local - row * cpr
    start = row * row_len + k * CHUNK
    n = tl.minimum(row_len - k * CHUNK, CHUNK)
    s = tl.load(grad_ptr).to(ACC)
    if METRIC == 1:
        alpha = 2.0 * s
        beta = s * 0.0
    else:
        sm = active & (seg + row < R)
        sp = stats_ptr + 3 * (seg + row)
        dot = tl.load(sp, mask=sm, other=0.0)
        na = tl.sqrt(tl.load(sp + 1, mask=sm, other=0.0))
        nb = tl.sqrt(tl.load(sp + 2, mask=sm, other=0.0))
        den = na * nb + EPS
        alpha = -s / den
        beta = tl.where(na > 0.0, s * dot * nb / (tl.where(na > 0.0, na, 1.0) * den * den), 0.0)
    for off in tl.static_range(0, CHUNK, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        m = idx < n
        x = tl.load(a_ptr + start + idx, mask=m, other=0.0).to(ACC)
        y = tl.load(b_ptr + start + idx, mask=m, other=0.0).to(ACC)
        if METRIC == 1:
            v = alpha * (x - y)
        else:
            v = alpha * y + beta * x
        v = tl.where(active, v, 0.0)
        tl.store(g_ptr + start + idx, v.to(DT), mask=m)


def num_rows(shapes, metric: str) -> int:
    """Rows of the stats output: rows of all dim>=2 tensors ("ours"), 1 ("cos"), 0 ("mse")."""
    if metric == "mse":
        return 0
    if metric == "cos":
        return 1
    return sum(int(s[0]) for s in shapes if len(s) >= 2)


def _build_table(a, b, g, metric: str, backward: bool, device):
    """Host-built int64 table (see module doc); returns (table on device, chunks, max chunks per row)."""
    rows_l = []
    cs = seg = 0
    kmax = 0
    for i, (x, y) in enumerate(zip(a, b)):
        n = x.numel()
        active = 1
        if metric == "ours":
            if x.dim() >= 2:
                rows = x.shape[0]
                row_len = n // rows if rows > 0 else 0
            else:
                active = 0
                rows = 1 if backward else 0
                row_len = n
        else:
            rows, row_len = 1, n
        cpr = -(-row_len // CHUNK)
        kmax = max(kmax, cpr)
        rows_l += [
            x.data_ptr(),
            y.data_ptr(),
            g[i].data_ptr() if g is not None else 0,
            rows,
            row_len,
            cpr,
            cs,
            seg if metric == "ours" else 0,
            active,
        ]
        cs += rows * cpr
        if metric == "ours" and active:
            seg += rows
    table = torch.tensor([0] * HEADER + rows_l, dtype=torch.int64, pin_memory=device.type == "cuda")
    if device.type != "cpu":
        table = table.to(device, non_blocking=True)
    return table, cs, kmax


# Device tables (+ the forward's int32 counter view and partial-sum scratch), keyed by everything they encode:
# device, stream, metric, direction, dtype and per tensor the data pointers and shapes (the tensors are
# contiguous, so the shape fixes the strides). A hit therefore always holds the right addresses: a tensor that
# moves to new storage changes the key. The kernels never write a table except the forward's ticket counter,
# which the last program resets to 0; the scratch is only used in the stream order of the key's stream.
_CACHE: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
_CACHE_SIZE = 32
_PLACEHOLDERS: dict = {}  # (device, acc dtype) -> a 3-element stats stand-in for row-less backward calls


def _cached(key, build):
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    out = build()
    _CACHE[key] = out
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return out


def clear_cache() -> None:
    """Drop every cached table (they hold no tensor references, only addresses; this just frees them)."""
    _CACHE.clear()
    _PLACEHOLDERS.clear()


def _steps(T: int) -> int:
    return max(1, (T - 1).bit_length())


def match_loss_fwd(gw_syn, gw_real, metric: str, loss=None, stats=None):
    """Forward over lists of contiguous same-shape tensors -> (loss [] in input dtype, stats [R, 3] fp32/fp64).

    ``loss`` / ``stats`` may be given as preallocated outputs (every element is written).
    """
    a = [t.contiguous() for t in gw_syn]
    b = [t.contiguous() for t in gw_real]
    dtype, device = a[0].dtype, a[0].device
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    T = len(a)
    key = (
        device,
        stream_id(device),
        metric,
        False,
        dtype,
        tuple((x.data_ptr(), y.data_ptr(), x.shape) for x, y in zip(a, b)),
    )

    def build():
        table, W, kmax = _build_table(a, b, None, metric, False, device)
        part = torch.empty(3 * max(W, 1), dtype=acc, device=device)  # per-chunk partial sums (scratch)
        return table, table.view(torch.int32), W, kmax, part, num_rows([t.shape for t in a], metric)

    table, counter, W, kmax, part, R = _cached(key, build)
    if loss is None:
        loss = torch.empty((), dtype=dtype, device=device)
    if stats is None:
        stats = torch.empty((R, 3), dtype=acc, device=device)
    grid = max(W, 1)
    try:
        with on_device(device):  # Triton launches on the current CUDA device
            _match_loss_fwd_kernel[(grid,)](
                table,
                counter,
                part,
                stats,
                loss,
                T,
                W,
                R,
                kmax,
                grid,
                METRIC=METRICS[metric],
                DT=_TL_DTYPES[dtype],
                ACC=_TL_DTYPES[acc],
                STEPS=_steps(T),
                CHUNK=CHUNK,
                BLOCK=BLOCK,
                BLOCK_R=BLOCK_R,
                F=FIELDS,
                H=HEADER,
            )
    except BaseException:  # a launch that did not finish may leave the counter set: never reuse that table
        _CACHE.pop(key, None)
        raise
    return loss, stats


def match_loss_bwd(grad, gw_syn, gw_real, stats, metric: str, out=None):
    """Gradient w.r.t. ``gw_syn`` given ``grad`` (one element) and the forward's ``stats``; list of tensors.

    ``out`` may be a list of preallocated contiguous outputs (every element is written).
    """
    a = [t.contiguous() for t in gw_syn]
    b = [t.contiguous() for t in gw_real]
    dtype, device = a[0].dtype, a[0].device
    if out is None:
        out = [torch.empty(t.shape, dtype=dtype, device=device) for t in a]
    # the outputs' addresses are part of the key: in a training loop the allocator usually hands back the same
    # blocks, so steady-state calls hit; a miss only costs the host build and one copy
    key = (
        device,
        stream_id(device),
        metric,
        True,
        dtype,
        tuple((x.data_ptr(), y.data_ptr(), o.data_ptr(), x.shape) for x, y, o in zip(a, b, out)),
    )
    table, W, _ = _cached(key, lambda: _build_table(a, b, out, metric, True, device))
    if W == 0:
        return out
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    if grad.numel() != 1:
        raise ValueError(f"grad must hold one element (the loss gradient), got shape {tuple(grad.shape)}")
    stats = stats.contiguous()
    if stats.numel() == 0:  # no rows ("mse", or "ours" over 1-D tensors): every read is masked, but the kernel
        stats = _PLACEHOLDERS.get((device, acc))  # needs a valid pointer
        if stats is None:
            stats = _PLACEHOLDERS[(device, acc)] = torch.zeros(3, dtype=acc, device=device)
    T = len(a)
    with on_device(device):  # Triton launches on the current CUDA device
        _match_loss_bwd_kernel[(W,)](
            table,
            stats,
            grad,
            T,
            num_rows([t.shape for t in a], metric),
            METRIC=METRICS[metric],
            DT=_TL_DTYPES[dtype],
            ACC=_TL_DTYPES[acc],
            STEPS=_steps(T),
            CHUNK=CHUNK,
            BLOCK=BLOCK,
            F=FIELDS,
            H=HEADER,
        )
    return out
