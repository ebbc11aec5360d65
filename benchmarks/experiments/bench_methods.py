"""Distillation time per iteration of DC, DSA and MTT: pydistill ops vs the same loop in plain PyTorch.

The baseline is the loop as the original research code writes it: a per-layer Python match loss, DSA as one
pass per transform (``diff_augment_sequential``), and MTT's loss on ``torch.cat``-ed parameters with plain
tensor ops. Both sides share the network, the data and the optimiser, so the difference is the ops.

Rows:
- ``dc_outer`` / ``dsa_outer``: one outer step (gradient matching over every class + the image update).
- ``mtt_iter``: one MTT iteration (N student steps + trajectory loss + backward + updates); ``pydistill`` is
  the plain unroll, ``pydistill-recompute`` the exact constant-activation-memory unroll. Peak memory: CUDA max
  allocated on a GPU; on the CPU the peak RSS increase of a forked child running one iteration.

    python benchmarks/experiments/bench_methods.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import os
import resource
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common.py

from common import add_speedups, format_table, measure, record, set_threads  # noqa: E402


# ------------------------------------------------------------------------------------------ original-style ops
def _match_loss_per_layer(gw_syn, gw_real):
    """The research-code distance: a Python loop over layers, 1 - cosine per output node, biases skipped."""
    total = 0.0
    for gs, gr in zip(gw_syn, gw_real):
        if gs.dim() == 1:
            continue
        if gs.dim() == 4:
            gs, gr = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
        elif gs.dim() == 3:
            gs, gr = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
        dots = (gs * gr).sum(-1)
        total = total + (1 - dots / (gs.norm(dim=-1) * gr.norm(dim=-1) + 1e-6)).sum()
    return total


def _trajectory_loss_cat(student, start, target):
    """Research-code MTT loss: squared distances of flat vectors with plain tensor ops."""
    return ((student - target) ** 2).sum() / ((start - target) ** 2).sum()


# ------------------------------------------------------------------------------------------ DC / DSA
def _dc_case(device, quick, dsa):
    from pydistill.models import get_network
    from pydistill.ops.diff_augment import diff_augment, diff_augment_sequential, sample_dsa_params
    from pydistill.ops.match_loss import match_loss

    C, K, H = (1, 10, 8) if quick else (3, 10, 32)
    ipc, batch_real = (2, 32) if quick else (10, 256)
    width = 16 if quick else 128
    torch.manual_seed(0)
    net = get_network("ConvNet", C, K, (H, H), width=width).to(device)
    params = list(net.parameters())
    real = [torch.randn(batch_real, C, H, H, device=device) for _ in range(K)]
    images = torch.randn(K * ipc, C, H, H, device=device, requires_grad=True)
    labels = torch.arange(K, device=device).repeat_interleave(ipc)
    opt = torch.optim.SGD([images], lr=0.1, momentum=0.5)
    strategy = "color_crop_cutout_flip_scale_rotate"
    gen = torch.Generator(device=device).manual_seed(0)

    def outer_step(match_fn, aug_fn):
        opt.zero_grad(set_to_none=True)
        for c in range(K):
            xr, xs = real[c], images[c * ipc : (c + 1) * ipc]
            if dsa:
                xr, xs = aug_fn(xr, xs)
            yr = torch.full((xr.shape[0],), c, device=device, dtype=torch.long)
            gr = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(xr), yr), params)]
            gs = torch.autograd.grad(
                F.cross_entropy(net(xs), labels[c * ipc : (c + 1) * ipc]), params, create_graph=True
            )
            match_fn(list(gs), gr).backward()
        opt.step()

    def aug_fused(xr, xs):
        xr, p = diff_augment(xr, strategy, generator=gen, return_params=True)
        return xr, diff_augment(xs, strategy, params=p)

    def aug_seq(xr, xs):
        p = sample_dsa_params(1, strategy, height=H, width=H, device=device, generator=gen)
        return diff_augment_sequential(xr, p), diff_augment_sequential(xs, p)

    op = "dsa_outer" if dsa else "dc_outer"
    case = f"{'cifar-like' if not quick else 'digits-like'} ipc{ipc} w{width}"
    return [
        measure(
            op,
            case,
            "baseline",
            lambda: outer_step(_match_loss_per_layer, aug_seq),
            device,
            warmup=1,
            iters=3,
            min_time_s=0.0,
        ),
        measure(
            op, case, "pydistill", lambda: outer_step(match_loss, aug_fused), device, warmup=1, iters=3, min_time_s=0.0
        ),
    ]


# ------------------------------------------------------------------------------------------ MTT
def _mtt_setup(device, quick, steps=None):
    from pydistill.functional import flat_params
    from pydistill.models import get_network
    from pydistill.ops.diff_augment import diff_augment

    C, K, H = (1, 10, 8) if quick else (3, 10, 32)
    ipc, default_steps = (10, 10) if quick else (10, 30)
    steps = steps or default_steps
    width = 16 if quick else 128
    torch.manual_seed(0)
    net = get_network("ConvNet", C, K, (H, H), width=width).to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    start = flat_params(net)
    target = start + 0.01 * torch.randn_like(start)
    images = torch.randn(K * ipc, C, H, H, device=device, requires_grad=True)
    labels = torch.arange(K, device=device).repeat_interleave(ipc)
    log_lr = torch.tensor(-4.6, device=device, requires_grad=True)
    strategy = "color_crop_cutout_flip_scale_rotate"
    gen = torch.Generator(device=device).manual_seed(0)
    idx = [torch.arange(K * ipc, device=device) for _ in range(steps)]
    aug = [
        diff_augment(images.detach(), strategy, per_sample=True, generator=gen, return_params=True)[1]
        for _ in range(steps)
    ]
    return dict(
        net=net,
        start=start,
        target=target,
        images=images,
        labels=labels,
        log_lr=log_lr,
        strategy=strategy,
        idx=idx,
        aug=aug,
        case=f"{'digits-like' if quick else 'cifar-like'} ipc{ipc} N{steps} w{width}",
    )


def _mtt_iteration(s, impl):
    from pydistill.functional import functional_forward
    from pydistill.methods.mtt import unroll_student
    from pydistill.ops.diff_augment import diff_augment_sequential
    from pydistill.ops.trajectory_loss import trajectory_loss

    lr = s["log_lr"].exp()
    if impl == "baseline":
        w = s["start"].clone().requires_grad_(True)
        for n, idx in enumerate(s["idx"]):
            x = diff_augment_sequential(s["images"][idx], s["aug"][n])
            loss = F.cross_entropy(functional_forward(s["net"], w, x), s["labels"][idx])
            w = w - lr * torch.autograd.grad(loss, w, create_graph=True)[0]
        loss = _trajectory_loss_cat(w, s["start"], s["target"])
    else:
        w = unroll_student(
            s["net"],
            s["images"],
            s["labels"],
            lr,
            s["start"],
            s["idx"],
            strategy=s["strategy"],
            aug_params=s["aug"],
            unroll="recompute" if impl == "pydistill-recompute" else "plain",
        )
        loss = trajectory_loss(w, s["start"], s["target"])
    s["images"].grad = None
    s["log_lr"].grad = None
    loss.backward()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_peak_extra_mb(fn) -> float | None:
    """Peak RSS increase (MiB) while ``fn()`` runs once, measured in a forked child (Linux only)."""
    if not hasattr(os, "fork") or not os.path.exists("/proc/self/statm"):
        return None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            base = _rss_mb()
            fn()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            os.write(w, f"{peak - base:.3f}".encode())
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    return float(data) if data else None


def _mtt_rows(device, quick):
    rows = []
    for steps in (10, 40) if quick else (30, 80):  # activation memory grows with N for all but recompute
        rows += _mtt_case(device, quick, steps)
    return rows


def _mtt_case(device, quick, steps):
    s = _mtt_setup(device, quick, steps)
    impls = ("baseline", "pydistill", "pydistill-recompute")
    # CPU peak memory first, each in a child forked before any iteration ran (no allocator caches inherited)
    cpu_peak = {
        impl: cpu_peak_extra_mb(lambda: _mtt_iteration(s, impl)) if not str(device).startswith("cuda") else None
        for impl in impls
    }
    rows = []
    for impl in impls:
        row = measure(
            "mtt_iter", s["case"], impl, lambda: _mtt_iteration(s, impl), device, warmup=1, iters=3, min_time_s=0.0
        )
        if row["peak_mb"] is None:
            row["peak_mb"] = cpu_peak[impl]
        rows.append(row)
    return rows


def run(device: str, quick: bool) -> list[dict]:
    rows = []
    rows += _dc_case(device, quick, dsa=False)
    rows += _dc_case(device, quick, dsa=True)
    rows += _mtt_rows(device, quick)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--record", action="store_true", help="write the table to benchmarks/results/ (tag 'methods')")
    p.add_argument("--note", default="", help="free text recorded with the table (e.g. load on the machine)")
    args = p.parse_args(argv)
    set_threads(args.threads)
    rows = add_speedups(run(args.device, args.quick))
    print(format_table(rows))
    if args.record:
        print("recorded", record(rows, args.device, tag="methods" + ("-quick" if args.quick else ""), note=args.note))
    return rows


if __name__ == "__main__":
    main()
