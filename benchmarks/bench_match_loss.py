"""match_loss forward + backward on the gradient lists of DC networks.

Cases: the DC ConvNet (width 128, depth 3, CIFAR 32x32, 10 classes, instance norm = GroupNorm affine;
conv [128,3,3,3], [128,128,3,3] x2, biases, norm parameters, linear [10,2048]; 320,010 parameters) and a
torchvision ResNet-18 with 10 classes (11.2M parameters), metric "ours" (and "cos" in the full run), fp32.
Rows: baseline (the research code: Python loop over layers, reshape / sum / norm per tensor, autograd),
compile (torch.compile of that reference), cpp (CPU), cuda and triton (GPU only: the interpreter is not a
benchmark). bytes_moved = forward reads gw_syn and gw_real (2N) + backward reads both and writes the
gradient (3N) elements.

    python benchmarks/bench_match_loss.py [--device cpu] [--quick]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

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


def run(device: str = "cuda", quick: bool = False) -> list[dict]:
    from pydistill import backends
    from pydistill.ops.match_loss import match_loss, match_loss_reference

    have = backends()
    cases = [("convnet128", convnet_shapes())]
    if not quick:
        cases.append(("resnet18", resnet18_shapes()))
    metrics = ["ours"] if quick else ["ours", "cos"]
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
            impls = ["cpp"] if device == "cpu" else ["cuda", "triton"]
            for impl in impls:
                if not have.get(impl) or (impl == "triton" and device == "cpu"):
                    continue
                fn = lambda s, r, m=metric, b=impl: match_loss(s, r, m, backend=b)  # noqa: E731
                rows.append(try_row(OP, case, impl, fb(fn), device, bytes_moved=moved))
            # Forward alone (syn still requires grad: autograd bookkeeping included), 2N reads: separates
            # the forward's per-call host overhead from the backward's.
            fwd_case = f"{case} fwd only"
            rows.append(try_row(OP, fwd_case, "baseline", lambda: ref(syn, real), device, bytes_moved=2 * n * syn[0].element_size()))
            for impl in impls:
                if not have.get(impl) or (impl == "triton" and device == "cpu"):
                    continue
                rows.append(try_row(OP, fwd_case, impl, lambda m=metric, b=impl: match_loss(syn, real, m, backend=b),
                                    device, bytes_moved=2 * n * syn[0].element_size()))
    return rows


if __name__ == "__main__":
    from common import main_one

    main_one(run, __doc__)
