"""Parity of one DM iteration with the official VICO-UoE/DatasetCondensation ``main_DM.py`` loop (ConvNet).

From identical state (the official ConvNet's weights in pydistill's ConvNet, the same real batches and
synthetic images; with DSA the official siamese draws, see ``dsa_params``) both sides run one iteration
(per class: squared distance of the mean embeddings, summed; one momentum-SGD step on the images) and the
updated images are compared. The official side is driven through its ``get_network``/``DiffAugment`` in the
order of ``main_DM.py``; pydistill's side is ``DM.step`` with network and real batches replaced. Then one
iteration of each is timed unpatched, interleaved, one thread.

    python benchmarks/parity/dm_step.py --official /path/to/DatasetCondensation [--dataset mnist --ipc 10]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dsa_params  # noqa: E402
import numpy as np
import torch
from common import git_commit, import_official, interleaved_timing, max_abs, official_path, timing_table, write_result  # noqa: E402
from dc_step import official_args  # noqa: E402


def official_dm_iteration(utils, net, image_syn, real_batch, args, *, ipc, num_classes, lr_img, dsa_seed=None):
    """One iteration of the official DM loop body (ConvNet branch) -> the updated synthetic images."""
    image_syn = image_syn.detach().clone().requires_grad_(True)
    optimizer_img = torch.optim.SGD([image_syn], lr=lr_img, momentum=0.5)
    net.train()
    for p in net.parameters():
        p.requires_grad = False
    loss = torch.tensor(0.0, dtype=image_syn.dtype)
    for c in range(num_classes):
        img_real = real_batch(c)
        img_syn = image_syn[c * ipc : (c + 1) * ipc]
        if args.dsa:
            seed = dsa_seed(c)
            img_real = utils.DiffAugment(img_real, args.dsa_strategy, seed=seed, param=args.dsa_param)
            img_syn = utils.DiffAugment(img_syn, args.dsa_strategy, seed=seed, param=args.dsa_param)
            img_real, img_syn = dsa_params.standard_layout(img_real), dsa_params.standard_layout(img_syn)
        output_real = net.embed(img_real).detach()
        output_syn = net.embed(img_syn)
        loss = loss + torch.sum((torch.mean(output_real, dim=0) - torch.mean(output_syn, dim=0)) ** 2)
    optimizer_img.zero_grad()
    loss.backward()
    optimizer_img.step()
    return image_syn.detach()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", help="checkout of VICO-UoE/DatasetCondensation (or $PYDISTILL_OFFICIAL_DC)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--no-dsa", action="store_true", help="without augmentation (then float64 is possible)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float32")
    p.add_argument("--lr-img", type=float, default=1.0, help="official main_DM.py default")
    p.add_argument("--time-reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--name", default=None)
    p.add_argument(
        "--official-align-corners",
        action="store_true",
        help="run the official scale/rotate with align_corners=True (the PyTorch < 1.3 behaviour the "
        "papers ran under; today's default is False)",
    )
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    import pydistill.methods.dm as dmmod
    from pydistill.data import load_dataset
    from pydistill.methods import get_method

    dsa = not a.no_dsa
    dtype = getattr(torch, a.dtype)
    if dsa and dtype == torch.float64 and not a.official_align_corners:
        raise SystemExit(
            "--dtype float64 with DSA needs --official-align-corners (its shim casts the official "
            "float32 sampling grid to float64)"
        )
    path = official_path("dc", a.official)
    utils, _ = import_official(path, "utils", "networks")
    ds = load_dataset(a.dataset)
    nc, ch, im_size = ds.num_classes, ds.channel, tuple(ds.im_size)
    cfg = dict(model="ConvNet", model_kwargs={}, init="real", lr_img=a.lr_img, batch_real=256, dsa=dsa)
    m = get_method("dm")(ds, ipc=a.ipc, device="cpu", seed=0, config=cfg)
    strategy = m.strategy if dsa else "None"

    net_off = utils.get_network("ConvNet", ch, nc, im_size).to(dtype)
    net_init = copy.deepcopy(net_off.state_dict())
    images0 = m.images.detach().clone().to(dtype)  # real init, as both codes
    rng = np.random.default_rng(2)
    idx_by_class = [i.numpy() for i in ds.indices_by_class]
    batches = {c: ds.x_train[rng.permutation(idx_by_class[c])[:256]].to(dtype) for c in range(nc)}
    args = official_args("cpu", dsa, strategy, utils)
    seed_of = lambda ol, c: 2000 + 10 * c  # noqa: E731
    with dsa_params.official_with_align_corners(utils, True) if a.official_align_corners else nullcontext():
        ref = official_dm_iteration(
            utils,
            net_off,
            images0,
            lambda c: batches[c],
            args,
            ipc=a.ipc,
            num_classes=nc,
            lr_img=a.lr_img,
            dsa_seed=lambda c: seed_of(0, c),
        )

    net_ours = dmmod.fresh_network(m, m.config).to(dtype)
    net_ours.load_state_dict(net_init)
    orig_fresh = dmmod.fresh_network
    dmmod.fresh_network = lambda method, cfg_: net_ours
    m.dataset.sample_real = lambda c, n, generator=None: batches[int(c)][:n]
    m.images = images0.clone().requires_grad_(True)
    m.opt_img = torch.optim.SGD([m.images], lr=a.lr_img, momentum=0.5)
    if dsa:
        dsa_params.install_official_draws(seed_of, utils, strategy, nc)
    try:
        m.step(0)
    finally:
        dsa_params.uninstall()
        dmmod.fresh_network = orig_fresh
        del m.dataset.sample_real
    err, delta = max_abs(m.images, ref), max_abs(ref, images0)
    print(f"DM {a.dataset} IPC {a.ipc} dsa={dsa} {a.dtype}: max|ours - official| = {err:.3e} (update size {delta:.3e})")
    per_class = [max_abs(m.images[c * a.ipc : (c + 1) * a.ipc], ref[c * a.ipc : (c + 1) * a.ipc]) for c in range(nc)]
    groups = [dsa_params.official_group(seed_of(0, c), strategy) for c in range(nc)] if dsa else None
    print(
        "  per class:", ", ".join(f"{c}{'/' + groups[c] if groups else ''}: {e:.1e}" for c, e in enumerate(per_class))
    )
    record = {
        "per_class_max_abs_err": per_class,
        "dsa_groups": groups,
        "method": "dm",
        "dataset": a.dataset,
        "ipc": a.ipc,
        "dsa": dsa,
        "strategy": strategy,
        "official_align_corners": bool(a.official_align_corners),
        "dtype": a.dtype,
        "lr_img": a.lr_img,
        "max_abs_err_images": err,
        "max_abs_update": delta,
        "official_commit": git_commit(path),
        "command": "python benchmarks/parity/dm_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    md = (
        "| setting | dtype | max abs err (images) | update size |\n|---|---|---|---|\n"
        f"| DM {a.dataset} IPC {a.ipc}, ConvNet-128, {'DSA ' + strategy if dsa else 'no augmentation'}"
        f"{' (official at align_corners=True)' if a.official_align_corners else ''} | "
        f"{a.dtype} | {err:.2e} | {delta:.2e} |\n"
    )
    if a.time_reps > 0:
        ours = get_method("dm")(ds, ipc=a.ipc, device="cpu", seed=0, config=cfg)
        img32 = ours.images.detach().clone()

        def official_it(r):
            net = utils.get_network("ConvNet", ch, nc, im_size)
            official_dm_iteration(
                utils,
                net,
                img32,
                lambda c: ds.x_train[np.random.permutation(idx_by_class[c])[:256]],
                official_args("cpu", dsa, strategy, utils),
                ipc=a.ipc,
                num_classes=nc,
                lr_img=a.lr_img,
                dsa_seed=lambda c: int(time.time() * 1000) % 100000,
            )

        tm = interleaved_timing(
            {"official": official_it, "pydistill": lambda r: ours.step(max(r, 0))}, a.time_reps, warmup=a.warmup
        )
        record.update(
            timing=tm,
            ratio_wall=tm["pydistill"]["median_wall_s"] / tm["official"]["median_wall_s"],
            ratio_cpu=tm["pydistill"]["median_cpu_s"] / tm["official"]["median_cpu_s"],
        )
        md += "\n" + timing_table(tm, f"DM {a.dataset} IPC {a.ipc}, one iteration, fp32")
        print(f"  ratio wall {record['ratio_wall']:.3f}, cpu {record['ratio_cpu']:.3f}")
    if not a.no_write:
        write_result(a.name or f"dm-{a.dataset}-ipc{a.ipc}", record, md)
    return record


if __name__ == "__main__":
    main()
