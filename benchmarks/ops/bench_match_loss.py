"""match_loss forward + backward on the gradient lists of DC networks.

Cases: the DC ConvNet (width 128, depth 3, CIFAR 32x32, 10 classes, instance norm = GroupNorm affine;
conv [128,3,3,3], [128,128,3,3] x2, biases, norm parameters, linear [10,2048]; 320,010 parameters) and a
torchvision ResNet-18 with 10 classes (11.2M parameters), metric "ours" (and "cos" in the full run), fp32.
Rows: baseline (the research code: Python loop over layers, reshape / sum / norm per tensor, autograd),
compile (torch.compile of that reference), cpp (CPU), cuda and triton (GPU only: the interpreter is not a
benchmark). bytes_moved = forward reads gw_syn and gw_real (2N) + backward reads both and writes the
gradient (3N) elements.
Per case also: "fwd only" (forward alone, 2N reads: the forward's per-call host overhead); "N calls 1 sync"
(throughput: N back-to-back forward+backward calls on the same tensors, one synchronisation, time per call;
cached address tables stay warm, and on a GPU host-bound costs show); "new storage" (every timed call on freshly
allocated gradient lists with the Triton table cache emptied beforehand, untimed: the cache-miss cost a first
call, or a loop that reallocates its gradients, pays).

    python benchmarks/ops/bench_match_loss.py [--device cpu] [--quick]
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common.py

from common import try_row  # noqa: E402

OP = "match_loss"


def convnet_shapes(channels=3, width=128, depth=3, classes=10, size=32):
    """Parameter shapes of the DC ConvNet: per block conv (with bias) + GroupNorm affine, then linear."""
    shapes, c = [], channels
    for _ in range(depth):
        shapes += [(width, c, 3, 3), (width,), (width,), (width,)]
        c, size = width, size // 2
    return shapes + [(classes, width * size * size), (classes,)]


def resnet18_shapes(classes=10):
    """Parameter shapes of torchvision.models.resnet18(num_classes=classes)."""
    try:
        import torchvision

        return [tuple(p.shape) for p in torchvision.models.resnet18(num_classes=classes).parameters()]
    except ImportError:  # same shapes without torchvision (7x7 stem, 4 stages of BasicBlocks, linear)
        shapes, cin = [(64, 3, 7, 7), (64,), (64,)], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            for block in range(2):
                s = stride if block == 0 else 1
                shapes += [(cout, cin, 3, 3), (cout,), (cout,), (cout, cout, 3, 3), (cout,), (cout,)]
                if s != 1 or cin != cout:
                    shapes += [(cout, cin, 1, 1), (cout,), (cout,)]
                cin = cout
        return shapes + [(classes, 512), (classes,)]


def _inputs(shapes, device, dtype=torch.float32):
    syn = [torch.randn(s, device=device, dtype=dtype).requires_grad_() for s in shapes]
    real = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
    return syn, real


def drop_table_caches() -> None:
    """Empty the Triton launchers' cached address tables (no-op when the Triton kernels cannot be imported)."""
    try:
        from pydistill.kernels import match_loss as kernels
    except Exception:  # noqa: BLE001 - no triton here: nothing is cached
        return
    kernels.clear_cache()


def run(device: str = "cuda", quick: bool = False) -> list[dict]:
    from pydistill import backends
    from pydistill.ops.match_loss import match_loss, match_loss_reference

    have = backends()
    cases = [("convnet128", convnet_shapes())]
    if not quick:
        cases.append(("resnet18", resnet18_shapes()))
    metrics = ["ours"] if quick else ["ours", "cos"]
    calls = 100 if torch.device(device).type == "cuda" else 50  # throughput rows: calls per sync
    rows = []
    for name, shapes in cases:
        syn, real = _inputs(shapes, device)
        n = sum(t.numel() for t in syn)
        moved = 5 * n * syn[0].element_size()
        for metric in metrics:
            case = f"{name}-{metric}-fp32 ({n / 1e6:.2f}M)"

            def fb(fn):
                def step():
                    loss = fn(syn, real)
                    return torch.autograd.grad(loss, syn, allow_unused=True)

                return step

            ref = lambda s, r, m=metric: match_loss_reference(s, r, m)  # noqa: E731
            rows.append(try_row(OP, case, "baseline", fb(ref), device, bytes_moved=moved))
            compiled = torch.compile(ref)
            rows.append(try_row(OP, case, "compile", fb(compiled), device, bytes_moved=moved))
            impls = [
                b
                for b in (["cpp"] if device == "cpu" else ["cuda", "triton"])
                if have.get(b) and not (b == "triton" and device == "cpu")
            ]
            ours = {b: (lambda s, r, m=metric, b=b: match_loss(s, r, m, backend=b)) for b in impls}
            for impl in impls:
                rows.append(try_row(OP, case, impl, fb(ours[impl]), device, bytes_moved=moved))
            # Throughput: back-to-back calls on the same tensors, one sync.
            tp_case = f"{case}, {calls} calls 1 sync"
            for impl, fn in [("baseline", ref)] + list(ours.items()):
                rows.append(
                    try_row(
                        OP, tp_case, impl, fb(fn), device, bytes_moved=moved, calls=calls, repeats=1 if quick else 3
                    )
                )

            # First call with new storage: fresh gradient lists and an empty table cache before each timed call.
            def fresh():
                drop_table_caches()
                return ([t.detach().clone().requires_grad_() for t in syn], [t.clone() for t in real])

            def fb_new(fn):
                def step(s, r):
                    return torch.autograd.grad(fn(s, r), s, allow_unused=True)

                return step

            for impl, fn in [("baseline", ref)] + list(ours.items()):
                rows.append(
                    try_row(
                        OP, f"{case} new storage", impl, fb_new(fn), device, bytes_moved=moved, setup=fresh, iters=10
                    )
                )
            # Forward alone (syn still requires grad: autograd bookkeeping included), 2N reads: separates
            # the forward's per-call host overhead from the backward's.
            fwd_case = f"{case} fwd only"
            read = 2 * n * syn[0].element_size()
            rows.append(try_row(OP, fwd_case, "baseline", lambda: ref(syn, real), device, bytes_moved=read))
            for impl in impls:
                rows.append(try_row(OP, fwd_case, impl, lambda fn=ours[impl]: fn(syn, real), device, bytes_moved=read))
    return rows


if __name__ == "__main__":
    from common import main_one

    main_one(run, __doc__)
