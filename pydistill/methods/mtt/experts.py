"""MTT experts: networks trained with plain SGD on the real data, their flat parameters theta*_t saved before
training (t = 0) and after every epoch t = 1..E, one safetensors file per expert; the ``pydistill experts`` command.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pydistill.functional import flat_params
from pydistill.models import default_model_kwargs

__all__ = ["EXPERT_FORMAT", "ExpertBuffer", "train_experts", "register_cli"]

EXPERT_FORMAT = "pydistill-expert-v1"


def _expert_path(out_dir: Path, i: int) -> Path:
    return out_dir / f"expert_{i:05d}.safetensors"


def _read_expert_meta(path: Path) -> dict | None:
    """The metadata of a complete expert file, or None when the file is missing / unreadable / foreign."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != EXPERT_FORMAT or "trajectory" not in f.keys():
                return None
            shape = f.get_slice("trajectory").get_shape()
    except Exception:  # noqa: BLE001 - a truncated or foreign file counts as absent
        return None
    meta = dict(meta)
    if list(shape) != [int(meta.get("epochs", -1)) + 1, int(meta.get("num_params", -1))]:
        return None
    return meta


def _build_model(model: str, model_kwargs: dict, dataset, seed: int) -> nn.Module:
    from pydistill.models import seeded_network

    return seeded_network(model, dataset.channel, dataset.num_classes, dataset.im_size, seed, **dict(model_kwargs))


def train_experts(
    dataset,
    out_dir,
    *,
    num_experts: int,
    epochs: int,
    lr: float = 0.01,
    batch_size: int = 256,
    dsa: bool = True,
    dsa_strategy: str | None = None,
    model: str = "ConvNet",
    model_kwargs: dict | None = None,
    dtype: str = "float32",
    device="cpu",
    seed: int = 0,
    data_root=None,
    zca: bool = False,
    log=print,
) -> list[Path]:
    """Train ``num_experts`` expert trajectories with plain SGD (no momentum, no weight decay) and save them.

    dataset: a ``pydistill.data.Dataset`` or a dataset name (loaded with ``data_root``/``zca``).
    Each expert i is one file ``out_dir/expert_{i:05d}.safetensors`` holding ``trajectory`` [epochs + 1, P]
    (flat parameters before training and after each epoch; ``dtype`` "float32" or "bfloat16") and its settings
    as metadata; written atomically (``model_kwargs=None``: ``pydistill.models.default_model_kwargs``). Existing
    complete experts with the same settings are skipped, so an interrupted run resumes (the interrupted expert
    restarts). Expert i is seeded from (seed, i) only; under torch.distributed (torchrun) expert i is trained by
    rank i % world, and every rank returns once all exist.
    Returns the paths of all ``num_experts`` files.
    """
    from safetensors.torch import save as st_save

    from pydistill.utils import atomic_write_bytes, make_generator, resolve_device

    if isinstance(dataset, str):
        from pydistill.data import load_dataset

        dataset = load_dataset(dataset, data_root, zca=zca, device="cpu")
    for name, v in (("num_experts", num_experts), ("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not float(lr) > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    dev = resolve_device(device)
    model_kwargs = dict(model_kwargs) if model_kwargs is not None else default_model_kwargs(model, dataset.name)
    if dsa:
        from pydistill.data import dsa_strategy_for
        from pydistill.ops.diff_augment import diff_augment

        strategy = dsa_strategy or dsa_strategy_for(dataset.name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = dataset.to(dev)
    settings = {
        "format": EXPERT_FORMAT,
        "dataset": ds.name,
        "zca": str(ds.zca is not None),
        "model": model,
        "model_kwargs": json.dumps(model_kwargs, sort_keys=True),
        "lr": repr(float(lr)),
        "batch_size": str(batch_size),
        "dsa": str(bool(dsa)),
        "epochs": str(epochs),
        "dtype": dtype,
    }
    paths = []
    from pydistill import distributed as pdist

    for i in range(num_experts):
        path = _expert_path(out_dir, i)
        paths.append(path)
        if not pdist.owns(i):
            continue
        old = _read_expert_meta(path)
        if old is not None and all(old.get(k) == v for k, v in settings.items()) and old.get("seed") == str(seed):
            continue  # complete expert with the same settings
        t0 = time.time()
        gen = make_generator(dev, seed * 1_000_003 + i)
        net = _build_model(model, model_kwargs, ds, seed * 1_000_003 + i).to(dev)
        opt = torch.optim.SGD(net.parameters(), lr=float(lr))  # plain SGD, as the published experts
        snaps = [flat_params(net).cpu()]  # theta*_0
        n = ds.x_train.shape[0]
        for _ in range(epochs):
            net.train()
            perm = torch.randperm(n, generator=gen, device=gen.device).to(dev)
            for b in range(0, n, batch_size):
                idx = perm[b : b + batch_size]
                x = ds.x_train[idx]
                if dsa:
                    x = diff_augment(x, strategy, per_sample=True, generator=gen)
                loss = F.cross_entropy(net(x), ds.y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            snaps.append(flat_params(net).cpu())  # theta*_{epoch}
        traj = torch.stack(snaps).to(dtypes[dtype]).contiguous()
        meta = {**settings, "seed": str(seed), "index": str(i), "num_params": str(traj.shape[1])}
        with torch.no_grad():
            net.eval()
            acc = (net(ds.x_test).argmax(1) == ds.y_test).float().mean().item() if ds.x_test.shape[0] else float("nan")
        meta["test_acc"] = repr(acc)
        atomic_write_bytes(path, st_save({"trajectory": traj}, metadata=meta))
        if log is not None:
            log(f"expert {i + 1}/{num_experts}: test acc {acc:.4f}, {time.time() - t0:.1f}s -> {path}")
    pdist.barrier()  # every expert file exists once this returns
    return paths


class ExpertBuffer:
    """Expert trajectories in a directory written by :func:`train_experts`, read lazily (two snapshots per
    iteration, via safetensors slices) so that hundreds of experts need no memory."""

    def __init__(self, directory):
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise FileNotFoundError(
                f"buffers directory {str(self.dir)!r} does not exist; train experts with "
                "`pydistill experts --dataset D --out DIR` (or mtt.train_experts)"
            )
        self.paths, self.metas = [], []
        for p in sorted(self.dir.glob("expert_*.safetensors")):
            meta = _read_expert_meta(p)
            if meta is not None:
                self.paths.append(p)
                self.metas.append(meta)
        if not self.paths:
            raise FileNotFoundError(f"no complete expert files (expert_*.safetensors) in {str(self.dir)!r}")
        m0 = self.metas[0]
        for p, m in zip(self.paths, self.metas):
            if m["num_params"] != m0["num_params"] or m["epochs"] != m0["epochs"]:
                raise ValueError(
                    f"experts in {self.dir} disagree: {p.name} has {m['num_params']} params / "
                    f"{m['epochs']} epochs, {self.paths[0].name} {m0['num_params']} / {m0['epochs']}"
                )
        self.epochs = int(m0["epochs"])
        self.num_params = int(m0["num_params"])
        self.lr = float(m0["lr"])
        self.model = m0["model"]
        self.model_kwargs = json.loads(m0["model_kwargs"])
        self.dataset = m0["dataset"]
        self.zca = m0["zca"] == "True"

    def __len__(self) -> int:
        return len(self.paths)

    def snapshots(self, expert: int, epochs: list[int], device, dtype=torch.float32) -> list[torch.Tensor]:
        """Flat parameter vectors [P] of ``expert`` at the given epochs."""
        from safetensors import safe_open

        with safe_open(str(self.paths[expert]), framework="pt") as f:
            sl = f.get_slice("trajectory")
            return [sl[int(e) : int(e) + 1][0].to(device=device, dtype=dtype) for e in epochs]


# ---------------------------------------------------------------------------------------------------- CLI
def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``pydistill experts --dataset D --out DIR --num-experts N --epochs E ...``."""
    p = subparsers.add_parser(
        "experts", help="train MTT expert trajectories (resumable)", description=train_experts.__doc__.split("\n\n")[0]
    )
    p.add_argument("--dataset", required=True, help="dataset name (digits, mnist, cifar10, ...)")
    p.add_argument("--out", required=True, help="output directory (expert_*.safetensors)")
    p.add_argument("--num-experts", type=int, default=100)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-dsa", action="store_true", help="train experts without DSA augmentation")
    p.add_argument("--model", default="ConvNet")
    p.add_argument("--width", type=int, default=None, help="model width (ConvNet/MLP)")
    p.add_argument("--depth", type=int, default=None, help="model depth (ConvNet)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="storage dtype")
    p.add_argument("--zca", action="store_true", help="ZCA-whiten the dataset (must match distillation)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cli_experts, handler=_cli_experts)
    return p


def _cli_experts(args) -> int:
    kw = {k: v for k, v in (("width", args.width), ("depth", args.depth)) if v is not None}
    paths = train_experts(
        args.dataset,
        args.out,
        num_experts=args.num_experts,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        dsa=not args.no_dsa,
        model=args.model,
        model_kwargs=kw or None,
        dtype=args.dtype,
        device=args.device,
        seed=args.seed,
        data_root=args.data_root,
        zca=args.zca,
    )
    from pydistill.distributed import is_main

    if is_main():
        print(f"{len(paths)} experts in {args.out}")
    return 0
