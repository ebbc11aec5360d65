"""diff_augment (DSA): fused Triton kernels vs the PyTorch reference vs the original-style sequential pipeline."""

import math
import pickle

import pytest
import torch

import pydistill.ops
from pydistill.ops.diff_augment import (
    GROUPS,
    DSAParams,
    _kernel_table,
    _triton_spec,
    diff_augment,
    diff_augment_reference,
    diff_augment_sequential,
    sample_dsa_params,
)
from tests.conftest import DEVICES, TRITON_DEVICES, poison

DEFAULT = "color_crop_cutout_flip_scale_rotate"
triton_only = pytest.mark.skipif(not TRITON_DEVICES, reason="Triton needs CUDA or TRITON_INTERPRET=1")


def _force(params: DSAParams, groups) -> DSAParams:
    """The same params with exactly ``groups`` active (shared activation row)."""
    act = torch.zeros(1, len(GROUPS), dtype=torch.bool, device=params.device)
    for g in groups:
        act[0, GROUPS.index(g)] = True
    params.active = act
    return params


def _grads(x, params, backend, g):
    xs = x.detach().clone().requires_grad_()
    if backend == "ref":
        out = diff_augment_reference(xs, params)
    elif backend == "seq":
        out = diff_augment_sequential(xs, params)
    else:
        out = diff_augment(xs, params=params, backend=backend)
    (gx,) = torch.autograd.grad(out, xs, g)
    return out.detach(), gx


# ------------------------------------------------------------------------------------ kernel vs reference
CASES = [(s, m) for s in GROUPS for m in ("all",)] + [
    (DEFAULT, "all"),
    (DEFAULT, "one"),
    ("flip_scale_crop_rotate_cutout", "all"),
    ("rotate_cutout_scale_crop", "all"),
]


@triton_only
@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("strategy,mode", CASES)
def test_triton_matches_reference(device, strategy, mode, per_sample):
    shape = (3, 3, 9, 9) if per_sample else (3, 1, 11, 13)
    x = torch.randn(shape, device=device)
    g = torch.randn(shape, device=device)
    p = sample_dsa_params(3, strategy, mode, per_sample, height=shape[2], width=shape[3], device=device)
    if strategy == "cutout":  # make sure a hole is visible
        p.centre[:] = torch.tensor([shape[2] // 2, shape[3] // 2], device=device)
    out_r, g_r = _grads(x, p, "ref", g)
    out_t, g_t = _grads(x, p, "triton", g)
    torch.testing.assert_close(out_t, out_r, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(g_t, g_r, atol=2e-5, rtol=1e-5)


@triton_only
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_poisoned_output(device):
    from pydistill.kernels import diff_augment as tk

    x = torch.randn(3, 3, 11, 13, device=device)
    p = sample_dsa_params(3, DEFAULT, "all", True, height=11, width=13, device=device)
    flags, spec = _triton_spec(p.strategy)
    table = poison(torch.empty(3, tk.table_width(3, 11, 13)))
    tk.diff_augment_table(
        x,
        p.tensors(),
        cut_h=p.cutout_size[0],
        cut_w=p.cutout_size[1],
        mean=True,
        dtype=torch.float32,
        out=table,
        **spec,
    )
    assert torch.isfinite(table[:, : tk.K]).all()
    out = poison(torch.empty_like(x))
    tk.diff_augment_fwd(x, table, out=out, **flags)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, diff_augment_reference(x, p), atol=2e-5, rtol=1e-5)


@triton_only
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_bf16(device):
    x = torch.randn(3, 3, 9, 11, device=device)
    g = torch.randn_like(x)
    p = sample_dsa_params(3, DEFAULT, "all", True, height=9, width=11, device=device)
    out_r, g_r = _grads(x, p, "ref", g)
    out_b, g_b = _grads(x.bfloat16(), p, "triton", g.bfloat16())
    assert out_b.dtype == torch.bfloat16 and g_b.dtype == torch.bfloat16
    torch.testing.assert_close(out_b.float(), out_r, atol=0.1, rtol=0.05)
    torch.testing.assert_close(g_b.float(), g_r, atol=0.1, rtol=0.05)


# ------------------------------------------------------------------------------------ gradients / opcheck
@pytest.mark.parametrize("per_sample", [False, True])
def test_gradcheck_reference(per_sample):
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    p = sample_dsa_params(2, DEFAULT, "all", per_sample, height=5, width=6)
    assert torch.autograd.gradcheck(lambda t: diff_augment_reference(t, p), (x,))
    f = lambda t: diff_augment(t, params=p, backend="reference")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,), fast_mode=True)
    if per_sample:  # double backward (used through create_graph) of the registered op
        assert torch.autograd.gradgradcheck(f, (x,), fast_mode=True)


@triton_only
@pytest.mark.parametrize(
    "device",
    [
        pytest.param(
            d,
            marks=pytest.mark.xfail(
                d == "cuda",
                reason="Triton 3.6 fails to compile the fp64 backward "
                "on sm_90 (arith.select layout error, seen on H100); 'auto' uses the "
                "reference for fp64",
                strict=False,
            ),
        )
        for d in TRITON_DEVICES
    ],
)
def test_gradcheck_triton(device):
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, device=device, requires_grad=True)
    p = sample_dsa_params(2, DEFAULT, "all", True, height=5, width=6, device=device)
    out = diff_augment(x, params=p, backend="triton")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, diff_augment_reference(x, p), atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda t: diff_augment(t, params=p, backend="triton"), (x,), fast_mode=True)


def _op_args(x, p, backend):
    return (x, *p.tensors(), p.strategy, *p.cutout_size, backend)


@pytest.mark.parametrize("backend", ["reference"] + (["triton"] if TRITON_DEVICES else []))
def test_opcheck(backend):
    device = "cpu" if backend == "reference" else TRITON_DEVICES[0]
    x = torch.randn(2, 3, 5, 7, device=device, requires_grad=True)
    p = sample_dsa_params(2, DEFAULT, "all", True, height=5, width=7, device=device)
    torch.library.opcheck(torch.ops.pydistill.diff_augment.default, _op_args(x, p, backend))


def test_torch_compile_fullgraph():
    x = torch.randn(3, 3, 9, 11, requires_grad=True)
    p = sample_dsa_params(3, DEFAULT, "all", True, height=9, width=11)

    def f(t):
        return diff_augment(t, params=p, backend="reference").square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    loss_c = compiled(x)
    (g_c,) = torch.autograd.grad(loss_c, x)
    loss_e = f(x)
    (g_e,) = torch.autograd.grad(loss_e, x)
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(g_c, g_e)


# ------------------------------------------------------------------------------------ semantics
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("per_sample", [False, True])
def test_mode_one_matches_original_sequential(device, group, per_sample):
    x = torch.randn(3, 3, 11, 13, device=device)
    g = torch.randn_like(x)
    p = _force(sample_dsa_params(3, DEFAULT, "one", per_sample, height=11, width=13, device=device), [group])
    out_s, g_s = _grads(x, p, "seq", g)
    out_r, g_r = _grads(x, p, "ref", g)
    torch.testing.assert_close(out_r, out_s, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_r, g_s, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("group", [*GROUPS, None])
def test_cpu_auto_one_shared_group_takes_the_exact_sequential_pass(group, monkeypatch):
    """On the CPU, "auto" with one shared group runs that group's own pass; it equals the reference (values and
    gradients) and is not used for several groups or an explicit backend."""
    import importlib

    da = importlib.import_module("pydistill.ops.diff_augment")  # the module (pydistill.ops.diff_augment is the op)
    calls = []
    real_seq = da.diff_augment_sequential
    monkeypatch.setattr(da, "diff_augment_sequential", lambda x, p: calls.append(1) or real_seq(x, p))
    x = torch.randn(4, 3, 9, 11, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 3, 9, 11, dtype=torch.float64)
    p = _force(sample_dsa_params(1, DEFAULT, "one", False, height=9, width=11), [group] if group else [])
    out = da.diff_augment(x, params=p)
    (gx,) = torch.autograd.grad(out, x, g)
    assert calls == [1]
    ref = diff_augment_reference(x, p)
    (gr,) = torch.autograd.grad(ref, x, g)
    # the parameters are float32, so both sides agree to float32 rounding of the sampling grid
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, gr, atol=1e-5, rtol=1e-5)
    calls.clear()
    da.diff_augment(x, params=sample_dsa_params(1, DEFAULT, "all", False, height=9, width=11))
    da.diff_augment(x, params=p, backend="reference")
    assert calls == []


@pytest.mark.parametrize(
    "strategy", ["color_crop_cutout_flip_scale", "color_rotate_crop_flip_cutout", "scale_crop_flip_cutout"]
)
def test_all_with_one_resample_matches_sequential(strategy):
    # with at most one scale/rotate stage the fused map interpolates exactly as often as the original
    x = torch.randn(3, 3, 11, 13)
    p = sample_dsa_params(3, strategy, "all", True, height=11, width=13)
    torch.testing.assert_close(diff_augment_reference(x, p), diff_augment_sequential(x, p), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference"] + (["triton"] if TRITON_DEVICES else []))
def test_identity_is_exact(backend):
    device = "cpu" if backend == "reference" else TRITON_DEVICES[0]
    x = torch.randn(2, 3, 9, 11, device=device)
    p = sample_dsa_params(
        2, "crop_cutout_flip_scale_rotate", "all", True, height=9, width=11, device=device, cutout=0.0
    )
    p.scale.fill_(1.0)
    p.angle.zero_()
    p.shift.zero_()
    p.flip.fill_(False)
    assert torch.equal(diff_augment(x, params=p, backend=backend), x)
    q = _force(sample_dsa_params(2, DEFAULT, "all", False, height=9, width=11, device=device), [])
    assert torch.equal(diff_augment(x, params=q, backend=backend), x)


@pytest.mark.parametrize("backend", ["reference"] + (["triton"] if TRITON_DEVICES else []))
def test_siamese_shared_params_any_batch(backend):
    device = "cpu" if backend == "reference" else TRITON_DEVICES[0]
    x = torch.randn(4, 3, 9, 11, device=device)
    gen = torch.Generator(device=device).manual_seed(3)
    out, p = diff_augment(x, mode="all", return_params=True, generator=gen, backend=backend)
    assert p.batch_size == 1
    out2 = diff_augment(x[:2], params=p, backend=backend)
    torch.testing.assert_close(out2, out[:2], atol=0, rtol=0)
    # a shared draw transforms every image the same way: equal images give equal outputs
    same = x[:1].expand(3, -1, -1, -1).contiguous()
    o = diff_augment(same, params=p, backend=backend)
    torch.testing.assert_close(o[1:], o[:1].expand(2, -1, -1, -1), atol=0, rtol=0)


def test_generator_reproducible_and_device_side():
    a = sample_dsa_params(5, per_sample=True, height=8, width=8, generator=torch.Generator().manual_seed(1))
    b = sample_dsa_params(5, per_sample=True, height=8, width=8, generator=torch.Generator().manual_seed(1))
    for ta, tb in zip(a.tensors(), b.tensors()):
        assert torch.equal(ta, tb)
    c = pickle.loads(pickle.dumps(a))
    assert all(torch.equal(ta, tc) for ta, tc in zip(a.tensors(), c.tensors())) and c.strategy == a.strategy
    d = a.to("cpu")
    assert d.device.type == "cpu" and d.batch_size == 5


def test_param_distribution():
    n, H, W = 20000, 32, 24
    p = sample_dsa_params(n, DEFAULT, "all", True, height=H, width=W, generator=torch.Generator().manual_seed(0))
    assert p.active.shape == (1, 6) and p.active.all()
    assert abs(p.flip.float().mean().item() - 0.5) < 0.02
    assert p.brightness.min() >= -0.5 and p.brightness.max() < 0.5 and abs(p.brightness.mean()) < 0.02
    assert p.saturation.min() >= 0 and p.saturation.max() < 2 and abs(p.saturation.mean() - 1) < 0.03
    assert p.contrast.min() >= 0.5 and p.contrast.max() < 1.5
    assert p.scale.min() >= 1 / 1.2 - 1e-6 and p.scale.max() <= 1.2 + 1e-6
    deg = p.angle * 180 / math.pi
    assert deg.min() >= -15 and deg.max() <= 15 and deg.min() < -14.5 and deg.max() > 14.5
    mh, mw = int(H * 0.125 + 0.5), int(W * 0.125 + 0.5)
    assert set(p.shift[:, 0].tolist()) == set(range(-mh, mh + 1))
    assert set(p.shift[:, 1].tolist()) == set(range(-mw, mw + 1))
    assert p.cutout_size == (16, 12)
    assert set(p.centre[:, 0].tolist()) == set(range(H + 1)) and set(p.centre[:, 1].tolist()) == set(range(W + 1))
    # mode "one": one group per call, roughly uniform over the strategy's groups
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(6)
    for _ in range(600):
        q = sample_dsa_params(4, "crop_flip_rotate", "one", True, height=8, width=8, generator=gen)
        assert q.active.shape == (1, 6) and q.active.sum() == 1
        counts += q.active[0].float()
    assert counts[[0, 2, 4]].sum() == 0 and (counts[[1, 3, 5]] > 150).all()


def test_public_exports():
    for name in ("diff_augment", "diff_augment_reference", "DSAParams", "sample_dsa_params"):
        assert callable(getattr(pydistill.ops, name))
    x = torch.randn(2, 3, 8, 8)
    p = sample_dsa_params(2, height=8, width=8)
    assert torch.equal(pydistill.ops.diff_augment(x, params=p), diff_augment(x, params=p))


def test_auto_backend_on_cpu_is_reference():
    x = torch.randn(2, 3, 8, 8)
    p = sample_dsa_params(2, DEFAULT, "all", True, height=8, width=8)
    assert torch.equal(diff_augment(x, params=p), diff_augment_reference(x, p))


def test_validation_errors():
    x = torch.randn(2, 3, 8, 8)
    p = sample_dsa_params(2, DEFAULT, "all", True, height=8, width=8)
    with pytest.raises(ValueError, match="4-D"):
        diff_augment(torch.randn(3, 8, 8))
    with pytest.raises(TypeError, match="floating"):
        diff_augment(torch.ones(2, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown group 'blur'"):
        diff_augment(x, "color_blur")
    with pytest.raises(ValueError, match="mode"):
        diff_augment(x, mode="some")
    with pytest.raises(ValueError, match="ratio scale"):
        diff_augment(x, ratios={"scale": 0.5})
    with pytest.raises(ValueError, match="unknown DSA ratio"):
        sample_dsa_params(2, height=8, width=8, blur=1.0)
    with pytest.raises(ValueError, match="'color' must be the first"):
        sample_dsa_params(2, "crop_color", "all", height=8, width=8)
    with pytest.raises(ValueError, match="drawn for 8x8"):
        diff_augment(torch.randn(2, 3, 9, 8), params=p)
    with pytest.raises(ValueError, match=r"params.brightness must have shape \[1 or 3\]"):
        diff_augment(torch.randn(3, 3, 8, 8), params=p)
    with pytest.raises(TypeError, match="DSAParams"):
        diff_augment(x, params={"angle": 0})
    with pytest.raises(ValueError, match="backend"):
        diff_augment(x, params=p, backend="tpu")
    with pytest.raises(ValueError, match="height"):
        diff_augment(torch.randn(2, 3, 1, 8))


# ------------------------------------------------------------------------------------ table kernel / sampler
@triton_only
@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "strategy,mode,per_sample",
    [
        (DEFAULT, "all", True),
        (DEFAULT, "all", False),
        (DEFAULT, "one", True),
        ("flip_scale_crop_rotate_cutout", "all", True),
        ("rotate_cutout_scale_crop", "all", False),
        ("cutout_flip_crop", "all", True),
        ("scale", "all", True),
    ],
)
def test_table_kernel_matches_torch_table(device, dtype, strategy, mode, per_sample):
    """The one-launch table equals the torch specification ``_kernel_table`` (+ the per-image mean column)."""
    from pydistill.kernels import diff_augment as tk

    N, C, H, W = 3, 2, 7, 10
    x = torch.randn(N, C, H, W, device=device, dtype=dtype)
    p = sample_dsa_params(N, strategy, mode, per_sample, height=H, width=W, device=device)
    if "color" in strategy and mode == "one":
        p = _force(p, ["color"])  # exercise the mean column
    flags, spec = _triton_spec(p.strategy)
    table = poison(torch.empty(N, tk.table_width(C, H, W), dtype=dtype, device=device))
    tk.diff_augment_table(
        x, p.tensors(), cut_h=p.cutout_size[0], cut_w=p.cutout_size[1], mean=True, dtype=dtype, out=table, **spec
    )
    ref, ref_flags = _kernel_table(*p.tensors(), p.strategy, *p.cutout_size, H, W, dtype)
    assert ref_flags == flags
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(table[:, : tk.K - 1], ref.expand(N, -1), **tol)
    colour_on = p.active[:, 0].expand(N) if "color" in strategy else torch.zeros(N, dtype=torch.bool)
    mean = torch.where(colour_on.to(device), x.mean((1, 2, 3)), torch.zeros((), dtype=dtype, device=device))
    torch.testing.assert_close(table[:, tk.K - 1], mean, **tol)


@triton_only
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_table_reads_strided_params(device):
    """Parameters may be strided views (as sample_dsa_params returns) or contiguous copies: same result."""
    x = torch.randn(3, 3, 9, 11, device=device)
    p = sample_dsa_params(3, DEFAULT, "all", True, height=9, width=11, device=device)
    assert not p.brightness.is_contiguous()
    q = DSAParams(p.strategy, p.height, p.width, p.cutout_size, *(t.contiguous() for t in p.tensors()))
    torch.testing.assert_close(
        diff_augment(x, params=p, backend="triton"), diff_augment(x, params=q, backend="triton"), atol=0, rtol=0
    )


@triton_only
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_backward_twice_reuses_table(device):
    """retain_graph: the eager path reuses the forward's table (scratch slots overwritten, not accumulated)."""
    x = torch.randn(2, 3, 9, 11, device=device, requires_grad=True)
    p = _force(sample_dsa_params(2, DEFAULT, "all", True, height=9, width=11, device=device), ["color", "rotate"])
    g = torch.randn(2, 3, 9, 11, device=device)
    out = diff_augment(x, params=p, backend="triton")
    (g1,) = torch.autograd.grad(out, x, g, retain_graph=True)
    (g2,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(g1, g2, atol=0, rtol=0)
    _, g_r = _grads(x.detach(), p, "ref", g)
    torch.testing.assert_close(g1, g_r, atol=2e-5, rtol=1e-5)


def _ks_uniform(v: torch.Tensor, lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov distance between the sample v and U(lo, hi)."""
    v = ((v.double() - lo) / (hi - lo)).sort().values
    n = v.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - v).max().item(), (v - (i - 1) / n).max().item())


def test_param_distribution_statistics():
    """Each field follows its documented law (KS / chi-square at n = 20000; fixed seed, so deterministic)."""
    n, H, W = 20000, 13, 10
    r = dict(brightness=0.8, saturation=1.5, contrast=0.3, crop=0.25, cutout=0.3, flip=0.3, scale=1.5, rotate=20.0)
    p = sample_dsa_params(n, DEFAULT, "all", True, height=H, width=W, generator=torch.Generator().manual_seed(5), **r)
    crit = 1.63 / math.sqrt(n)  # KS critical value at alpha = 0.01
    assert _ks_uniform(p.brightness, -0.4, 0.4) < crit
    assert _ks_uniform(p.saturation, 0.0, 1.5) < crit
    assert _ks_uniform(p.contrast, 0.3, 1.3) < crit
    assert _ks_uniform(p.scale[:, 0], 1 / 1.5, 1.5) < crit and _ks_uniform(p.scale[:, 1], 1 / 1.5, 1.5) < crit
    assert _ks_uniform(p.angle, -20 * math.pi / 180, 20 * math.pi / 180) < crit
    assert abs(p.flip.double().mean().item() - 0.3) < 4 * math.sqrt(0.21 / n)

    def chi2_uniform(v, values):  # Pearson statistic against a uniform law on ``values``
        counts = torch.stack([(v == k).sum() for k in values]).double()
        assert counts.sum() == v.numel()
        e = v.numel() / len(values)
        return ((counts - e) ** 2 / e).sum().item(), len(values) - 1

    def ok(stat_df):  # chi-square upper tail ~ 0.001 via the Wilson-Hilferty approximation
        stat, df = stat_df
        z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
        return z < 3.1

    mh, mw = int(H * 0.25 + 0.5), int(W * 0.25 + 0.5)
    assert ok(chi2_uniform(p.shift[:, 0], range(-mh, mh + 1))) and ok(chi2_uniform(p.shift[:, 1], range(-mw, mw + 1)))
    ch, cw = p.cutout_size
    assert (ch, cw) == (int(H * 0.3 + 0.5), int(W * 0.3 + 0.5))
    assert ok(chi2_uniform(p.centre[:, 0], range(H + 1 - ch % 2)))
    assert ok(chi2_uniform(p.centre[:, 1], range(W + 1 - cw % 2)))
    # fields come from distinct columns of one draw: independent (sample correlations ~ N(0, 1/n))
    cols = torch.stack(
        [
            p.brightness,
            p.saturation,
            p.contrast,
            p.angle,
            p.scale[:, 0],
            p.scale[:, 1],
            p.shift[:, 0].float(),
            p.centre[:, 1].float(),
            p.flip.float(),
        ]
    ).double()
    corr = torch.corrcoef(cols)
    assert (corr - torch.eye(len(cols), dtype=torch.float64)).abs().max() < 4.5 / math.sqrt(n)
    # mode "one": the group pick is uniform over the strategy's groups
    gen = torch.Generator().manual_seed(1)
    picks = torch.stack(
        [
            sample_dsa_params(1, "crop_flip_rotate_color", "one", height=8, width=8, generator=gen).active[0].float()
            for _ in range(1200)
        ]
    )
    assert (picks.sum(1) == 1).all() and picks[:, [2, 4]].sum() == 0
    k = picks.argmax(1)
    assert ok(chi2_uniform(k, [0, 1, 3, 5]))


def test_sampled_params_independent_of_the_cache():
    """The cached constants are never handed out: editing returned params in place cannot leak into later draws."""
    a = sample_dsa_params(4, DEFAULT, "all", True, height=8, width=8, generator=torch.Generator().manual_seed(2))
    for t in a.tensors():
        t.zero_() if t.dtype != torch.bool else t.fill_(False)
    b = sample_dsa_params(4, DEFAULT, "all", True, height=8, width=8, generator=torch.Generator().manual_seed(2))
    c = sample_dsa_params(4, DEFAULT, "all", True, height=8, width=8, generator=torch.Generator().manual_seed(2))
    assert b.active.all() and all(torch.equal(x, y) for x, y in zip(b.tensors(), c.tensors()))
    assert (b.contrast >= 0.5).all()


def test_fake_kernels_check_shapes_and_dtypes():
    """The fake kernels (what torch.compile and FakeTensorMode run) reject what ``_check_params`` rejects and
    return a contiguous batch of x's shape."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    p = sample_dsa_params(2, DEFAULT, "all", True, height=8, width=8)
    x = mode.from_tensor(torch.randn(2, 3, 8, 8))
    ts = [mode.from_tensor(t) for t in p.tensors()]
    static = (p.strategy, *p.cutout_size, "auto")
    with mode:
        for op in (torch.ops.pydistill.diff_augment, torch.ops.pydistill.diff_augment_backward):
            assert op(x, *ts, *static).shape == (2, 3, 8, 8)
            with pytest.raises(RuntimeError, match="4-D NCHW"):
                op(x[0], *ts, *static)
            with pytest.raises(RuntimeError, match=r"brightness must have shape \[1 or 3\]"):
                op(torch.randn(3, 3, 8, 8), *ts, *static)
            with pytest.raises(RuntimeError, match="active must be a bool tensor"):
                op(x, ts[0].float(), *ts[1:], *static)
