"""Teacher of SSD-KD: training (resumable, plain state_dict files), loading, and the shared augmentation."""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from pydistill.evaluate import test_accuracy
from pydistill.models import seeded_network
from pydistill.utils import load_checked, save_checked

__all__ = ["TEACHER_FORMAT", "train_teacher", "load_teacher", "augment", "default_augment_args", "register_cli"]

TEACHER_FORMAT = "pydistill-teacher-v1"


# ----------------------------------------------------------------------------------------------- helpers
def _im_size(dataset) -> tuple[int, int]:
    s = dataset.im_size
    return (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))


def augment(
    x: torch.Tensor, gen: torch.Generator, *, flip: bool, pad: int, fill: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample random crop with padding (pad by ``pad``, crop back to ``H x W``) and optional horizontal flip.

    ``x [N, C, H, W]``; ``fill``: value of the padded border, ``[C]`` or None (0). The base (Fast-DFKD) crops 32x32
    images with padding 4 and flips them; digits/MNIST get the crop only (a flipped digit is another symbol).
    Differentiable w.r.t. ``x``.
    """
    n, c, h, w = x.shape
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        if fill is not None:
            border = torch.ones(1, 1, h, w, device=x.device, dtype=x.dtype)
            border = 1.0 - F.pad(border, (pad, pad, pad, pad))
            xp = xp + border * fill.to(x.device, x.dtype).view(1, c, 1, 1)
        oh = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(x.device)
        ow = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(x.device)
        rows = (oh[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ow[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        ni = torch.arange(n, device=x.device)[:, None, None, None]
        ci = torch.arange(c, device=x.device)[None, :, None, None]
        x = xp[ni, ci, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=gen, device=gen.device) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


_augment = augment  # for train_teacher, whose ``augment`` flag shadows the function


def default_augment_args(dataset) -> dict:
    """``augment`` keywords for ``dataset``: pad ``max(1, H // 8)`` (4 at 32x32, as the base), flip for 3 channels,
    border = black in the dataset's normalized space (the base pads before normalizing)."""
    h, _ = _im_size(dataset)
    mean = torch.as_tensor(dataset.mean, dtype=torch.float32).flatten()
    std = torch.as_tensor(dataset.std, dtype=torch.float32).flatten()
    return dict(pad=max(1, h // 8), flip=int(dataset.channel) == 3, fill=(0.0 - mean) / std)


# ----------------------------------------------------------------------------------------------- teacher
def train_teacher(
    dataset,
    out: str,
    *,
    model: str = "ResNet34",
    epochs: int = 200,
    batch_size: int = 128,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: bool | None = None,
    max_steps_per_epoch: int | None = None,
    seed: int = 0,
    model_kwargs: dict | None = None,
    verbose: bool = True,
) -> dict:
    """Train a teacher classifier on ``dataset`` and save it to ``out``; resumable.

    SGD (momentum, weight decay) with a cosine learning rate over ``epochs``; ``augment`` (default: on for
    3-channel data) applies random 4-pixel (1/8 of the size) translations, plus flips for 3-channel data.
    After every epoch the file ``out`` is rewritten atomically with the weights, optimizer and RNG state;
    calling again with the same ``out`` resumes, and returns at once when the run is complete.
    The file holds ``model`` (architecture name), ``model_kwargs``, ``channel``, ``num_classes``, ``im_size``,
    ``dataset``, ``state_dict``, ``test_accuracy`` (fraction), ``epochs``, ``epochs_done``, ``complete``.

    Args:
        dataset: a :class:`pydistill.data.Dataset` or a dataset name for :func:`pydistill.data.load_dataset`.
        out: path of the teacher file.
        max_steps_per_epoch: cap on the mini-batches per epoch (for quick tests).
    Returns: the metadata dict (without tensors): model, test_accuracy, epochs_done, path, ...
    """
    if isinstance(dataset, str):
        from pydistill.data import load_dataset

        dataset = load_dataset(dataset, device="cuda" if torch.cuda.is_available() else "cpu")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if max_steps_per_epoch is not None and max_steps_per_epoch < 1:
        raise ValueError(f"max_steps_per_epoch must be >= 1 or None, got {max_steps_per_epoch}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    model_kwargs = dict(model_kwargs or {})
    device = dataset.x_train.device
    use_augment = dataset.channel == 3 if augment is None else bool(augment)  # (the parameter shadows augment())
    h, w = _im_size(dataset)
    pad = max(1, h // 8)

    net = seeded_network(
        model, dataset.channel, dataset.num_classes, _im_size(dataset), seed, device=device, **model_kwargs
    )
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    start = 0
    meta_keys = dict(
        format=TEACHER_FORMAT,
        model=model,
        model_kwargs=model_kwargs,
        channel=int(dataset.channel),
        num_classes=int(dataset.num_classes),
        im_size=[h, w],
        dataset=str(getattr(dataset, "name", "")),
        epochs=epochs,
    )
    if os.path.exists(out):
        ck = load_checked(out, map_location=device, weights_only=True)
        if ck.get("format") != TEACHER_FORMAT:
            raise ValueError(f"out={out!r} exists and is not a pydistill teacher file; choose another path")
        for k in ("model", "channel", "num_classes", "epochs"):
            if ck.get(k) != meta_keys[k]:
                raise ValueError(
                    f"out={out!r} holds a teacher with {k}={ck.get(k)!r}, but this call asks for {meta_keys[k]!r}; "
                    "remove the file or choose another path"
                )
        if ck.get("complete"):
            if verbose:
                print(f"[teacher] {out} is complete: {ck['model']} test accuracy {ck['test_accuracy']:.4f}")
            return {k: v for k, v in ck.items() if k not in ("state_dict", "optimizer", "rng")} | {"path": out}
        net.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["rng"].cpu())
        start = int(ck["epochs_done"])
        if verbose:
            print(f"[teacher] resuming {out} at epoch {start}/{epochs}")

    n = dataset.x_train.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    if max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
    total = epochs * steps_per_epoch
    acc = None
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(n, generator=gen, device=gen.device).to(device)
        running = 0.0
        for s in range(steps_per_epoch):
            step = epoch * steps_per_epoch + s
            for g in opt.param_groups:
                g["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / total))
            idx = perm[s * batch_size : (s + 1) * batch_size]
            xb, yb = dataset.x_train[idx], dataset.y_train[idx]
            if use_augment:
                xb = _augment(xb, gen, flip=dataset.channel == 3, pad=pad)
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += float(loss.detach())
        complete = epoch + 1 == epochs
        acc = test_accuracy(net, dataset)
        save_checked(
            dict(
                meta_keys,
                state_dict=net.state_dict(),
                optimizer=opt.state_dict(),
                rng=gen.get_state(),
                epochs_done=epoch + 1,
                complete=complete,
                test_accuracy=acc,
            ),
            out,
        )
        if verbose:
            print(
                f"[teacher] epoch {epoch + 1}/{epochs} loss {running / steps_per_epoch:.4f} "
                f"test acc {acc:.4f} ({time.perf_counter() - t0:.1f}s)"
            )
    ck = load_checked(out, map_location="cpu", weights_only=True)
    return {k: v for k, v in ck.items() if k not in ("state_dict", "optimizer", "rng")} | {"path": out}


def load_teacher(path: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Load a teacher saved by :func:`train_teacher`: ``(network in eval mode, metadata dict)``."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise FileNotFoundError(f"teacher file not found: {path!r} (train one with `pydistill teacher`)")
    ck = load_checked(path, map_location=device, weights_only=True)
    if not isinstance(ck, dict) or ck.get("format") != TEACHER_FORMAT:
        raise ValueError(f"{path!r} is not a pydistill teacher file (format {TEACHER_FORMAT})")
    if not ck.get("complete", False):
        raise ValueError(
            f"teacher {path!r} is not finished training ({ck.get('epochs_done')}/{ck.get('epochs')} epochs)"
        )
    from pydistill.models import get_network

    net = get_network(ck["model"], ck["channel"], ck["num_classes"], tuple(ck["im_size"]), **ck["model_kwargs"])
    net.load_state_dict(ck["state_dict"])
    net.to(device).eval()
    meta = {k: v for k, v in ck.items() if k not in ("state_dict", "optimizer", "rng")}
    return net, meta


# ----------------------------------------------------------------------------------------------- CLI
def _cli_teacher(args: argparse.Namespace) -> int:
    import json

    from pydistill.data import load_dataset
    from pydistill.utils import resolve_device

    try:
        model_kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError:
        model_kwargs = None
    if not isinstance(model_kwargs, dict):
        raise ValueError(f"--model-kwargs must be a JSON object such as '{{\"width\": 64}}', got {args.model_kwargs!r}")
    ds = load_dataset(args.dataset, args.data_root, device=resolve_device(args.device))
    meta = train_teacher(
        ds,
        args.out,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        max_steps_per_epoch=args.max_steps_per_epoch,
        model_kwargs=model_kwargs,
    )
    print(f"teacher {meta['model']} on {args.dataset}: test accuracy {meta['test_accuracy']:.4f} -> {args.out}")
    return 0


def register_cli(subparsers) -> None:
    """Add ``pydistill teacher --dataset D --model M --out PATH [...]`` to an argparse subparsers object."""
    p = subparsers.add_parser("teacher", help="train a teacher for data-free KD (SSD-KD); resumable")
    p.add_argument("--dataset", required=True, help="dataset name (see pydistill.data.load_dataset)")
    p.add_argument("--model", default="ResNet34", help="architecture name (pydistill.models.get_network)")
    p.add_argument("--model-kwargs", default="{}", help="extra get_network keywords as JSON, e.g. '{\"width\": 64}'")
    p.add_argument("--out", required=True, help="teacher file to write (resumes when it exists)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap mini-batches per epoch (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument(
        "--data-root", default=None, help="dataset folder (default: $PYDISTILL_DATA, else ~/.cache/pydistill/datasets)"
    )
    p.set_defaults(func=_cli_teacher)
