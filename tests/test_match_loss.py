"""Tests of pydistill.ops.match_loss (DC gradient-matching distance) on every backend available here."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pydistill import _backend
from pydistill.ops.match_loss import METRICS, match_loss, match_loss_reference
from tests.conftest import DEVICES, TRITON_DEVICES, poison

HAVE = _backend.backends()
SHAPES = [(7, 3, 3, 3), (7,), (5, 7, 3, 3), (5,), (3, 13), (4, 5, 6), (7,)]
SMALL = [(3, 2, 2, 2), (3,), (2, 5), (2, 2, 3)]

# (backend, device) pairs that run here.
CASES = [("reference", d) for d in DEVICES]
if HAVE["cpp"]:
    CASES.append(("cpp", "cpu"))
if "cuda" in DEVICES and _backend.compiled_with_cuda():
    CASES.append(("cuda", "cuda"))
CASES += [("triton", d) for d in TRITON_DEVICES]
KERNEL_CASES = [c for c in CASES if c[0] != "reference"]
ids = [f"{b}-{d}" for b, d in CASES]
kids = [f"{b}-{d}" for b, d in KERNEL_CASES]


def _lists(shapes, dtype, device, zero_rows=True):
    syn = [torch.randn(s, dtype=torch.float64) for s in shapes]
    real = [torch.randn(s, dtype=torch.float64) for s in shapes]
    if zero_rows:
        syn[0][2].zero_()  # |a| = 0 on one row
        real[2][1].zero_()  # |b| = 0 on one row
    return ([t.to(device=device, dtype=dtype) for t in syn], [t.to(device=device, dtype=dtype) for t in real])


def _ref_loss_and_grads(syn, real, metric, scale):
    """Reference evaluated in float64 on the (possibly rounded) inputs; grads of scale * loss."""
    s64 = [t.detach().double().requires_grad_() for t in syn]
    loss = match_loss_reference(s64, [t.double() for t in real], metric)
    if not loss.requires_grad:  # "ours" over 1-D tensors only: constant 0
        return loss, [torch.zeros_like(s) for s in s64]
    grads = torch.autograd.grad(loss * scale, s64, allow_unused=True)
    grads = [torch.zeros_like(s) if g is None else g for g, s in zip(grads, s64)]
    return loss.detach(), grads


def _run(syn, real, metric, backend, scale):
    s = [t.detach().clone().requires_grad_() for t in syn]
    loss = match_loss(s, real, metric, backend=backend)
    (loss * scale).backward()
    # the plain reference leaves grad None on 1-D tensors of "ours" (unused); the kernels write zeros
    return loss.detach(), [torch.zeros_like(t) if t.grad is None else t.grad for t in s]


def _close(x, y, dtype, what):
    tol = {
        torch.float32: (2e-5, 2e-5),
        torch.float64: (1e-10, 1e-10),
        torch.bfloat16: (2e-2, 2e-2),
        torch.float16: (4e-3, 4e-3),
    }[dtype]
    torch.testing.assert_close(
        x.double().cpu(),
        y.double().cpu(),
        rtol=tol[0],
        atol=tol[1] * max([1.0] + ([y.abs().max().item()] if y.numel() else [])),
        msg=lambda m: f"{what}: {m}",
    )


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend,device", CASES, ids=ids)
def test_matches_reference(backend, device, dtype, metric):
    syn, real = _lists(SHAPES, dtype, device)
    ref_loss, ref_grads = _ref_loss_and_grads(syn, real, metric, 1.7)
    loss, grads = _run(syn, real, metric, backend, 1.7)
    assert loss.dtype == dtype and loss.dim() == 0
    _close(loss, ref_loss, dtype, "loss")
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert g.dtype == dtype and g.shape == r.shape
        _close(g, r, dtype, f"grad[{i}]")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("backend,device", KERNEL_CASES, ids=kids)
def test_custom_op_reference_backend_agrees(backend, device, metric):
    """The custom op's torch formula (backend='reference' inside the op) and the kernel agree, fp64."""
    syn, real = _lists(SHAPES, torch.float64, device)
    loss_k, stats_k = torch.ops.pydistill.match_loss(syn, real, metric, backend)
    loss_r, stats_r = torch.ops.pydistill.match_loss(syn, real, metric, "reference")
    torch.testing.assert_close(loss_k, loss_r)
    torch.testing.assert_close(stats_k, stats_r)
    g = torch.tensor(-0.3, dtype=torch.float64, device=device)
    gk = torch.ops.pydistill.match_loss_backward(g, syn, real, stats_k, metric, backend)
    gr = torch.ops.pydistill.match_loss_backward(g, syn, real, stats_r, metric, "reference")
    for x, y in zip(gk, gr):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("backend,device", KERNEL_CASES, ids=kids)
def test_long_rows_and_multi_chunk(backend, device, metric):
    """Rows longer than one chunk (cpp 16384, cuda/triton 4096) and a non-contiguous input."""
    shapes = [(3, 17001), (17001,), (4, 5), (2, 3, 5)]
    syn, real = _lists(shapes, torch.float32, device, zero_rows=False)
    syn[2] = torch.randn(5, 4, device=device).t()  # non-contiguous [4, 5]
    assert not syn[2].is_contiguous()
    ref_loss, ref_grads = _ref_loss_and_grads(syn, real, metric, 0.5)
    loss, grads = _run(syn, real, metric, backend, 0.5)
    _close(loss, ref_loss, torch.float32, "loss")
    for g, r in zip(grads, ref_grads):
        _close(g, r, torch.float32, "grad")


@pytest.mark.parametrize("backend,device", KERNEL_CASES, ids=kids)
def test_zero_and_degenerate_inputs(backend, device):
    """All-zero tensors, only 1-D tensors ("ours" -> 0), empty tensors: loss and grads equal the reference."""
    cases = [
        [(torch.zeros(3, 4), torch.zeros(3, 4)), (torch.zeros(2, 2, 2), torch.randn(2, 2, 2))],
        [(torch.randn(5), torch.randn(5)), (torch.randn(3), torch.randn(3))],
        [
            (torch.randn(2, 0), torch.randn(2, 0)),
            (torch.randn(0, 3), torch.randn(0, 3)),
            (torch.randn(3, 2), torch.randn(3, 2)),
        ],
    ]
    for pairs in cases:
        syn = [a.to(device) for a, _ in pairs]
        real = [b.to(device) for _, b in pairs]
        for metric in METRICS:
            ref_loss, ref_grads = _ref_loss_and_grads(syn, real, metric, 2.0)
            loss, grads = _run(syn, real, metric, backend, 2.0)
            _close(loss, ref_loss, torch.float32, f"{metric} loss")
            for g, r in zip(grads, ref_grads):
                _close(g, r, torch.float32, f"{metric} grad")


@pytest.mark.parametrize("backend,device", CASES, ids=ids)
def test_float16(backend, device):
    # no zero rows: their gradient -b / 1e-6 overflows float16 in every implementation
    syn, real = _lists(SHAPES, torch.float16, device, zero_rows=False)
    for metric in METRICS:
        ref_loss, ref_grads = _ref_loss_and_grads(syn, real, metric, 1.0)
        loss, grads = _run(syn, real, metric, backend, 1.0)
        _close(loss, ref_loss, torch.float16, "loss")
        for g, r in zip(grads, ref_grads):
            _close(g, r, torch.float16, "grad")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("backend,device", KERNEL_CASES, ids=kids)
def test_gradcheck_float64(backend, device, metric):
    syn, real = _lists(SMALL[1:] if backend == "triton" else SMALL, torch.float64, device, zero_rows=False)
    syn = [t.requires_grad_() for t in syn]
    n = len(syn)

    def f(*xs):
        return match_loss(list(xs[:n]), real, metric, backend=backend)

    assert torch.autograd.gradcheck(f, tuple(syn), fast_mode=backend == "triton")


@pytest.mark.parametrize("backend,device", KERNEL_CASES, ids=kids)
def test_deterministic(backend, device):
    syn, real = _lists([(5, 4100), (4200,), (9, 3, 3, 3)], torch.float32, device, zero_rows=False)
    for metric in METRICS:
        l1, s1 = torch.ops.pydistill.match_loss(syn, real, metric, backend)
        l2, s2 = torch.ops.pydistill.match_loss(syn, real, metric, backend)
        assert torch.equal(l1, l2) and torch.equal(s1, s2)


@pytest.mark.parametrize("backend,device", CASES, ids=ids)
def test_opcheck_custom_ops(backend, device):
    syn, real = _lists(SMALL, torch.float32, device, zero_rows=False)
    # the interpreter is slow: one metric for triton on the CPU (the fake kernels are checked per metric elsewhere)
    metrics = ["ours"] if (backend == "triton" and device == "cpu") else METRICS
    for metric in metrics:
        args = ([t.requires_grad_() for t in syn], real, metric, backend)
        torch.library.opcheck(torch.ops.pydistill.match_loss.default, args)
        _, stats = torch.ops.pydistill.match_loss(syn, real, metric, backend)
        g = torch.tensor(1.3, device=device)
        utils = ("test_schema", "test_faketensor")
        if metric == "ours":
            utils += ("test_autograd_registration", "test_aot_dispatch_dynamic")
        torch.library.opcheck(
            torch.ops.pydistill.match_loss_backward.default,
            (g, [t.detach() for t in syn], real, stats, metric, backend),
            test_utils=utils,
        )


@pytest.mark.skipif(not HAVE["cpp"], reason="pydistill._C not built")
@pytest.mark.parametrize("device", [d for d in DEVICES if d == "cpu" or _backend.compiled_with_cuda()])
def test_opcheck_compiled_ops(device):
    syn, real = _lists(SMALL, torch.float32, device, zero_rows=False)
    for metric in METRICS:
        torch.library.opcheck(torch.ops.pydistill.match_loss_fwd.default, (syn, real, metric))
        loss, stats = torch.ops.pydistill.match_loss_fwd(syn, real, metric)
        g = torch.tensor(0.7, device=device)
        torch.library.opcheck(torch.ops.pydistill.match_loss_bwd.default, (g, syn, real, stats, metric))
        if metric != "ours":
            continue
        torch.library.opcheck(
            torch.ops.pydistill.match_loss_fwd_out.default,
            (syn, real, metric, torch.empty_like(loss), torch.empty_like(stats)),
        )
        torch.library.opcheck(
            torch.ops.pydistill.match_loss_bwd_out.default,
            (g, syn, real, stats, metric, [torch.empty_like(t) for t in syn]),
        )


@pytest.mark.parametrize("backend,device", KERNEL_CASES, ids=kids)
def test_poisoned_outputs(backend, device):
    """NaN-filled output buffers are fully overwritten (1-D tensors of "ours" get exact zeros)."""
    syn, real = _lists(SHAPES, torch.float32, device)
    for metric in METRICS:
        ref_loss, ref_stats = torch.ops.pydistill.match_loss(syn, real, metric, "reference")
        loss, stats = poison(torch.empty_like(ref_loss)), poison(torch.empty_like(ref_stats))
        g = torch.tensor(1.5, device=device)
        grads = [poison(torch.empty_like(t)) for t in syn]
        if backend == "triton":
            from pydistill.kernels import match_loss as tk

            tk.match_loss_fwd(syn, real, metric, loss=loss, stats=stats)
            tk.match_loss_bwd(g, syn, real, stats, metric, out=grads)
        else:
            torch.ops.pydistill.match_loss_fwd_out(syn, real, metric, loss, stats)
            torch.ops.pydistill.match_loss_bwd_out(g, syn, real, stats, metric, grads)
        ref_grads = torch.ops.pydistill.match_loss_backward(g, syn, real, ref_stats, metric, "reference")
        torch.testing.assert_close(loss, ref_loss, rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(stats, ref_stats, rtol=2e-5, atol=2e-5)
        for i, (x, y) in enumerate(zip(grads, ref_grads)):
            assert not x.isnan().any(), f"{metric}: grad[{i}] has unwritten elements"
            torch.testing.assert_close(x, y, rtol=2e-5, atol=2e-5)
            if metric == "ours" and x.dim() < 2:
                assert (x == 0).all()


def test_errors():
    a = [torch.randn(3, 4), torch.randn(3)]
    b = [torch.randn(3, 4), torch.randn(3)]
    with pytest.raises(ValueError, match="gw_syn must be a non-empty"):
        match_loss([], [])
    with pytest.raises(ValueError, match="same length"):
        match_loss(a, b[:1])
    with pytest.raises(ValueError, match=r"gw_real\[1\] must have the shape of gw_syn\[1\]"):
        match_loss(a, [b[0], torch.randn(4)])
    with pytest.raises(TypeError, match=r"gw_real\[0\] must have dtype"):
        match_loss(a, [b[0].double(), b[1]])
    with pytest.raises(TypeError, match=r"gw_syn\[1\] must have dtype"):
        match_loss([a[0], a[1].half()], b)
    with pytest.raises(ValueError, match=r"gw_real\[1\] must be on"):
        match_loss(a, [b[0], torch.empty(3, device="meta")])
    with pytest.raises(TypeError, match="float32/float64"):
        match_loss([torch.ones(3, 4, dtype=torch.int64)], [torch.ones(3, 4, dtype=torch.int64)])
    with pytest.raises(ValueError, match="metric must be one of"):
        match_loss(a, b, metric="l2")
    with pytest.raises(ValueError, match="backend must be one of"):
        match_loss(a, b, backend="fast")
    with pytest.raises(TypeError, match="gw_syn must be a list"):
        match_loss(torch.randn(3), b)
    with pytest.raises(TypeError, match=r"gw_real\[1\] must be a torch.Tensor"):
        match_loss(a, [b[0], 3.0])
    if HAVE["cpp"]:  # the compiled op checks on its own too
        with pytest.raises(RuntimeError, match="metric must be one of"):
            torch.ops.pydistill.match_loss_fwd(a, b, "l2")
        with pytest.raises(RuntimeError, match=r"gw_syn\[1\] has shape"):
            torch.ops.pydistill.match_loss_fwd(a, [b[0], torch.randn(4)], "ours")


def test_gw_real_gets_no_gradient():
    syn, real = _lists(SMALL, torch.float32, "cpu", zero_rows=False)
    syn = [t.requires_grad_() for t in syn]
    real = [t.requires_grad_() for t in real]
    backend = "cpp" if HAVE["cpp"] else "reference"
    match_loss(syn, real, backend=backend).backward()
    assert all(t.grad is not None for t in syn) and all(t.grad is None for t in real)


@pytest.mark.parametrize("backend", ["reference"] + (["cpp"] if HAVE["cpp"] else []))
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    syn, real = _lists(SMALL, torch.float32, "cpu", zero_rows=False)

    def f(syn, real):
        return 2.0 * match_loss(syn, real, "ours", backend=backend) + match_loss(syn, real, "mse", backend=backend)

    s1 = [t.clone().requires_grad_() for t in syn]
    s2 = [t.clone().requires_grad_() for t in syn]
    out = torch.compile(f, fullgraph=True, backend="inductor" if backend == "cpp" else "aot_eager")(s1, real)
    out.backward()
    ref = f(s2, real)
    ref.backward()
    torch.testing.assert_close(out, ref)
    for x, y in zip(s1, s2):
        torch.testing.assert_close(x.grad, y.grad)


class _TinyConvNet(nn.Module):
    """ConvNet of DC in miniature: conv(bias) - instancenorm (GroupNorm) - relu - avgpool, then linear."""

    def __init__(self, width=4, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.GroupNorm(width, width, affine=True)
        self.fc = nn.Linear(width * 4 * 4, classes)

    def forward(self, x):
        x = F.avg_pool2d(F.relu(self.norm(self.conv(x))), 2)
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("backend,device", KERNEL_CASES, ids=kids)
def test_dc_image_gradient(backend, device, metric):
    """Gradient w.r.t. synthetic images through create_graph gradients equals the reference's."""
    net = _TinyConvNet().to(device).double()
    params = list(net.parameters())
    x_real = torch.randn(5, 3, 8, 8, dtype=torch.float64, device=device)
    y_real = torch.randint(0, 3, (5,), device=device)
    img = torch.randn(3, 3, 8, 8, dtype=torch.float64, device=device, requires_grad=True)
    y_syn = torch.arange(3, device=device)
    gw_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(x_real), y_real), params)]

    def image_grad(fn):
        gw_syn = torch.autograd.grad(F.cross_entropy(net(img), y_syn), params, create_graph=True)
        return torch.autograd.grad(fn(list(gw_syn)), img)[0]

    got = image_grad(lambda gs: match_loss(gs, gw_real, metric, backend=backend))
    want = image_grad(lambda gs: match_loss_reference(gs, gw_real, metric))
    assert got.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_fake_kernels_check_shapes_and_dtypes():
    """The fake kernels (what torch.compile and FakeTensorMode run) reject mismatched lists, a wrong stats
    buffer and an unknown metric, and return the real kernels' shapes and dtypes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    ops = [lambda *a: torch.ops.pydistill.match_loss(*a, "auto")]
    if HAVE["cpp"]:
        ops.append(torch.ops.pydistill.match_loss_fwd)
    with FakeTensorMode():
        a, b = [torch.randn(3, 4), torch.randn(3)], [torch.randn(3, 4), torch.randn(4)]
        for op in ops:
            with pytest.raises(RuntimeError, match=r"gw_real\[1\] must have the shape of gw_syn\[1\]"):
                op(a, b, "ours")
            with pytest.raises(RuntimeError, match=r"gw_real\[0\] must have dtype"):
                op(a, [a[0].double(), a[1]], "ours")
            with pytest.raises(RuntimeError, match="metric must be one of"):
                op(a, a, "l2")
            loss, stats = op(a, a, "ours")
            assert loss.shape == () and loss.dtype == torch.float32
            assert stats.shape == (3, 3) and stats.dtype == torch.float32
        g = torch.tensor(1.0)
        with pytest.raises(RuntimeError, match=r"stats must be \[3, 3\]"):
            torch.ops.pydistill.match_loss_backward(g, a, a, torch.empty(2, 3), "ours", "auto")
        grads = torch.ops.pydistill.match_loss_backward(g, a, a, stats, "ours", "auto")
        assert [t.shape for t in grads] == [t.shape for t in a]
