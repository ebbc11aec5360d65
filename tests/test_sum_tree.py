"""SumTree: every backend against numpy and the PyTorch reference, sampling statistics, errors, checkpoints."""

import io
import math

import numpy as np
import pytest
import torch

from pydistill.ops.sum_tree import (
    _HAS_OPS,
    SumTree,
    importance_weights,
    sum_tree_sample_reference,
    sum_tree_update_reference,
)
from tests.conftest import DEVICES

scipy_stats = pytest.importorskip("scipy.stats")

CAPACITIES = [1, 5, 1000, 1023, 1025]


def _combos():
    out = []
    for dev in DEVICES:
        out.append((dev, "reference"))
        if dev == "cpu":
            out.append(pytest.param(dev, "cpp", marks=pytest.mark.skipif(not _HAS_OPS, reason="no compiled ops")))
        else:
            out.append(pytest.param(dev, "cuda", marks=pytest.mark.skipif(not _HAS_OPS, reason="no compiled ops")))
    return out


COMBOS = _combos()
COMPILED = [c for c in COMBOS if not (isinstance(c, tuple) and c[1] == "reference")]


def _np_apply(values, written, idx, pri):
    for i, p in zip(idx.tolist(), pri.tolist()):  # sequential: the last write wins
        values[i] = p
        written[i] = True


def _random_batch(rng, cap, k, dtype=np.float64, zero_frac=0.0):
    idx = rng.integers(0, cap, size=k)
    if k >= 4:  # force duplicates with different values
        idx[k // 2] = idx[0]
        idx[-1] = idx[1]
    pri = rng.random(k).astype(dtype) * 10
    pri[rng.random(k) < zero_frac] = 0
    return idx, pri


@pytest.mark.parametrize("cap", CAPACITIES)
@pytest.mark.parametrize("device,backend", COMBOS)
def test_totals_min_get_match_numpy(device, backend, cap):
    rng = np.random.default_rng(cap)
    tree = SumTree(cap, device=device, backend=backend)
    ref = SumTree(cap, device=device, backend="reference")
    assert len(tree) == cap and tree.backend == backend
    assert tree.total().item() == 0.0 and tree.min().item() == math.inf
    values, written = np.zeros(cap), np.zeros(cap, bool)
    for rnd, k in enumerate([1, 7, 2 * cap + 3, 3, cap]):
        dtype = np.float32 if rnd % 2 else np.float64
        idx, pri = _random_batch(rng, cap, k, dtype, zero_frac=0.1)
        idx_t = torch.from_numpy(idx).to(torch.int32 if rnd == 3 else torch.int64)
        tree.update(idx_t.to(device), torch.from_numpy(pri).to(device))
        ref.update(idx_t, torch.from_numpy(pri))
        _np_apply(values, written, idx, pri.astype(np.float64))
        assert tree.total().dtype == torch.float64 and tree.total().dim() == 0
        np.testing.assert_allclose(tree.total().item(), values.sum(), rtol=1e-12)
        assert tree.min().item() == values[written].min()
        np.testing.assert_array_equal(tree.get(torch.arange(cap, device=device)).cpu().numpy(), values)
        # same pairwise sums in the same order: the whole tree is bit-identical to the reference rebuild
        assert torch.equal(tree._sum.cpu(), ref._sum.cpu())
        assert torch.equal(tree._min.cpu(), ref._min.cpu())


@pytest.mark.parametrize("device,backend", COMBOS)
def test_large_batch_and_scalar_priority(device, backend):
    # K above the CUDA single-block limit (16384): the one-launch-per-level path.
    cap = 1025
    rng = np.random.default_rng(1)
    idx, pri = _random_batch(rng, cap, 20000)
    tree = SumTree(cap, device=device, backend=backend)
    tree.update(torch.from_numpy(idx).to(device), torch.from_numpy(pri).to(device))
    values, written = np.zeros(cap), np.zeros(cap, bool)
    _np_apply(values, written, idx, pri)
    np.testing.assert_array_equal(tree.get(torch.arange(cap)).cpu().numpy(), values)
    np.testing.assert_allclose(tree.total().item(), values.sum(), rtol=1e-12)
    tree.update([3, 9, 3], 0.25)  # list indices, scalar priority broadcast
    values[[3, 9]] = 0.25
    np.testing.assert_allclose(tree.total().item(), values.sum(), rtol=1e-12)
    assert tree.min().item() == values.min()
    tree.update(torch.empty(0, dtype=torch.int64), torch.empty(0))  # no-op
    np.testing.assert_allclose(tree.total().item(), values.sum(), rtol=1e-12)


@pytest.mark.parametrize("device,backend", COMBOS)
def test_sample_probabilities_exact_and_no_zero_leaves(device, backend):
    cap = 1023
    rng = np.random.default_rng(2)
    pri = rng.random(cap) * 5
    pri[rng.random(cap) < 0.4] = 0
    pri[-7:] = 0  # zeros at the right boundary
    pri[:3] = 0
    tree = SumTree(cap, device=device, backend=backend)
    tree.update(torch.arange(cap), torch.from_numpy(pri))
    g = torch.Generator(device=device).manual_seed(0)
    for stratified in (True, False):
        idx, prob = tree.sample(4097, generator=g, stratified=stratified)
        assert idx.dtype == torch.int64 and prob.dtype == torch.float64 and idx.shape == prob.shape == (4097,)
        assert idx.device.type == torch.device(device).type
        assert bool((idx >= 0).all()) and bool((idx < cap).all())
        p = tree.get(idx)
        assert bool((p > 0).all()), "a zero-priority leaf was sampled"
        assert torch.equal(prob, p / tree.total())
    idx, prob = tree.sample(0)
    assert idx.shape == prob.shape == (0,)


@pytest.mark.parametrize("device,backend", COMBOS)
def test_sample_right_boundary_guard(device, backend):
    # u at or beyond the total (rounding at the right edge) must still land on a positive leaf.
    for cap, nz in [(1, [0]), (5, [0]), (5, [2]), (1025, [0, 17]), (1000, [999]), (1023, [511, 512])]:
        tree = SumTree(cap, device=device, backend=backend)
        tree.update(torch.tensor(nz), torch.tensor([0.1 * (j + 1) for j in range(len(nz))]))
        tot = tree.total().item()
        u = torch.tensor(
            [0.0, tot * 0.5, math.nextafter(tot, 0.0), tot, tot * (1 + 1e-12), tot * 2],
            dtype=torch.float64,
            device=device,
        )
        got = tree._sample_op(tree._sum, u)
        assert set(got.cpu().tolist()) <= set(nz)
        assert got[-1].item() == max(nz) and got[0].item() == min(nz)


@pytest.mark.parametrize("device,backend", COMBOS)
def test_sample_matches_reference_descent(device, backend):
    cap = 1025
    rng = np.random.default_rng(3)
    tree = SumTree(cap, device=device, backend=backend)
    tree.update(torch.arange(cap), torch.from_numpy(rng.random(cap) * (rng.random(cap) > 0.3)))
    u = torch.rand(5001, dtype=torch.float64, device=device) * tree.total()
    assert torch.equal(tree._sample_op(tree._sum, u), sum_tree_sample_reference(tree._sum, u))


@pytest.mark.parametrize("stratified", [True, False])
@pytest.mark.parametrize("device,backend", COMBOS)
def test_sampling_distribution_chi_square(device, backend, stratified):
    pri = np.array([0.5, 0.0, 3.0, 1.0, 0.0, 2.25, 0.125])  # capacity 7: padding leaf, two zero leaves
    tree = SumTree(len(pri), device=device, backend=backend)
    tree.update(torch.arange(len(pri)), torch.from_numpy(pri))
    g = torch.Generator(device=device).manual_seed(1234)
    n = 300_000
    counts = np.zeros(len(pri))
    for _ in range(3):  # several calls: stratification restarts per call
        idx, _ = tree.sample(n // 3, generator=g, stratified=stratified)
        counts += np.bincount(idx.cpu().numpy(), minlength=len(pri))
    assert counts[pri == 0].sum() == 0
    pos = pri > 0
    expected = pri[pos] / pri.sum() * n
    stat, pvalue = scipy_stats.chisquare(counts[pos], expected)
    assert pvalue > 1e-3, (counts, expected, stat)
    # the chi-square test has power here: a uniform sampler over the positive leaves fails it
    _, p_bad = scipy_stats.chisquare(np.full(pos.sum(), n / pos.sum()), expected)
    assert p_bad < 1e-9


@pytest.mark.parametrize("k", [6, 20000])  # per-path walk / sort + level passes (CPU); one block / per level (CUDA)
@pytest.mark.parametrize("device,backend", COMPILED)
def test_update_touches_only_changed_paths(device, backend, k):
    cap = 1025
    rng = np.random.default_rng(4)
    tree = SumTree(cap, device=device, backend=backend)
    tree.update(torch.arange(cap), torch.from_numpy(rng.random(cap)))
    expect = SumTree(cap, device=device, backend="reference")
    expect.load_state_dict(tree.state_dict())
    idx = np.array([5, 6, 300, 300, 1024, 17]) if k == 6 else np.concatenate([rng.integers(0, 200, k - 2), [700, 1024]])
    pri = rng.random(len(idx))
    P = tree._p
    touched = set()
    for i in idx:
        v = P + int(i)
        while v >= 1:
            touched.add(v)
            v //= 2
    # poison internal nodes whose parent is untouched: nothing on a changed path reads or writes them
    deep = np.array([v for v in range(2, P) if (v // 2) not in touched])
    assert len(deep) > 100
    deep_t = torch.from_numpy(deep).to(device)
    tree._sum[deep_t] = float("nan")
    tree._min[deep_t] = float("nan")
    tree.update(torch.from_numpy(idx), torch.from_numpy(pri))
    expect.update(torch.from_numpy(idx), torch.from_numpy(pri))
    assert bool(torch.isnan(tree._sum[deep_t]).all()) and bool(torch.isnan(tree._min[deep_t]).all())
    keep = torch.ones(2 * P, dtype=torch.bool, device=device)
    keep[deep_t] = False
    keep[0] = False
    assert torch.equal(tree._sum[keep], expect._sum[keep])
    assert torch.equal(tree._min[keep], expect._min[keep])


@pytest.mark.parametrize("device,backend", COMBOS)
def test_bad_input_raises(device, backend):
    tree = SumTree(5, device=device, backend=backend)
    with pytest.raises(ValueError, match="empty"):
        tree.sample(3)
    tree.update(torch.tensor([0, 4]), torch.tensor([1.0, 2.0]))
    before = tree._sum.clone()
    cases = [
        (torch.tensor([0, 1]), torch.tensor([1.0, -1.0]), "priorities.*>= 0"),
        (torch.tensor([0, 1]), torch.tensor([1.0, float("nan")]), "priorities.*NaN"),
        (torch.tensor([0, 1]), torch.tensor([float("inf"), 1.0]), "priorities.*finite"),
        (torch.tensor([0, 5]), torch.tensor([1.0, 1.0]), r"indices.*\[0, capacity=5\)"),
        (torch.tensor([-1, 2]), torch.tensor([1.0, 1.0]), "indices.*capacity"),
        (torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0]), "indices.*integer dtype"),
        (torch.tensor([True, False]), torch.tensor([1.0, 1.0]), "indices.*integer dtype"),
        (torch.tensor([0, 1, 2]), torch.tensor([1.0, 1.0]), "priorities.*shape"),
        (torch.tensor([[0, 1]]), torch.tensor([[1.0, 1.0]]), "indices.*1-D"),
        (torch.tensor([0, 1]), torch.tensor([1 + 1j, 1j]), "priorities.*real"),
        ("ab", torch.tensor([1.0, 1.0]), "indices"),
    ]
    for idx, pri, msg in cases:
        with pytest.raises(ValueError, match=msg):
            tree.update(idx, pri)
    assert torch.equal(tree._sum, before), "a rejected update changed the tree"
    with pytest.raises(ValueError, match="indices"):
        tree.get(torch.tensor([5]))
    with pytest.raises(ValueError, match="indices.*integer"):
        tree.get(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="n must be"):
        tree.sample(-1)
    with pytest.raises(ValueError, match="n must be"):
        tree.sample(2.0)
    with pytest.raises(ValueError, match="stratified"):
        tree.sample(2, stratified=1)
    with pytest.raises(ValueError, match="generator"):
        tree.sample(2, generator=123)
    if device == "cuda":
        with pytest.raises(ValueError, match="generator"):
            tree.sample(2, generator=torch.Generator())
    for cap in (0, -3, 2.5, True, "7"):
        with pytest.raises(ValueError, match="capacity"):
            SumTree(cap, device=device)
    with pytest.raises(ValueError, match="backend"):
        SumTree(5, device=device, backend="numpy")
    # validate=False skips the value checks (no host sync): documented, the caller vouches for the input
    tree.update(torch.tensor([1]), torch.tensor([3.0]), validate=False)
    assert tree.get(torch.tensor([1])).item() == 3.0


def test_backend_device_mismatch():
    with pytest.raises(ValueError, match="backend"):
        SumTree(5, device="cpu", backend="cuda") if torch.cuda.is_available() else SumTree(
            5, device="cpu", backend="triton"
        )


@pytest.mark.parametrize("device,backend", COMBOS)
def test_state_dict_round_trip(device, backend):
    cap = 1000
    rng = np.random.default_rng(5)
    tree = SumTree(cap, device=device, backend=backend)
    idx, pri = _random_batch(rng, cap, 700, zero_frac=0.2)
    tree.update(torch.from_numpy(idx), torch.from_numpy(pri))
    sd = tree.state_dict()
    assert sd["capacity"] == cap and sd["priorities"].shape == (cap,) and sd["written"].dtype == torch.bool
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    sd2 = torch.load(buf, map_location="cpu")
    for other_backend in ("reference", backend):
        other = SumTree(cap, device=device, backend=other_backend)
        other.load_state_dict(sd2)
        assert torch.equal(other._sum, tree._sum) and torch.equal(other._min, tree._min)
        assert other.min().item() == tree.min().item()
    # the state is a copy, and loading into a mismatched tree fails clearly
    sd["priorities"][0] = 123.0
    assert tree.get(torch.tensor([0])).item() != 123.0
    with pytest.raises(ValueError, match="capacity"):
        SumTree(cap + 1, device=device, backend=backend).load_state_dict(sd2)
    bad = dict(sd2, priorities=-sd2["priorities"] - 1)
    with pytest.raises(ValueError, match="priorities"):
        SumTree(cap, device=device, backend=backend).load_state_dict(bad)
    with pytest.raises(ValueError, match="missing"):
        SumTree(cap, device=device, backend=backend).load_state_dict({"capacity": cap})


@pytest.mark.parametrize("device,backend", COMBOS)
def test_importance_weights(device, backend):
    pri = np.array([1.0, 4.0, 0.5, 2.0, 0.0])
    tree = SumTree(6, device=device, backend=backend)  # leaf 5 never written
    tree.update(torch.arange(5), torch.from_numpy(pri))
    idx, prob = tree.sample(64, generator=torch.Generator(device=device).manual_seed(0))
    beta = 0.4
    w = tree.importance_weights(prob, beta)
    # the buffer holds a written zero: min P = 0, so the batch maximum normalises
    raw = (5 * prob.cpu().numpy()) ** -beta
    np.testing.assert_allclose(w.cpu().numpy(), raw / raw.max(), rtol=1e-12)
    tree.update(torch.tensor([4]), torch.tensor([0.25]))
    idx, prob = tree.sample(64, generator=torch.Generator(device=device).manual_seed(0))
    w = tree.importance_weights(prob, beta)
    p = prob.cpu().numpy()
    pmin = 0.25 / (pri.sum() + 0.25)
    np.testing.assert_allclose(w.cpu().numpy(), (5 * p) ** -beta / (5 * pmin) ** -beta, rtol=1e-12)
    assert bool((w <= 1).all()) and bool((w > 0).all())
    w8 = tree.importance_weights(prob, beta, size=8)
    np.testing.assert_allclose(w8.cpu().numpy(), (p / pmin) ** -beta, rtol=1e-12)
    # free function: batch-normalised, max exactly 1
    wb = importance_weights(prob.float(), 1.0, 100)
    assert wb.dtype == torch.float32 and wb.max().item() == 1.0
    with pytest.raises(ValueError, match="beta"):
        importance_weights(prob, -0.1, 10)
    with pytest.raises(ValueError, match="size"):
        importance_weights(prob, 0.5, 0)
    with pytest.raises(ValueError, match="probabilities"):
        importance_weights(idx, 0.5, 10)


@pytest.mark.skipif(not _HAS_OPS, reason="no compiled ops")
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_compiled_ops(device):
    P = 16
    tree = torch.zeros(2 * P, dtype=torch.float64, device=device)
    mn = torch.full((2 * P,), math.inf, dtype=torch.float64, device=device)
    sum_tree_update_reference(
        tree, mn, torch.arange(11, device=device), torch.rand(11, dtype=torch.float64, device=device)
    )
    idx = torch.tensor([3, 1, 3, 9], device=device)
    pri = torch.rand(4, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.pydistill.sum_tree_update.default, (tree.clone(), mn.clone(), idx, pri))
    u = torch.rand(9, dtype=torch.float64, device=device) * tree[1]
    torch.library.opcheck(torch.ops.pydistill.sum_tree_sample.default, (tree, u))
    # the compiled op and the reference agree on the same input
    t1, m1, t2, m2 = tree.clone(), mn.clone(), tree.clone(), mn.clone()
    torch.ops.pydistill.sum_tree_update(t1, m1, idx, pri)
    sum_tree_update_reference(t2, m2, idx, pri)
    assert torch.equal(t1, t2) and torch.equal(m1, m2)
    with pytest.raises(RuntimeError, match="float64"):
        torch.ops.pydistill.sum_tree_sample(tree.float(), u)
    with pytest.raises(RuntimeError, match="power of two"):
        torch.ops.pydistill.sum_tree_sample(tree[:24].contiguous(), u)


@pytest.mark.skipif(not _HAS_OPS, reason="no compiled ops")
def test_fake_kernels_check_shapes_and_dtypes():
    """The fake kernels (what torch.compile and FakeTensorMode run) reject the trees and batches the compiled
    kernels reject."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        tree, u = torch.zeros(8, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        assert torch.ops.pydistill.sum_tree_sample(tree, u).dtype == torch.int64
        with pytest.raises(RuntimeError, match="power of two"):
            torch.ops.pydistill.sum_tree_sample(torch.zeros(6, dtype=torch.float64), u)
        with pytest.raises(RuntimeError, match="u must be 1-D float64"):
            torch.ops.pydistill.sum_tree_sample(tree, u.float())
        idx = torch.zeros(3, dtype=torch.int64)
        with pytest.raises(RuntimeError, match="must have the same length"):
            torch.ops.pydistill.sum_tree_update(tree, tree.clone(), idx, torch.zeros(2, dtype=torch.float64))
        with pytest.raises(RuntimeError, match="min_tree must have as many nodes"):
            torch.ops.pydistill.sum_tree_update(tree, torch.zeros(16, dtype=torch.float64), idx, u)
