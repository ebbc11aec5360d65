"""Evaluate a distilled set: train fresh networks on it, measure test accuracy on the real test set.

Protocol of DC/DSA/DM/MTT: SGD (lr 0.01, momentum 0.9, weight decay 5e-4), batch 256, lr x0.1 from epoch E/2,
E = 300 (1000 with DSA augmentation, drawn per sample); mean and standard deviation over ``num_eval`` fresh
networks. Accuracies are fractions in [0, 1].

``import pydistill.evaluate`` gives this module, which is itself callable: ``pydistill.evaluate(syn, ds)`` is
``pydistill.evaluate.evaluate(syn, ds)``.
"""
from __future__ import annotations

import math
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["train_model", "test_accuracy", "evaluate", "evaluate_baseline", "soft_cross_entropy"]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k target_k log softmax(logits)_k``; logits, target [N, K]."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def _loss(logits, labels):
    return soft_cross_entropy(logits, labels) if labels.dim() == 2 else F.cross_entropy(logits, labels)


def _augment(x, strategy, generator):
    from pydistill.ops import diff_augment

    return diff_augment(x, strategy, per_sample=True, generator=generator)


def _check_train_args(images, labels, epochs, lr, batch_size):
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float [N, C, H, W] tensor, got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
    if not isinstance(labels, torch.Tensor) or labels.dim() not in (1, 2) or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must be int64 [N] or float [N, K] with N = {images.shape[0]}, got "
                         f"{tuple(getattr(labels, 'shape', ()))}")
    if labels.dim() == 1 and labels.dtype != torch.int64:
        raise TypeError(f"hard labels must be int64, got {labels.dtype}")
    if labels.dim() == 2 and not labels.is_floating_point():
        raise TypeError(f"soft labels [N, K] must be floating point, got {labels.dtype}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")


def train_model(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float = 0.01,
                batch_size: int = 256, momentum: float = 0.9, weight_decay: float = 5e-4,
                dsa_strategy: str | None = None, learned_lr=None, dd_steps: int | None = None, device=None,
                generator: torch.Generator | None = None, progress: bool = False) -> nn.Module:
    """Train ``net`` in place on ``images`` [N, C, H, W] with ``labels`` (int64 [N] or soft float [N, K]).

    SGD(lr, momentum, weight_decay) for ``epochs`` epochs of shuffled mini-batches, lr x0.1 from epoch
    epochs // 2 on; soft labels use soft cross-entropy; ``dsa_strategy`` augments every batch with per-sample
    DSA parameters. ``learned_lr``: a scalar (MTT) replaces ``lr``; a [T] vector (DD) replays the DD schedule
    instead: the images are ``dd_steps`` equal consecutive chunks and step t does plain SGD with lr[t] on chunk
    t mod dd_steps (``epochs`` is then ignored). Shuffling and augmentation draw from ``generator`` (on
    ``device``). Returns ``net`` (on ``device``, in train mode).
    """
    if learned_lr is not None:
        learned_lr = torch.as_tensor(learned_lr).detach().float()
        if learned_lr.numel() == 1:
            lr = float(learned_lr.reshape(()))
            learned_lr = None
    _check_train_args(images, labels, epochs, float(lr) if learned_lr is None else 1.0, batch_size)
    device = torch.device(device) if device is not None else images.device
    net = net.to(device)
    net.train()
    x_all, y_all = images.detach().to(device), labels.detach().to(device)
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(0)
    if learned_lr is not None:
        return _replay_dd(net, x_all, y_all, learned_lr.to(device), dd_steps, dsa_strategy, generator)
    opt = torch.optim.SGD(net.parameters(), lr=float(lr), momentum=momentum, weight_decay=weight_decay)
    n = x_all.shape[0]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="train", leave=False)
    for ep in range(epochs):
        if ep == epochs // 2 and epochs > 1:
            for group in opt.param_groups:
                group["lr"] = float(lr) * 0.1
        perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
        for b in range(0, n, batch_size):
            idx = perm[b:b + batch_size]
            x = x_all[idx]
            if dsa_strategy:
                x = _augment(x, dsa_strategy, generator)
            loss = _loss(net(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return net


def _replay_dd(net, x_all, y_all, lrs, dd_steps, dsa_strategy, generator):
    """DD evaluation: T plain SGD steps, step t on chunk (t mod dd_steps) with lr lrs[t]."""
    if lrs.dim() != 1:
        raise ValueError(f"learned_lr must be a scalar or a [T] vector, got shape {tuple(lrs.shape)}")
    if dd_steps is None or int(dd_steps) < 1:
        raise ValueError("a [T] learned_lr (DD) needs dd_steps (the number of distillation steps; "
                         "SyntheticSet.meta['distill_steps'])")
    dd_steps = int(dd_steps)
    if x_all.shape[0] % dd_steps:
        raise ValueError(f"{x_all.shape[0]} images cannot be split into dd_steps={dd_steps} equal chunks")
    xs, ys = x_all.chunk(dd_steps), y_all.chunk(dd_steps)
    for t in range(lrs.numel()):
        x, y = xs[t % dd_steps], ys[t % dd_steps]
        if dsa_strategy:
            x = _augment(x, dsa_strategy, generator)
        loss = _loss(net(x), y)
        grads = torch.autograd.grad(loss, [p for p in net.parameters() if p.requires_grad])
        with torch.no_grad():
            for p, g in zip([p for p in net.parameters() if p.requires_grad], grads):
                p.sub_(lrs[t] * g)
    return net


@torch.no_grad()
def test_accuracy(net: nn.Module, dataset, batch_size: int = 1024) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of ``net`` (eval mode) on ``dataset.x_test``; restores the mode."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    n = dataset.x_test.shape[0]
    if n == 0:
        raise ValueError("dataset has an empty test set")
    for i in range(0, n, batch_size):
        x = dataset.x_test[i:i + batch_size].to(dev)
        y = dataset.y_test[i:i + batch_size].to(dev)
        correct += (net(x).argmax(1) == y).sum()
    net.train(was_training)
    return int(correct) / n


test_accuracy.__test__ = False  # not a pytest test when imported into a test module


def _build(model, dataset, seed, model_kwargs, device):
    from pydistill.models import get_network

    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)
        net = get_network(model, dataset.channel, dataset.num_classes, dataset.im_size, **(model_kwargs or {}))
    return net.to(device)


def _resolve_epochs(epochs, dsa):
    if epochs is None:
        return 1000 if dsa else 300
    return epochs


def _run_models(train_sets, dataset, *, models, num_eval, epochs, lr, learned_lr, dd_steps, batch_size, dsa,
                dsa_strategy, device, seed, progress, model_kwargs, desc):
    from pydistill.data import dsa_strategy_for
    from pydistill.utils import resolve_device

    if isinstance(models, str):
        models = (models,)
    if not models:
        raise ValueError("models must name at least one network, e.g. ('ConvNet',)")
    if isinstance(num_eval, bool) or not isinstance(num_eval, int) or num_eval < 1:
        raise ValueError(f"num_eval must be a positive int, got {num_eval!r}")
    device = resolve_device(device if device is not None else dataset.device)
    strategy = (dsa_strategy or dsa_strategy_for(dataset.name)) if dsa else None
    epochs = _resolve_epochs(epochs, dsa)
    results = {}
    total = len(models) * num_eval
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, leave=False)
    for mi, model in enumerate(models):
        accs = []
        for i in range(num_eval):
            run_seed = seed * 1_000_003 + mi * 1009 + i
            images, labels = train_sets(i)
            net = _build(model, dataset, run_seed, model_kwargs, device)
            gen = torch.Generator(device=device).manual_seed(run_seed)
            train_model(net, images, labels, epochs=epochs, lr=lr, batch_size=batch_size, dsa_strategy=strategy,
                        learned_lr=learned_lr, dd_steps=dd_steps, device=device, generator=gen)
            accs.append(test_accuracy(net, dataset))
            if bar is not None:
                bar.set_postfix(model=model, acc=f"{100 * accs[-1]:.1f}%")
                bar.update(1)
        results[model] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "accs": [float(a) for a in accs]}
    if bar is not None:
        bar.close()
    return results


def evaluate(synthetic_set, dataset, *, models=("ConvNet",), num_eval: int = 5, epochs: int | None = None,
             lr: float = 0.01, batch_size: int = 256, dsa: bool = True, dsa_strategy: str | None = None,
             use_learned_lr: bool = True, device=None, seed: int = 0, model_kwargs: dict | None = None,
             progress: bool = True) -> dict:
    """Train ``num_eval`` fresh networks of each of ``models`` on ``synthetic_set``; test on ``dataset``.

    epochs: None -> 1000 with DSA, 300 without (as published; pass fewer for quick runs). A learned lr in the
    set (MTT scalar, DD vector) is used unless ``use_learned_lr=False``; a DD set (meta ``train_schedule`` ==
    "dd_unrolled") is evaluated by ``pydistill.methods.dd.evaluate_dd`` with its own network and learned
    schedule (``models``, ``epochs`` and ``dsa`` do not apply). Deterministic given ``seed``; the
    global RNG is left untouched. Returns ``{model: {"mean", "std", "accs"}}`` (fractions in [0, 1]).
    """
    from pydistill.synthetic import SyntheticSet

    if not isinstance(synthetic_set, SyntheticSet):
        raise TypeError(f"synthetic_set must be a SyntheticSet, got {type(synthetic_set).__name__}")
    imgs, labels = synthetic_set.images, synthetic_set.labels
    expect = (dataset.channel, *dataset.im_size)
    if tuple(imgs.shape[1:]) != expect:
        raise ValueError(f"synthetic images are {tuple(imgs.shape[1:])} but dataset {dataset.name!r} has images "
                         f"{expect}")
    if synthetic_set.soft and labels.shape[1] != dataset.num_classes:
        raise ValueError(f"soft labels have {labels.shape[1]} classes, dataset has {dataset.num_classes}")
    if not synthetic_set.soft and labels.numel() and not (0 <= int(labels.min()) and int(labels.max())
                                                          < dataset.num_classes):
        raise ValueError(f"labels must lie in [0, {dataset.num_classes}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    learned = synthetic_set.lr if (use_learned_lr and synthetic_set.lr is not None) else None
    if learned is not None and learned.dim() == 1 and synthetic_set.meta.get("train_schedule") == "dd_unrolled":
        # DD sets only make sense with their learned unrolled schedule (fixed/random init, chunked steps).
        from pydistill.methods.dd import evaluate_dd

        return evaluate_dd(synthetic_set, dataset, num_models=num_eval, seed=seed,
                           device=device if device is not None else dataset.device)
    dd_steps = synthetic_set.meta.get("distill_steps")
    return _run_models(lambda i: (imgs, labels), dataset, models=models, num_eval=num_eval, epochs=epochs, lr=lr,
                       learned_lr=learned, dd_steps=dd_steps, batch_size=batch_size, dsa=dsa,
                       dsa_strategy=dsa_strategy, device=device, seed=seed, progress=progress,
                       model_kwargs=model_kwargs, desc="evaluate")


def evaluate_baseline(dataset, kind: str = "random", ipc: int | None = None, *, models=("ConvNet",),
                      num_eval: int = 5, epochs: int | None = None, lr: float = 0.01, batch_size: int = 256,
                      dsa: bool = True, dsa_strategy: str | None = None, device=None, seed: int = 0,
                      model_kwargs: dict | None = None, progress: bool = True) -> dict:
    """Reference points: ``kind="random"`` trains on ``ipc`` random real images per class (a new draw per
    network), ``kind="full"`` on the whole training set. Same output as :func:`evaluate`."""
    if kind == "random":
        if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
            raise ValueError(f"ipc must be a positive int for kind='random', got {ipc!r}")

        def sets(i):
            g = torch.Generator().manual_seed(seed * 7919 + i)
            picks = []
            for idx in dataset.indices_by_class:
                idx = idx.cpu()
                picks.append(idx[torch.randperm(idx.numel(), generator=g)[:ipc]])
            sel = torch.cat(picks).to(dataset.device)
            return dataset.x_train[sel], dataset.y_train[sel]
    elif kind == "full":
        def sets(i):
            return dataset.x_train, dataset.y_train
    else:
        raise ValueError(f"kind must be 'random' or 'full', got {kind!r}")
    return _run_models(sets, dataset, models=models, num_eval=num_eval, epochs=epochs, lr=lr, learned_lr=None,
                       dd_steps=None, batch_size=batch_size, dsa=dsa, dsa_strategy=dsa_strategy, device=device,
                       seed=seed, progress=progress, model_kwargs=model_kwargs, desc=f"baseline-{kind}")


class _CallableModule(types.ModuleType):
    """Lets ``pydistill.evaluate(...)`` call :func:`evaluate` while staying importable as a module."""

    def __call__(self, *args, **kwargs):
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
