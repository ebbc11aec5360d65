"""trajectory_loss forward + backward: MTT's flat parameter vectors and per-layer parameter lists.

Cases: flat fp32 vectors of 0.32M (ConvNet, CIFAR-10), 2.5M and 11.2M (ResNet-18) parameters, and the
ConvNet / ResNet-18 parameter lists. Rows: baseline (research code: torch.cat of the parameter lists, two
separate mse sums, autograd), compiled reference (torch.compile), cpp, cuda, triton (GPU only: the
interpreter is not a benchmark). bytes_moved = fwd reads 3N + bwd reads 2N and writes N elements.
Each case also has a "<case> fwd only" group (forward alone, 3N reads) to separate per-call overheads, a
"<case>, N calls 1 sync" group (throughput: N back-to-back forward+backward calls on the same tensors, one
synchronisation, time per call; cached address tables stay warm, and on a GPU host-bound costs show) and a
"<case> new storage" group (every timed call on freshly allocated parameters with the Triton table cache
emptied beforehand, untimed: the cache-miss cost of a first call or of a loop that reallocates its tensors).

    python benchmarks/ops/bench_trajectory_loss.py [--device cpu] [--quick]
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common.py

from common import try_row  # noqa: E402

OP = "trajectory_loss"


def convnet_shapes(channels: int = 3, width: int = 128, depth: int = 3, classes: int = 10, size: int = 32):
    """Parameter shapes of the DC/MTT ConvNet (conv with bias + instance norm affine per block, linear)."""
    shapes, c = [], channels
    for _ in range(depth):
        shapes += [(width, c, 3, 3), (width,), (width,), (width,)]
        c, size = width, size // 2
    return shapes + [(classes, width * size * size), (classes,)]


def resnet18_shapes(classes: int = 10):
    """Parameter shapes of a CIFAR ResNet-18 (3x3 stem, BasicBlocks, batch norm affine, linear)."""
    shapes, cin = [(64, 3, 3, 3), (64,), (64,)], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            shapes += [(cout, cin, 3, 3), (cout,), (cout,), (cout, cout, 3, 3), (cout,), (cout,)]
            if s != 1 or cin != cout:
                shapes += [(cout, cin, 1, 1), (cout,), (cout,)]
            cin = cout
    return shapes + [(classes, 512), (classes,)]


def baseline(student, start, target):
    """What MTT research code does: flatten/concatenate, two mse sums, divide (autograd everywhere)."""
    s = torch.cat([p.reshape(-1) for p in student])
    a = torch.cat([p.reshape(-1) for p in start])
    t = torch.cat([p.reshape(-1) for p in target])
    return F.mse_loss(s, t, reduction="sum") / F.mse_loss(a, t, reduction="sum")


def _inputs(shapes, device, dtype=torch.float32):
    s = [torch.randn(sh, device=device, dtype=dtype).requires_grad_() for sh in shapes]
    a = [torch.randn(sh, device=device, dtype=dtype) for sh in shapes]
    t = [torch.randn(sh, device=device, dtype=dtype) for sh in shapes]
    return s, a, t


def drop_table_caches() -> None:
    """Empty the Triton launchers' cached address tables (no-op when the Triton kernels cannot be imported)."""
    try:
        from pydistill.kernels import trajectory_loss as kernels
    except Exception:  # noqa: BLE001 - no triton here: nothing is cached
        return
    clear = getattr(kernels, "clear_cache", None)
    if clear is not None:
        clear()
    else:
        kernels._TABLE_CACHE.clear()


def run(device: str, quick: bool) -> list[dict]:
    from pydistill import backends
    from pydistill.ops.trajectory_loss import trajectory_loss, trajectory_loss_reference

    have = backends()
    cases = [("flat 0.32M", [(320_010,)]), ("list ConvNet (0.32M)", convnet_shapes())]
    if not quick:
        cases += [
            ("flat 2.5M", [(2_500_000,)]),
            ("flat 11.2M", [(11_173_962,)]),
            ("list ResNet-18 (11.2M)", resnet18_shapes()),
        ]
    compiled_ref = torch.compile(trajectory_loss_reference)
    rows = []
    for case, shapes in cases:
        s, a, t = _inputs(shapes, device)
        flat = len(shapes) == 1
        args = (s[0], a[0], t[0]) if flat else (s, a, t)
        n = sum(x.numel() for x in s)
        nbytes = 6 * n * s[0].element_size()

        def step(fn):
            def go():
                loss = fn(*args)
                torch.autograd.grad(loss, s)

            return go

        impls = [
            ("baseline", step(lambda *x: baseline(*(([y] if flat else y) for y in x)))),
            ("compiled reference", step(compiled_ref)),
        ]
        dev_type = torch.device(device).type
        for b in ("cpp", "cuda", "triton"):
            if not have.get(b):
                continue
            if (b == "cpp") != (dev_type == "cpu") or (b == "triton" and dev_type == "cpu"):
                continue
            impls.append((b, step(lambda *x, b=b: trajectory_loss(*x, backend=b))))
        for impl, fn in impls:
            row = try_row(OP, case, impl, fn, device, bytes_moved=nbytes, iters=10 if dev_type == "cpu" else 50)
            row["n"] = n
            rows.append(row)
        # Throughput (same tensors, one sync) and first call with new storage (fresh tensors, cold table cache),
        # for the baseline and the kernels.
        calls = 100 if dev_type == "cuda" else 50
        for impl, fn in impls:
            if impl == "compiled reference":
                continue
            row = try_row(
                OP,
                f"{case}, {calls} calls 1 sync",
                impl,
                fn,
                device,
                bytes_moved=nbytes,
                calls=calls,
                repeats=1 if quick else 3,
            )
            row["n"] = n
            rows.append(row)

        def fresh():
            drop_table_caches()
            new = [[x.detach().clone().requires_grad_() for x in s]] + [[x.clone() for x in y] for y in (a, t)]
            return [c[0] for c in new] if flat else new

        new_impls = [("baseline", lambda *x: baseline(*(([y] if flat else y) for y in x)))]
        new_impls += [
            (impl, lambda *x, b=impl: trajectory_loss(*x, backend=b))
            for impl, _ in impls
            if impl in ("cpp", "cuda", "triton")
        ]
        for impl, fn in new_impls:

            def go(st, a_, t_, fn=fn):
                torch.autograd.grad(fn(st, a_, t_), st)

            row = try_row(
                OP,
                f"{case} new storage",
                impl,
                go,
                device,
                bytes_moved=nbytes,
                setup=fresh,
                iters=10 if dev_type == "cpu" else 50,
            )
            row["n"] = n
            rows.append(row)
        # Forward alone (inputs still require grad, so the autograd bookkeeping is included): separates
        # per-call host overhead of the forward from the backward's. bytes_moved = the forward's 3N reads.
        fwd_impls = [("baseline", lambda: baseline(*(([y] if flat else y) for y in args)))]
        fwd_impls += [
            (impl, lambda b=impl: trajectory_loss(*args, backend=b))
            for impl, _ in impls
            if impl in ("cpp", "cuda", "triton")
        ]
        for impl, fn in fwd_impls:
            row = try_row(
                OP, f"{case} fwd only", impl, fn, device, bytes_moved=nbytes // 2, iters=10 if dev_type == "cpu" else 50
            )
            row["n"] = n
            rows.append(row)
    return rows


if __name__ == "__main__":
    from common import main_one

    main_one(run, __doc__)
