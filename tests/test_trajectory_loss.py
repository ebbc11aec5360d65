"""trajectory_loss: every available backend against the PyTorch reference (forward, backward, dtypes,
list/flat forms), gradcheck, opcheck, poisoned outputs, input errors, check=True, torch.compile and a
tiny MTT unrolled-SGD check."""

import math

import pytest
import torch
import torch.nn.functional as F

from pydistill import _backend
from pydistill.ops.trajectory_loss import trajectory_loss, trajectory_loss_reference
from tests.conftest import DEVICES, TRITON_DEVICES, poison

HAS_CPP = _backend.has_compiled() and hasattr(torch.ops.pydistill, "trajectory_loss_fwd")


def _cases():
    out = [("reference", d) for d in DEVICES]
    if HAS_CPP:
        out.append(("cpp", "cpu"))
        if _backend.compiled_with_cuda() and torch.cuda.is_available():
            out.append(("cuda", "cuda"))
    out += [("triton", d) for d in TRITON_DEVICES]
    return out


CASES = _cases()
KERNEL_CASES = [c for c in CASES if c[0] != "reference"]
IDS = [f"{b}-{d}" for b, d in CASES]
KERNEL_IDS = [f"{b}-{d}" for b, d in KERNEL_CASES]

LIST_SHAPES = [(5, 3, 3, 3), (5,), (7, 11), (1,), (2, 513), (0,), (3, 1)]


def _make(shapes, dtype, device, requires_grad=True):
    s = [torch.randn(sh, dtype=torch.float32, device=device).to(dtype) for sh in shapes]
    a = [torch.randn(sh, dtype=torch.float32, device=device).to(dtype) for sh in shapes]
    t = [(x.float() + 0.1 * torch.randn_like(x.float())).to(dtype) for x in s]
    for x in s:
        x.requires_grad_(requires_grad)
    return s, a, t


def _ref_fp32(s, a, t):
    """Reference computed from the same (possibly low-precision) inputs in fp32/fp64."""
    up = torch.float64 if s[0].dtype == torch.float64 else torch.float32
    s32 = [x.detach().to(up).requires_grad_() for x in s]
    loss = trajectory_loss_reference(s32, [x.to(up) for x in a], [x.to(up) for x in t])
    return loss, s32


def _tol(dtype):
    return {
        torch.float32: (1e-5, 1e-6),
        torch.float64: (1e-12, 1e-14),
        torch.bfloat16: (2e-2, 1e-3),
        torch.float16: (2e-3, 1e-4),
    }[dtype]


@pytest.mark.parametrize("backend,device", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("form", ["flat1", "flat7", "flat3001", "list"])
def test_matches_reference(backend, device, dtype, form):
    shapes = {"flat1": [(1,)], "flat7": [(7,)], "flat3001": [(3001,)], "list": LIST_SHAPES}[form]
    s, a, t = _make(shapes, dtype, device)
    if form.startswith("flat"):
        s, a, t = s[0], a[0], t[0]
        sl = [s]
    else:
        sl = s
    loss = trajectory_loss(s, a, t, backend=backend)
    assert loss.shape == () and loss.dtype == dtype and loss.device.type == device
    go = torch.tensor(0.37, dtype=dtype, device=device)
    grads = torch.autograd.grad(loss, sl, grad_outputs=go)
    ref, s32 = _ref_fp32(sl, a if isinstance(a, list) else [a], t if isinstance(t, list) else [t])
    ref_grads = torch.autograd.grad(ref, s32, grad_outputs=go.to(ref.dtype))
    rtol, atol = _tol(dtype)
    torch.testing.assert_close(loss.float(), ref.float(), rtol=rtol, atol=atol)
    for g, r, x in zip(grads, ref_grads, sl):
        assert g.shape == x.shape and g.dtype == dtype
        torch.testing.assert_close(g.float(), r.float(), rtol=rtol, atol=atol * 10)


@pytest.mark.parametrize("backend,device", CASES, ids=IDS)
def test_fp16_and_multi_tile(backend, device):
    # sizes crossing the C++ tile (16384) and several Triton chunks; fp16 also accumulates in fp32
    n = 40001 if backend in ("cpp", "cuda", "reference") else 5003
    s, a, t = _make([(n,), (33,)], torch.float16, device)
    loss = trajectory_loss(s, a, t, backend=backend)
    (g0, g1) = torch.autograd.grad(loss, s, grad_outputs=torch.tensor(-2.5, dtype=torch.float16, device=device))
    ref, s32 = _ref_fp32(s, a, t)
    r0, r1 = torch.autograd.grad(ref, s32, grad_outputs=torch.tensor(-2.5, device=device))
    torch.testing.assert_close(loss.float(), ref, rtol=2e-3, atol=0)
    torch.testing.assert_close(g0.float(), r0, rtol=2e-3, atol=1e-6)
    torch.testing.assert_close(g1.float(), r1, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("backend,device", KERNEL_CASES, ids=KERNEL_IDS)
def test_deterministic(backend, device):
    s, a, t = _make([(2999,), (17, 5)], torch.float32, device, requires_grad=False)
    first = trajectory_loss(s, a, t, backend=backend)
    for _ in range(2):
        assert torch.equal(trajectory_loss(s, a, t, backend=backend), first)


@pytest.mark.parametrize("backend,device", CASES, ids=IDS)
def test_gradcheck_fp64(backend, device):
    s, a, t = _make([(3, 5), (4,), (1,)], torch.float64, device)

    def f(*ss):
        return trajectory_loss(list(ss), a, t, backend=backend)

    assert torch.autograd.gradcheck(f, tuple(s), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend,device", CASES, ids=IDS)
def test_opcheck(backend, device):
    s, a, t = _make([(3, 5), (11,)], torch.float32, device)
    torch.library.opcheck(torch.ops.pydistill.trajectory_loss, (s, a, t, backend))
    den = trajectory_loss_reference(a, [x.detach() for x in s], t).float()  # any positive scalar
    grad = torch.tensor(0.7, device=device)
    sd = [x.detach() for x in s]
    torch.library.opcheck(torch.ops.pydistill.trajectory_loss_backward, (grad, sd, t, den, backend))
    if backend in ("cpp", "cuda"):
        torch.library.opcheck(torch.ops.pydistill.trajectory_loss_fwd, (sd, a, t))
        torch.library.opcheck(torch.ops.pydistill.trajectory_loss_bwd, (grad, sd, t, den))
    if backend == "triton":
        torch.library.opcheck(torch.ops.pydistill.trajectory_loss_triton_fwd, (sd, a, t))
        torch.library.opcheck(torch.ops.pydistill.trajectory_loss_triton_bwd, (grad, sd, t, den))


def _prime_nan(shapes, dtype, device):
    """Allocate and free NaN-filled buffers of the output sizes so that a kernel which leaves part of its
    output unwritten (reused memory) shows NaN."""
    bufs = [poison(torch.empty(sh, dtype=dtype, device=device)) for sh in shapes]
    del bufs


@pytest.mark.parametrize("backend,device", KERNEL_CASES, ids=KERNEL_IDS)
def test_poisoned_outputs(backend, device, monkeypatch):
    shapes = [(9, 7), (1013,), (2,)]
    s, a, t = _make(shapes, torch.float32, device)
    if backend == "triton":
        from pydistill.kernels import trajectory_loss as tk

        real = tk._empty
        monkeypatch.setattr(tk, "_empty", lambda *args: poison(real(*args)))
    _prime_nan(shapes + [(), ()], torch.float32, device)
    loss = trajectory_loss(s, a, t, backend=backend)
    _prime_nan(shapes, torch.float32, device)
    grads = torch.autograd.grad(loss, s)
    ref = trajectory_loss_reference(s, a, t)
    ref_grads = torch.autograd.grad(ref, s)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref)
    for g, r in zip(grads, ref_grads):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("backend,device", CASES, ids=IDS)
def test_start_target_are_constants(backend, device):
    s, a, t = _make([(6,), (2, 3)], torch.float32, device)
    for x in a + t:
        x.requires_grad_()
    loss = trajectory_loss(s, a, t, backend=backend)
    grads = torch.autograd.grad(loss, s + a + t, allow_unused=True)
    assert all(g is not None for g in grads[:2])
    assert all(g is None for g in grads[2:])


@pytest.mark.parametrize("backend,device", CASES, ids=IDS)
def test_zero_denominator(backend, device):
    s = torch.randn(13, device=device, requires_grad=True)
    a = torch.randn(13, device=device)
    loss = trajectory_loss(s, a, a.clone(), backend=backend)  # den == 0, num > 0
    assert math.isinf(loss.item())
    both = trajectory_loss(a.clone(), a, a.clone(), backend=backend)
    assert math.isnan(both.item())
    with pytest.raises(ValueError, match="denominator"):
        trajectory_loss(s, a, a.clone(), backend=backend, check=True)
    bad = a.clone()
    bad[3] = float("inf")
    with pytest.raises(ValueError, match="denominator"):
        trajectory_loss(s, bad, a, backend=backend, check=True)
    ok = trajectory_loss(s, a, torch.zeros_like(a), backend=backend, check=True)
    assert torch.isfinite(ok)


def test_bad_inputs():
    x = torch.randn(5)
    with pytest.raises(TypeError, match="student"):
        trajectory_loss("nope", x, x)
    with pytest.raises(TypeError, match=r"start\[1\]"):
        trajectory_loss([x, x], [x, 3], [x, x])
    with pytest.raises(ValueError, match="empty list"):
        trajectory_loss([], [], [])
    with pytest.raises(ValueError, match="same number"):
        trajectory_loss([x, x], [x], [x, x])
    with pytest.raises(ValueError, match=r"target\[0\] has shape"):
        trajectory_loss(x, x, torch.randn(6))
    with pytest.raises(TypeError, match=r"start\[0\] has dtype"):
        trajectory_loss(x, x.double(), x)
    with pytest.raises(TypeError, match="float32, float64"):
        trajectory_loss(x.int(), x.int(), x.int())
    with pytest.raises(ValueError, match="at least one element"):
        trajectory_loss(torch.empty(0), torch.empty(0), torch.empty(0))
    with pytest.raises(ValueError, match="backend"):
        trajectory_loss(x, x, x, backend="fortran")
    if not torch.cuda.is_available():
        with pytest.raises((ValueError, RuntimeError), match="cuda"):
            trajectory_loss(x, x, x, backend="cuda")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            trajectory_loss(x, x.cuda(), x)


@pytest.mark.parametrize("backend,device", CASES, ids=IDS)
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    s, a, t = _make([(4, 3), (5,)], torch.float32, device)

    def f(s0, s1, a, t):
        return 3.0 * trajectory_loss([s0 * 1.5, s1], a, t, backend=backend)

    cf = torch.compile(f, fullgraph=True, backend="aot_eager" if backend != "cpp" else "inductor")
    out = cf(s[0], s[1], a, t)
    g = torch.autograd.grad(out, s)
    ref = f(s[0], s[1], a, t)
    rg = torch.autograd.grad(ref, s)
    torch.testing.assert_close(out, ref)
    for x, y in zip(g, rg):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("backend,device", CASES, ids=IDS)
def test_mtt_unrolled_sgd(backend, device):
    """student = start - lr * grad(CE) unrolled 3 steps on a linear model; d loss / d (lr, images)."""
    gen = torch.Generator().manual_seed(1)
    d_in, n_cls, n_syn = 6, 3, 9
    start = (0.1 * torch.randn(n_cls * d_in + n_cls, generator=gen)).to(device)
    target = start + 0.05 * torch.randn(start.shape, generator=gen).to(device)
    images0 = torch.randn(n_syn, d_in, generator=gen).to(device)
    labels = torch.arange(n_syn, device=device) % n_cls

    def run(loss_fn):
        images = images0.clone().requires_grad_()
        lr = torch.tensor(0.1, device=device, requires_grad=True)
        p = start.clone().requires_grad_()
        for k in range(3):
            w, b = p[: n_cls * d_in].view(n_cls, d_in), p[n_cls * d_in :]
            x = images[3 * k : 3 * k + 3] if k < 2 else images
            ce = F.cross_entropy(x @ w.t() + b, labels[: x.shape[0]] if k < 2 else labels)
            (g,) = torch.autograd.grad(ce, p, create_graph=True)
            p = p - lr * g
        loss = loss_fn(p, start, target)
        return (loss, *torch.autograd.grad(loss, (lr, images)))

    got = run(lambda p, a, t: trajectory_loss(p, a, t, backend=backend))
    want = run(trajectory_loss_reference)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_fake_kernels_check_shapes_and_dtypes():
    """The fake kernels (what torch.compile and FakeTensorMode run) reject mismatched lists and a wrong
    denominator, and return the real kernels' shapes and dtypes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    ops = [lambda *a: torch.ops.pydistill.trajectory_loss(*a, "auto")]
    if HAS_CPP:
        ops.append(torch.ops.pydistill.trajectory_loss_fwd)
    with FakeTensorMode():
        s, t = [torch.randn(3, 4), torch.randn(5)], [torch.randn(3, 4), torch.randn(6)]
        for op in ops:
            with pytest.raises(RuntimeError, match=r"target\[1\] must have the shape of student\[1\]"):
                op(s, s, t)
            with pytest.raises(RuntimeError, match=r"start\[0\] must have dtype"):
                op(s, [s[0].double(), s[1]], s)
            loss, den = op(s, s, s)
            assert loss.shape == () and den.shape == () and den.dtype == torch.float32
        g = torch.tensor(1.0)
        with pytest.raises(RuntimeError, match="den must be one element of dtype torch.float64"):
            torch.ops.pydistill.trajectory_loss_backward(
                g, [x.double() for x in s], [x.double() for x in s], torch.tensor(1.0), "auto"
            )
        grads = torch.ops.pydistill.trajectory_loss_backward(g, s, s, den, "auto")
        assert [x.shape for x in grads] == [x.shape for x in s]
