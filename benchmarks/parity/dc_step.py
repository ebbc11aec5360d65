"""Parity of one DC / DSA outer iteration with the official VICO-UoE/DatasetCondensation ``main.py`` loop.

From identical state (the official ConvNet's initial weights loaded into pydistill's ConvNet, the same real
batches, the same synthetic images; DSA: the same augmentation parameters, see ``--dsa``) both sides run one
iteration (``outer_loop`` image updates with ``inner_loop`` epochs of network training in between) and the
updated synthetic images are compared (max abs error). The official side is driven through the official
functions (``get_network``, ``match_loss``, ``epoch``, ``TensorDataset``, ``DiffAugment``) in the order of its
``main.py``; pydistill's side is ``DC.step`` with its network and real-batch sampling replaced by the shared ones.

Then both iterations are timed unpatched on the same settings (official: its network, ``np.random.permutation``
real batches; pydistill: ``DC.step``), interleaved in this process, one thread.

    python benchmarks/parity/dc_step.py --official /path/to/DatasetCondensation [--dataset mnist --ipc 1]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the pydistill checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dsa_params  # noqa: E402
import numpy as np
import torch
from common import git_commit, import_official, interleaved_timing, max_abs, official_path, timing_table, write_result  # noqa: E402
from torch import nn


def official_args(device: str, dsa: bool, strategy: str, utils):
    """The ``args`` namespace the official ``epoch``/``match_loss``/``DiffAugment`` read."""
    return types.SimpleNamespace(
        device=device,
        dsa=dsa,
        dsa_strategy=strategy if dsa else "None",
        dsa_param=utils.ParamDiffAug(),
        dis_metric="ours",
        dc_aug_param=None,
    )


def official_iteration(
    utils,
    net,
    image_syn,
    label_syn,
    real_batch,
    args,
    *,
    outer_loop,
    inner_loop,
    lr_img,
    lr_net,
    batch_train,
    dsa_seed=None,
):
    """One iteration of the official loop body (main.py) from the given network and synthetic images.

    real_batch(ol, c) -> real images of class c at outer step ol; dsa_seed(ol, c) -> the DiffAugment seed.
    Returns the updated synthetic images (a new tensor)."""
    num_classes = int(label_syn.max()) + 1
    ipc = image_syn.shape[0] // num_classes
    image_syn = image_syn.detach().clone().requires_grad_(True)
    optimizer_img = torch.optim.SGD([image_syn], lr=lr_img, momentum=0.5)
    net.train()
    net_parameters = list(net.parameters())
    optimizer_net = torch.optim.SGD(net.parameters(), lr=lr_net)
    criterion = nn.CrossEntropyLoss()
    for ol in range(outer_loop):
        loss = torch.tensor(0.0, dtype=image_syn.dtype)
        for c in range(num_classes):
            img_real = real_batch(ol, c)
            lab_real = torch.full((img_real.shape[0],), c, dtype=torch.long)
            img_syn = image_syn[c * ipc : (c + 1) * ipc]
            lab_syn = torch.full((ipc,), c, dtype=torch.long)
            if args.dsa:
                seed = dsa_seed(ol, c)
                img_real = utils.DiffAugment(img_real, args.dsa_strategy, seed=seed, param=args.dsa_param)
                img_syn = utils.DiffAugment(img_syn, args.dsa_strategy, seed=seed, param=args.dsa_param)
            img_real, img_syn = dsa_params.standard_layout(img_real), dsa_params.standard_layout(img_syn)
            gw_real = torch.autograd.grad(criterion(net(img_real), lab_real), net_parameters)
            gw_real = [g.detach().clone() for g in gw_real]
            gw_syn = torch.autograd.grad(criterion(net(img_syn), lab_syn), net_parameters, create_graph=True)
            loss = loss + utils.match_loss(gw_syn, gw_real, args)
        optimizer_img.zero_grad()
        loss.backward()
        optimizer_img.step()
        if ol == outer_loop - 1:
            break
        dst = utils.TensorDataset(copy.deepcopy(image_syn.detach()), copy.deepcopy(label_syn.detach()))
        loader = torch.utils.data.DataLoader(dst, batch_size=batch_train, shuffle=True, num_workers=0)
        for _ in range(inner_loop):
            utils.epoch("train", loader, net, optimizer_net, criterion, args, aug=bool(args.dsa))
    return image_syn.detach()


def build_ours(name, ds, ipc, cfg, seed=0):
    from pydistill.methods import get_method

    return get_method(name)(ds, ipc=ipc, device="cpu", seed=seed, config=cfg)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", help="checkout of VICO-UoE/DatasetCondensation (or $PYDISTILL_OFFICIAL_DC)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--outer-loop", type=int, default=None, help="default: the official get_loops(ipc)")
    p.add_argument("--inner-loop", type=int, default=None)
    p.add_argument("--dsa", action="store_true", help="DSA: siamese augmentation with the official draws")
    p.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="float64 needs outer_loop 1 (the official epoch() casts the inner-loop batches to float32)",
    )
    p.add_argument("--time-reps", type=int, default=3, help="timed iterations per side (0: skip timing)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per side before timing")
    p.add_argument("--name", default=None, help="result file suffix (default dc-<dataset>-ipc<ipc>)")
    p.add_argument(
        "--official-align-corners",
        action="store_true",
        help="run the official scale/rotate with align_corners=True (the PyTorch < 1.3 behaviour the "
        "papers ran under; today's default is False)",
    )
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    import pydistill.methods.dc as dcmod
    from pydistill.data import load_dataset

    path = official_path("dc", a.official)
    utils, networks = import_official(path, "utils", "networks")
    ds = load_dataset(a.dataset)
    nc, ch, im_size = ds.num_classes, ds.channel, tuple(ds.im_size)
    d_outer, d_inner = utils.get_loops(a.ipc)
    outer = a.outer_loop or d_outer
    inner = a.inner_loop or d_inner
    dtype = getattr(torch, a.dtype)
    if dtype == torch.float64 and (outer > 1 or (a.dsa and not a.official_align_corners)):
        raise SystemExit(
            "--dtype float64 needs --outer-loop 1 and no --dsa: the official epoch() casts to float32 "
            "and its scale/rotate build float32 grids (--official-align-corners casts them)"
        )
    if a.dsa and outer > 1:
        raise SystemExit(
            "--dsa compares the siamese draws of one outer step (--outer-loop 1); the inner loop's "
            "per-sample draws come from the official global RNG and are not replayed"
        )
    cfg = dict(
        model="ConvNet",
        model_kwargs={},
        init="noise",
        outer_loop=outer,
        inner_loop=inner,
        lr_img=0.1,
        lr_net=0.01,
        batch_real=256,
        batch_train=256,
        metric="ours",
    )

    # ---- identical state -----------------------------------------------------------------------------------
    net_off = utils.get_network("ConvNet", ch, nc, im_size).to(dtype)
    net_init = copy.deepcopy(net_off.state_dict())
    g = torch.Generator().manual_seed(1)
    images0 = torch.randn(nc * a.ipc, ch, *im_size, generator=g).to(dtype)
    labels = torch.arange(nc).repeat_interleave(a.ipc)
    rng = np.random.default_rng(2)
    idx_by_class = [i.numpy() for i in ds.indices_by_class]
    batches = {
        (ol, c): ds.x_train[rng.permutation(idx_by_class[c])[:256]].to(dtype) for ol in range(outer) for c in range(nc)
    }
    method = "dsa" if a.dsa else "dc"
    m = build_ours(method, ds, a.ipc, cfg)
    strategy = m.strategy if a.dsa else "None"
    args = official_args("cpu", a.dsa, strategy, utils)
    dsa_seed = lambda ol, c: 1000 + 100 * ol + 10 * c  # noqa: E731  (each official call uses seed .. seed+3)
    if a.dsa:
        dsa_params.install_official_draws(dsa_seed, utils, strategy, nc)
    ref = official_iteration(
        utils,
        net_off,
        images0,
        labels,
        lambda ol, c: batches[(ol, c)],
        args,
        outer_loop=outer,
        inner_loop=inner,
        lr_img=0.1,
        lr_net=0.01,
        batch_train=256,
        dsa_seed=dsa_seed,
    )
    net_ours = dcmod.fresh_network(m, m.config).to(dtype)
    net_ours.load_state_dict(net_init)  # same parameter names/shapes (features.k, classifier)
    calls = []

    def replay(c, n, generator=None):
        ol = len(calls) // nc
        calls.append((ol, c))
        return batches[(ol, int(c))][:n]

    orig_fresh = dcmod.fresh_network
    dcmod.fresh_network = lambda method, cfg_: net_ours
    m.dataset.sample_real = replay
    m.images = images0.clone().requires_grad_(True)
    m.opt_img = torch.optim.SGD([m.images], lr=0.1, momentum=0.5)
    m.step(0)
    if a.dsa:
        dsa_params.uninstall()
    dcmod.fresh_network = orig_fresh
    del m.dataset.sample_real
    err = max_abs(m.images, ref)
    delta = max_abs(ref, images0)
    print(
        f"{method.upper()} {a.dataset} IPC {a.ipc} outer {outer} inner {inner} {a.dtype}: "
        f"max|ours - official| = {err:.3e} "
        f"(update size max|S1 - S0| = {delta:.3e})"
    )
    per_class = [max_abs(m.images[c * a.ipc : (c + 1) * a.ipc], ref[c * a.ipc : (c + 1) * a.ipc]) for c in range(nc)]
    groups = [dsa_params.official_group(dsa_seed(0, c), strategy) for c in range(nc)] if a.dsa else None
    print(
        "  per class:", ", ".join(f"{c}{'/' + groups[c] if groups else ''}: {e:.1e}" for c, e in enumerate(per_class))
    )
    record = {
        "per_class_max_abs_err": per_class,
        "dsa_groups": groups,
        "method": method,
        "official_align_corners": bool(a.official_align_corners),
        "dataset": a.dataset,
        "ipc": a.ipc,
        "outer_loop": outer,
        "inner_loop": inner,
        "dtype": a.dtype,
        "max_abs_err_images": err,
        "max_abs_update": delta,
        "official_commit": git_commit(path),
        "command": "python benchmarks/parity/dc_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }

    # ---- timing: one iteration each, unpatched, interleaved ----------------------------------------------
    if a.time_reps > 0:
        ours = build_ours(method, ds, a.ipc, {**cfg})
        img32 = images0.float()

        def official_it(r):  # get_network + per-class np.random.permutation real batches, as main.py
            net = utils.get_network("ConvNet", ch, nc, im_size)
            official_iteration(
                utils,
                net,
                img32,
                labels,
                lambda ol, c: ds.x_train[np.random.permutation(idx_by_class[c])[:256]],
                official_args("cpu", a.dsa, strategy, utils),
                outer_loop=outer,
                inner_loop=inner,
                lr_img=0.1,
                lr_net=0.01,
                batch_train=256,
                dsa_seed=lambda ol, c: int(time.time() * 1000) % 100000,
            )

        tm = interleaved_timing(
            {"official": official_it, "pydistill": lambda r: ours.step(max(r, 0))}, a.time_reps, warmup=a.warmup
        )
        ratio_wall = tm["pydistill"]["median_wall_s"] / tm["official"]["median_wall_s"]
        ratio_cpu = tm["pydistill"]["median_cpu_s"] / tm["official"]["median_cpu_s"]
        record.update(timing=tm, ratio_wall=ratio_wall, ratio_cpu=ratio_cpu)
        print(
            f"  median wall: official {tm['official']['median_wall_s']:.2f} s, pydistill "
            f"{tm['pydistill']['median_wall_s']:.2f} s (ratio {ratio_wall:.3f}); cpu ratio {ratio_cpu:.3f}"
        )
    if not a.no_write:
        name = a.name or f"{method}-{a.dataset}-ipc{a.ipc}"
        dsa_note = ", " + strategy if a.dsa else ""
        ac_note = " (official at align_corners=True)" if a.official_align_corners else ""
        md = (
            "| setting | dtype | max abs err (images) | update size |\n|---|---|---|---|\n"
            f"| {method.upper()} {a.dataset} IPC {a.ipc}{dsa_note}{ac_note}, ConvNet-128, "
            f"outer {outer} / inner {inner} | {a.dtype} | {err:.2e} | "
            f"{delta:.2e} |\n"
        )
        if "timing" in record:
            md += "\n" + timing_table(record["timing"], f"DC {a.dataset} IPC {a.ipc}, one iteration, fp32")
        write_result(name, record, md)
    return record


if __name__ == "__main__":
    main()
