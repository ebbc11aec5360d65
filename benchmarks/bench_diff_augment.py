"""Benchmark of diff_augment (DSA), forward + backward w.r.t. x.

Implementations (same drawn parameters for all rows of a case):
  baseline   original-style sequential passes (one per transform, scale/rotate via affine_grid + grid_sample)
  reference  the plain PyTorch fused-semantics reference, eager
  compiled   torch.compile of the reference
  triton     the fused Triton kernels (on CUDA, or on the CPU under TRITON_INTERPRET=1 when not quick)
  kornia     kornia.augmentation with the closest transforms (only if kornia is installed; its own random draws,
             so not the same semantics: a rough reference point)
Cases: 256x3x32x32 and 64x3x128x128 (CPU quick: the first only), mode "all" / "one" (rotate chosen), shared / per-sample parameters;
each also as "fwd only" (baseline and triton): forward alone, to separate per-call host overheads.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import try_row  # noqa: E402

from pydistill import _backend  # noqa: E402
from pydistill.ops.diff_augment import (GROUPS, diff_augment, diff_augment_reference,  # noqa: E402
                                        diff_augment_sequential, sample_dsa_params)

OP = "diff_augment"
STRATEGY = "color_crop_cutout_flip_scale_rotate"


def _fwd_bwd(fn, x, g):
    def step():
        xs = x.detach().requires_grad_()
        out = fn(xs)
        out.backward(g)
        return xs.grad

    return step


def _kornia_fn(per_sample: bool):
    import kornia.augmentation as K

    same = not per_sample
    aug = torch.nn.Sequential(
        K.ColorJiggle(0.5, (0.5, 1.5), (0.0, 2.0), p=1.0, same_on_batch=same),
        K.RandomAffine(degrees=15.0, translate=(0.125, 0.125), scale=(1 / 1.2, 1.2), p=1.0, same_on_batch=same,
                       align_corners=True),
        K.RandomHorizontalFlip(p=0.5, same_on_batch=same),
        K.RandomErasing(scale=(0.25, 0.25), ratio=(1.0, 1.0), p=1.0, same_on_batch=same),
    )
    return aug


def run(device: str, quick: bool) -> list[dict]:
    dev = torch.device(device)
    timing = dict(warmup=1, iters=3, min_time_s=0.0) if quick else {}
    shapes = [(256, 3, 32, 32), (64, 3, 128, 128)]
    if quick and dev.type == "cpu":  # CPU smoke run: the small batch only
        shapes = shapes[:1]
    rows = []
    have_triton = _backend.backends()["triton"] and (dev.type == "cuda" or not quick)
    try:
        import kornia  # noqa: F401

        have_kornia = True
    except ImportError:
        have_kornia = False
    compiled_ref = torch.compile(diff_augment_reference, dynamic=False)
    for shape in shapes:
        N, C, H, W = shape
        x = torch.rand(shape, device=dev)
        g = torch.randn(shape, device=dev)
        for mode in ("all", "one"):
            for per_sample in (False, True):
                gen = torch.Generator(device=dev).manual_seed(0)
                p = sample_dsa_params(N, STRATEGY, mode, per_sample, height=H, width=W, device=dev, generator=gen)
                if mode == "one":  # fix the group so every run times the same (resampling) transform
                    p.active = (torch.arange(len(GROUPS), device=dev) == GROUPS.index("rotate")).view(1, -1)
                case = f"{N}x{C}x{H}x{W} {mode}{'(rotate)' if mode == 'one' else ''} " \
                       f"{'per-sample' if per_sample else 'shared'} fwd+bwd"
                impls = [
                    ("baseline", lambda t, p=p: diff_augment_sequential(t, p)),
                    ("reference", lambda t, p=p: diff_augment_reference(t, p)),
                    ("compiled", lambda t, p=p: compiled_ref(t, p)),
                ]
                if have_triton:
                    impls.append(("triton", lambda t, p=p: diff_augment(t, params=p, backend="triton")))
                if have_kornia and mode == "all":
                    aug = _kornia_fn(per_sample).to(dev)
                    impls.append(("kornia", lambda t, aug=aug: aug(t)))
                nbytes = 4 * x.numel() * x.element_size()  # min traffic: read x, write out, read grad, write grad_x
                for impl, fn in impls:
                    row = try_row(OP, case, impl, _fwd_bwd(fn, x, g), device, bytes_moved=nbytes, **timing)
                    if row is not None:
                        rows.append(row)
                # Forward alone on an input that requires grad (autograd bookkeeping included): read x, write out.
                fwd_case = case.replace("fwd+bwd", "fwd only")
                xg = x.detach().requires_grad_()
                for impl, fn in impls:
                    if impl in ("baseline", "triton"):
                        row = try_row(OP, fwd_case, impl, lambda fn=fn: fn(xg), device, bytes_moved=nbytes // 2,
                                      **timing)
                        if row is not None:
                            rows.append(row)
    return rows


if __name__ == "__main__":
    from common import main_one

    main_one(run, __doc__)
