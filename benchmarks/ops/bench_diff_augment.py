"""Benchmark of diff_augment (DSA), forward + backward w.r.t. x.

Implementations (same drawn parameters for all rows of a case, except where noted):
  baseline   original-style sequential passes (one per transform, scale/rotate via affine_grid + grid_sample)
  reference  the plain PyTorch fused-semantics reference, eager
  compiled   torch.compile of the reference
  triton     the fused Triton kernels (on CUDA, or on the CPU under TRITON_INTERPRET=1 when not quick)
  kornia (own draws, closest transforms)  kornia.augmentation ColorJiggle + RandomAffine + RandomHorizontalFlip +
             RandomErasing (only if kornia imports). It draws its own parameters inside every call (the other rows
             of the case reuse pre-drawn ones) and its transforms are close, not equal: a rough reference point.
Cases: 256x3x32x32 and 64x3x128x128 (CPU quick: the first only), mode "all" / "one" (rotate chosen), shared /
per-sample parameters; each also as "fwd only" (baseline and what diff_augment runs on the device: triton, else
reference): forward alone, to separate per-call host overheads.

Sampling is timed too (these rows draw inside every call, both sides):
  "draw+augment siamese": what DC/DM do per class: draw and augment the real batch (256, no grad), reuse the
      parameters on the synthetic batch (10 images, IPC 10) and backpropagate to it. pydistill:
      ``diff_augment(real, return_params=True)`` then ``diff_augment(syn, params=p)``; baseline: the DSA research
      code's way (``research_dsa``: per transform a reseed of the global RNG and its own torch.rand/randint draw
      of batch size N, the first row used for all (siamese), then that transform's pass; mode "one" picks the
      group from a host-side randint; the siamese batch re-seeds and redraws). It is kinder to the baseline than
      the research code, which builds the scale/rotate matrices image by image in Python on the host: here they
      are built on the device in one go. Mode "one" picks a random group per call on both sides, so its per-call
      median mixes the groups; the throughput row averages them.
  "sample_dsa_params": drawing alone (shared and per-sample): ``sample_dsa_params`` vs the research code's draws.
Throughput rows ("N calls, 1 sync"): N back-to-back calls and one synchronisation, time per call; on a GPU
host-bound overheads show there (the per-call rows synchronise after each call).
"""

from __future__ import annotations

import itertools
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common.py
from common import try_row  # noqa: E402

from pydistill import _backend  # noqa: E402
from pydistill.ops.diff_augment import (  # noqa: E402
    DEFAULT_RATIOS,
    GROUPS,
    DSAParams,
    diff_augment,
    diff_augment_reference,
    diff_augment_sequential,
    sample_dsa_params,
)

OP = "diff_augment"
STRATEGY = "color_crop_cutout_flip_scale_rotate"


# ------------------------------------------------------------------------ research-code DSA with its own draws
class _Reseed:
    """The research code's per-transform seeding: with a seed (siamese use) the global RNG is re-seeded before
    every draw with seed, seed + 1, ...; without one (seed < 0) draws continue the running RNG."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self) -> None:
        if self.seed >= 0:
            torch.random.manual_seed(self.seed)
            self.seed += 1


def research_draw(N: int, strategy: str, mode: str, seed: int, H: int, W: int, device, r=DEFAULT_RATIOS) -> dict:
    """Parameters the DSA research code draws for one batch of N images, ``{group: tensors}`` in strategy order,
    only for the groups it applies (mode "one": one group, picked on the host). One torch.rand/randint call of
    batch size N per transform parameter; siamese (seed >= 0): the first row is broadcast to all rows. Shapes:
    colour (b, s, c) [N,1,1,1]; crop / cutout (vertical, horizontal) [N,1,1] int64; flip [N,1,1,1] bool;
    scale (vertical, horizontal) factors [N]; rotate angle [N] radians."""
    reseed = _Reseed(seed)
    groups = strategy.split("_")

    def first_row(t):
        return t[:1].expand(t.shape) if seed >= 0 else t

    def rand(*shape):
        reseed()
        return first_row(torch.rand(shape, device=device))

    def randint(lo, hi, *shape):
        reseed()
        return first_row(torch.randint(lo, hi, shape, device=device))

    if mode == "one":
        reseed()
        groups = [groups[int(torch.randint(0, len(groups), (1,)).item())]]
    out = {}
    for g in groups:
        if g == "color":
            out[g] = (
                (rand(N, 1, 1, 1) - 0.5) * r["brightness"],
                rand(N, 1, 1, 1) * r["saturation"],
                rand(N, 1, 1, 1) + r["contrast"],
            )
        elif g == "crop":
            m = (int(H * r["crop"] + 0.5), int(W * r["crop"] + 0.5))
            out[g] = (randint(-m[0], m[0] + 1, N, 1, 1), randint(-m[1], m[1] + 1, N, 1, 1))
        elif g == "cutout":
            c = (int(H * r["cutout"] + 0.5), int(W * r["cutout"] + 0.5))
            out[g] = (randint(0, H + 1 - c[0] % 2, N, 1, 1), randint(0, W + 1 - c[1] % 2, N, 1, 1))
        elif g == "flip":
            out[g] = (rand(N, 1, 1, 1) < r["flip"],)
        elif g == "scale":
            lo = 1.0 / r["scale"]
            out[g] = (rand(N) * (r["scale"] - lo) + lo, rand(N) * (r["scale"] - lo) + lo)
        elif g == "rotate":
            out[g] = ((rand(N) - 0.5) * (2.0 * r["rotate"] * math.pi / 180.0),)
        else:
            raise ValueError(f"strategy: unknown DSA group {g!r}; known: {', '.join(GROUPS)}")
    return out


def research_apply(x: torch.Tensor, draws: dict, r=DEFAULT_RATIOS) -> torch.Tensor:
    """Apply ``research_draw``'s groups to x [N, C, H, W] as the research code does: one pass per transform,
    crop / cutout by index grids, scale / rotate by affine_grid + grid_sample (align_corners=True)."""
    N, _, H, W = x.shape
    dev = x.device
    for g, d in draws.items():
        if g == "color":
            b, s, c = d
            x = x + b
            m = x.mean(dim=1, keepdim=True)
            x = (x - m) * s + m
            m = x.mean(dim=[1, 2, 3], keepdim=True)
            x = (x - m) * c + m
        elif g == "crop":
            gb, gi, gj = torch.meshgrid(
                torch.arange(N, device=dev), torch.arange(H, device=dev), torch.arange(W, device=dev), indexing="ij"
            )
            gi = torch.clamp(gi + d[0] + 1, 0, H + 1)
            gj = torch.clamp(gj + d[1] + 1, 0, W + 1)
            x = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)[gb, gi, gj].permute(0, 3, 1, 2)
        elif g == "cutout":
            ch, cw = int(H * r["cutout"] + 0.5), int(W * r["cutout"] + 0.5)
            gb, gi, gj = torch.meshgrid(
                torch.arange(N, device=dev), torch.arange(ch, device=dev), torch.arange(cw, device=dev), indexing="ij"
            )
            gi = torch.clamp(gi + d[0] - ch // 2, 0, H - 1)
            gj = torch.clamp(gj + d[1] - cw // 2, 0, W - 1)
            mask = torch.ones(N, H, W, dtype=x.dtype, device=dev)
            mask[gb, gi, gj] = 0
            x = x * mask.unsqueeze(1)
        elif g == "flip":
            x = torch.where(d[0], x.flip(3), x)
        else:  # scale / rotate: theta [N, 2, 3] maps output to input (normalised coordinates)
            z = torch.zeros(N, device=dev)
            if g == "scale":
                rows = (torch.stack([d[1], z, z], 1), torch.stack([z, d[0], z], 1))
            else:
                cos, sin = torch.cos(d[0]), torch.sin(d[0])
                rows = (torch.stack([cos, -sin, z], 1), torch.stack([sin, cos, z], 1))
            grid = F.affine_grid(torch.stack(rows, 1).to(x.dtype), list(x.shape), align_corners=True)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return x.contiguous()


def research_dsa(x: torch.Tensor, strategy: str, mode: str, seed: int) -> torch.Tensor:
    """The research code's DiffAugment(x, strategy, seed): draw (``research_draw``) and apply."""
    N, _, H, W = x.shape
    return research_apply(x, research_draw(N, strategy, mode, seed, H, W, x.device))


def research_as_params(draws: dict, strategy: str, N: int, H: int, W: int, device) -> DSAParams:
    """The same draws as a DSAParams (groups that were not drawn are inactive, with neutral values)."""

    def col(t):
        return t.reshape(N)

    z = torch.zeros(N, device=device)
    z2 = torch.zeros(N, 2, dtype=torch.long, device=device)
    f = dict(
        brightness=z,
        saturation=z + 1,
        contrast=z + 1,
        shift=z2,
        centre=z2,
        flip=z.bool(),
        scale=torch.ones(N, 2, device=device),
        angle=z,
    )
    if "color" in draws:
        f["brightness"], f["saturation"], f["contrast"] = (col(t) for t in draws["color"])
    if "crop" in draws:
        f["shift"] = torch.stack([col(t) for t in draws["crop"]], 1)
    if "cutout" in draws:
        f["centre"] = torch.stack([col(t) for t in draws["cutout"]], 1)
    if "flip" in draws:
        f["flip"] = col(draws["flip"][0])
    if "scale" in draws:
        f["scale"] = torch.stack([col(t) for t in draws["scale"]], 1)
    if "rotate" in draws:
        f["angle"] = col(draws["rotate"][0])
    active = torch.tensor([[g in draws for g in GROUPS]], device=device)
    cut = (int(H * DEFAULT_RATIOS["cutout"] + 0.5), int(W * DEFAULT_RATIOS["cutout"] + 0.5))
    return DSAParams(strategy=strategy, height=H, width=W, cutout_size=cut, active=active, **f)


def check_research_baseline(device, strategy: str = STRATEGY) -> None:
    """Guard: ``research_dsa`` computes what ``diff_augment_sequential`` computes from the same draws (each single
    group, siamese and per-sample, and every group in sequence)."""
    x = torch.rand(5, 3, 9, 11, device=device)
    for g, seed in itertools.product(strategy.split("_") + [strategy], (7, -1)):
        draws = research_draw(5, g, "all", seed, 9, 11, device)
        got = research_apply(x, draws)
        want = diff_augment_sequential(x, research_as_params(draws, strategy, 5, 9, 11, device))
        if not torch.allclose(got, want, atol=1e-5, rtol=1e-5):
            raise AssertionError(
                f"research_dsa baseline disagrees with diff_augment_sequential on {g!r} "
                f"(seed {seed}): max err {(got - want).abs().max().item():.3g}"
            )


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
        K.RandomAffine(
            degrees=15.0, translate=(0.125, 0.125), scale=(1 / 1.2, 1.2), p=1.0, same_on_batch=same, align_corners=True
        ),
        K.RandomHorizontalFlip(p=0.5, same_on_batch=same),
        K.RandomErasing(scale=(0.25, 0.25), ratio=(1.0, 1.0), p=1.0, same_on_batch=same),
    )
    return aug


def _throughput_calls(dev: torch.device, quick: bool) -> int:
    return 100 if dev.type == "cuda" else (20 if quick else 50)


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
    check_research_baseline(dev)
    calls = _throughput_calls(dev, quick)
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
                case = (
                    f"{N}x{C}x{H}x{W} {mode}{'(rotate)' if mode == 'one' else ''} "
                    f"{'per-sample' if per_sample else 'shared'} fwd+bwd"
                )
                impls = [
                    ("baseline", lambda t, p=p: diff_augment_sequential(t, p)),
                    ("reference", lambda t, p=p: diff_augment_reference(t, p)),
                    ("compiled", lambda t, p=p: compiled_ref(t, p)),
                ]
                if have_triton:
                    impls.append(("triton", lambda t, p=p: diff_augment(t, params=p, backend="triton")))
                if have_kornia and mode == "all":
                    aug = _kornia_fn(per_sample).to(dev)
                    impls.append(("kornia (own draws, closest transforms)", lambda t, aug=aug: aug(t)))
                nbytes = 4 * x.numel() * x.element_size()  # min traffic: read x, write out, read grad, write grad_x
                for impl, fn in impls:
                    row = try_row(OP, case, impl, _fwd_bwd(fn, x, g), device, bytes_moved=nbytes, **timing)
                    if row is not None:
                        rows.append(row)
                # Forward alone on an input that requires grad (autograd bookkeeping included): read x, write out.
                fwd_case = case.replace("fwd+bwd", "fwd only")
                xg = x.detach().requires_grad_()
                for impl, fn in impls:  # the baseline and what diff_augment runs here (triton, else reference)
                    if impl in ("baseline", "triton") or (impl == "reference" and not have_triton):
                        row = try_row(
                            OP, fwd_case, impl, lambda fn=fn: fn(xg), device, bytes_moved=nbytes // 2, **timing
                        )
                        if row is not None:
                            rows.append(row)
                # Throughput of the first (smallest) shape's shared cases: many calls, one sync.
                if shape == shapes[0] and not per_sample:
                    tp_case = f"{case}, {calls} calls 1 sync"
                    for impl, fn in impls:
                        if impl in ("baseline", "reference", "triton"):
                            rows.append(
                                try_row(
                                    OP,
                                    tp_case,
                                    impl,
                                    _fwd_bwd(fn, x, g),
                                    device,
                                    bytes_moved=nbytes,
                                    calls=calls,
                                    repeats=1 if quick else 3,
                                )
                            )
    rows += _draw_rows(dev, quick, timing, calls)
    return rows


def _draw_rows(dev: torch.device, quick: bool, timing: dict, calls: int) -> list[dict]:
    """Rows that time the parameter draw too: the siamese draw + augment of DC/DM, and sampling alone."""
    rows = []
    ours = _backend.resolve("auto", dev, available=("triton", "reference"))  # what diff_augment runs here
    device = str(dev)
    N_real, N_syn, C, H, W = 256, 10, 3, 32, 32
    real = torch.rand(N_real, C, H, W, device=dev)
    syn = torch.rand(N_syn, C, H, W, device=dev)
    g_syn = torch.randn(N_syn, C, H, W, device=dev)
    seeds = itertools.count(1)  # the research code seeds each siamese pair from the clock; a counter here
    for mode in ("one", "all"):

        def baseline(mode=mode):
            xs = syn.detach().requires_grad_()
            seed = next(seeds)
            research_dsa(real, STRATEGY, mode, seed)
            research_dsa(xs, STRATEGY, mode, seed).backward(g_syn)

        def pydistill(mode=mode):
            xs = syn.detach().requires_grad_()
            _, p = diff_augment(real, STRATEGY, mode=mode, return_params=True, backend=ours)
            diff_augment(xs, params=p, backend=ours).backward(g_syn)

        label = "one (random group)" if mode == "one" else "all"
        case = f"draw+augment siamese real {N_real} + syn {N_syn} ({C}x{H}x{W}) {label} fwd+bwd"
        tp_case = f"{case}, {calls} calls 1 sync"
        impls = (("baseline", baseline), (ours, pydistill))
        for impl, fn in impls:  # mode "one": enough calls for the median to mix the groups
            rows.append(try_row(OP, case, impl, fn, device, **(timing if not quick else dict(timing, iters=12))))
        for impl, fn in impls:
            rows.append(try_row(OP, tp_case, impl, fn, device, calls=calls, repeats=3))
    for per_sample in (False, True):
        kind = "per-sample" if per_sample else "shared"
        case = f"sample_dsa_params {N_real} one {kind}"
        # the research code draws per-sample parameters unseeded, siamese ones from a fresh seed
        fns = (
            (
                "baseline",
                lambda ps=per_sample: research_draw(N_real, STRATEGY, "one", -1 if ps else next(seeds), H, W, dev),
            ),
            (
                "sample_dsa_params",
                lambda ps=per_sample: sample_dsa_params(N_real, STRATEGY, "one", ps, height=H, width=W, device=dev),
            ),
        )
        for impl, fn in fns:
            rows.append(try_row(OP, case, impl, fn, device))
        for impl, fn in fns:
            rows.append(
                try_row(OP, f"{case}, {calls} calls 1 sync", impl, fn, device, calls=calls, repeats=1 if quick else 3)
            )
    return rows


if __name__ == "__main__":
    from common import main_one

    main_one(run, __doc__)
