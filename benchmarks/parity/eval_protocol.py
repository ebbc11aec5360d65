"""Parity of the evaluation protocol: the official ``evaluate_synset`` (VICO-UoE/DatasetCondensation) and
``pydistill.evaluate`` train fresh ConvNets on the same synthetic set and test on the same test images; the
accuracies (mean +- std over ``--num-eval`` networks each) must agree within noise.

Protocols: ``dsa`` (DSA per sample, the DSA/DM/MTT evaluation), ``none`` (no augmentation, the DC evaluation
outside MNIST and ConvNetBN). ``--epochs`` below the published 1000 (DSA) / 300 (none) keeps CPU runs short;
both sides always run the same number. When this checkout's ``pydistill.evaluate`` accepts ``protocol=``,
``--protocol paper`` is passed through for the DC MNIST setting as well (crop_scale_rotate, official side with
``get_daparam``).

    python benchmarks/parity/eval_protocol.py --official /path/to/DatasetCondensation --protocol dsa --epochs 300
"""

from __future__ import annotations

import argparse
import inspect
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from common import Timer, git_commit, import_official, official_path, write_result  # noqa: E402


def synthetic_real_subset(ds, ipc: int, seed: int):
    """``ipc`` random real training images per class (class-major) as a pydistill SyntheticSet."""
    from pydistill.synthetic import SyntheticSet

    g = torch.Generator().manual_seed(seed)
    parts = [ds.sample_real(c, ipc, g) for c in range(ds.num_classes)]
    labels = torch.arange(ds.num_classes).repeat_interleave(ipc)
    return SyntheticSet(torch.cat(parts).clone(), labels, None, {"method": "random", "ipc": ipc})


class StandardLayout(torch.nn.Module):
    """Wraps an official network: inputs in the standard layout first (the official DSA crop returns 1-channel
    batches PyTorch reads as channels-last, and the official ``view`` then fails on today's PyTorch; values are
    unchanged, see ``dsa_params.standard_layout``)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.clone(memory_format=torch.contiguous_format))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", help="checkout of VICO-UoE/DatasetCondensation (or $PYDISTILL_OFFICIAL_DC)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument(
        "--protocol",
        choices=("dsa", "none", "paper-dc"),
        default="dsa",
        help="paper-dc: the official DC evaluation (MNIST: crop_scale_rotate); needs protocol= support",
    )
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--num-eval", type=int, default=5)
    p.add_argument("--test-per-class", type=int, default=200, help="test images per class (both sides)")
    p.add_argument("--set-from", default=None, help="a synthetic.safetensors to evaluate (default: real subset)")
    p.add_argument("--name", default=None)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    import pydistill
    from pydistill.data import dsa_strategy_for, load_dataset
    from pydistill.synthetic import SyntheticSet

    path = official_path("dc", a.official)
    utils, _ = import_official(path, "utils", "networks")
    full = load_dataset(a.dataset)
    ds = full.subset(1, seed=0, n_test_per_class=a.test_per_class)  # the test images both sides use
    syn = SyntheticSet.load(a.set_from) if a.set_from else synthetic_real_subset(full, a.ipc, seed=3)
    nc, ch, im_size = ds.num_classes, ds.channel, tuple(ds.im_size)
    strategy = dsa_strategy_for(a.dataset)

    # ---- official ------------------------------------------------------------------------------------------
    args = types.SimpleNamespace(
        device="cpu",
        lr_net=0.01,
        batch_train=256,
        epoch_eval_train=a.epochs,
        dsa=a.protocol == "dsa",
        dsa_strategy=strategy,
        dsa_param=utils.ParamDiffAug(),
        dc_aug_param=None,
    )
    if a.protocol == "paper-dc":
        args.dc_aug_param = utils.get_daparam(a.dataset.upper(), "ConvNet", "ConvNet", a.ipc)
    test = utils.TensorDataset(ds.x_test.float(), ds.y_test.long())
    testloader = torch.utils.data.DataLoader(test, batch_size=256, shuffle=False, num_workers=0)
    acc_off = []
    with Timer() as t_off:
        for i in range(a.num_eval):
            net = StandardLayout(utils.get_network("ConvNet", ch, nc, im_size))
            _, _, acc = utils.evaluate_synset(i, net, syn.images.clone(), syn.labels.clone(), testloader, args)
            acc_off.append(float(acc))
            print(f"official net {i}: {100 * acc:.2f}", flush=True)

    # ---- pydistill -----------------------------------------------------------------------------------------
    kw = dict(models=("ConvNet",), num_eval=a.num_eval, epochs=a.epochs, model_kwargs={}, seed=0, progress=False)
    has_protocol = "protocol" in inspect.signature(pydistill.evaluate).parameters
    if a.protocol == "paper-dc":
        if not has_protocol:
            raise SystemExit("--protocol paper-dc needs pydistill.evaluate(..., protocol=) (not in this checkout)")
        kw.update(protocol="paper", method="dc") if "method" in inspect.signature(
            pydistill.evaluate
        ).parameters else kw.update(protocol="paper")
    else:
        kw.update(dsa=a.protocol == "dsa")
        if has_protocol:
            kw["protocol"] = "uniform" if a.protocol == "dsa" else None
            if kw["protocol"] is None:
                del kw["protocol"]
    with Timer() as t_ours:
        res = pydistill.evaluate(syn, ds, **kw)["ConvNet"]
    acc_ours = res["accs"]
    mo, so, mu, su = np.mean(acc_off), np.std(acc_off), np.mean(acc_ours), np.std(acc_ours)
    # difference of means in units of its standard error (two independent samples of num_eval networks)
    se = float(np.sqrt((so**2 + su**2) / a.num_eval)) or float("nan")
    z = float((mu - mo) / se)
    print(f"official {100 * mo:.2f} +- {100 * so:.2f}, pydistill {100 * mu:.2f} +- {100 * su:.2f} (z = {z:.2f})")
    record = {
        "dataset": a.dataset,
        "ipc": a.ipc,
        "protocol": a.protocol,
        "epochs": a.epochs,
        "num_eval": a.num_eval,
        "test_images": int(ds.y_test.numel()),
        "strategy": strategy,
        "synthetic": a.set_from or f"random real subset (seed 3), IPC {a.ipc}",
        "official_accs": acc_off,
        "ours_accs": acc_ours,
        "official_mean": mo,
        "official_std": so,
        "ours_mean": mu,
        "ours_std": su,
        "z": z,
        "official_s": t_off.s,
        "ours_s": t_ours.s,
        "official_commit": git_commit(path),
        "command": "python benchmarks/parity/eval_protocol.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    md = (
        "| set | protocol | epochs | nets | test images | official acc % | pydistill acc % | z |\n"
        "|---|---|---|---|---|---|---|---|\n"
        f"| {record['synthetic']} | {a.protocol}{' ' + strategy if a.protocol == 'dsa' else ''} | {a.epochs} | "
        f"{a.num_eval} + {a.num_eval} | {record['test_images']} | {100 * mo:.2f} +- {100 * so:.2f} | "
        f"{100 * mu:.2f} +- {100 * su:.2f} | {z:.2f} |\n"
    )
    if not a.no_write:
        write_result(a.name or f"eval-{a.dataset}-ipc{a.ipc}-{a.protocol}", record, md)
    return record


if __name__ == "__main__":
    main()
