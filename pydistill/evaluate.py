"""Evaluate a distilled set: train fresh networks on it, measure test accuracy on the real test set.

Protocol of DC/DSA/DM/MTT (official ``evaluate_synset``): SGD (lr 0.01, momentum 0.9, weight decay 5e-4), batch
256, E + 1 epochs with lr x0.1 (and a fresh SGD) after epoch E // 2 + 1; E = 1000 with augmentation, 300 without.
``protocol="paper"`` trains each set as its method's paper does (DC: the DC augmentation; DSA/DM/MTT: DSA per
sample; DD: its learned schedule), ``protocol="uniform"`` uses DSA for every set. Mean and standard deviation over
``num_eval`` fresh networks. Accuracies are fractions in [0, 1].

``import pydistill.evaluate`` gives this module, which is itself callable: ``pydistill.evaluate(syn, ds)`` is
``pydistill.evaluate.evaluate(syn, ds)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pydistill.data import random_subset_indices  # noqa: F401 (re-exported: public here before)

__all__ = [
    "train_model",
    "test_accuracy",
    "evaluate",
    "evaluate_baseline",
    "random_subset_indices",
    "soft_cross_entropy",
    "TRAIN_SCHEDULES",
    "schedule_evaluator",
    "PROTOCOLS",
    "OFFICIAL_STATISTIC",
    "resolve_protocol",
    "LR_SCHEDULES",
]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k target_k log softmax(logits)_k``; logits, target [N, K]."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def _loss(logits, labels):
    return soft_cross_entropy(logits, labels) if labels.dim() == 2 else F.cross_entropy(logits, labels)


def _augment(x, strategy, generator):
    from pydistill.ops import diff_augment

    return diff_augment(x, strategy, per_sample=True, generator=generator)


LR_SCHEDULES = ("half", "official")


def _check_train_args(images, labels, epochs, lr, batch_size):
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float [N, C, H, W] tensor, got "
            f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}"
        )
    if not isinstance(labels, torch.Tensor) or labels.dim() not in (1, 2) or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"labels must be int64 [N] or float [N, K] with N = {images.shape[0]}, got "
            f"{tuple(getattr(labels, 'shape', ()))}"
        )
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


def train_model(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float = 0.01,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    dsa_strategy: str | None = None,
    learned_lr=None,
    dd_steps: int | None = None,
    device=None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    dc_augmentation: str | None = None,
    lr_schedule: str = "half",
) -> nn.Module:
    """Train ``net`` in place on ``images`` [N, C, H, W] with ``labels`` (int64 [N] or soft float [N, K]).

    SGD(lr, momentum, weight_decay) for ``epochs`` epochs of shuffled mini-batches, lr x0.1 from epoch
    epochs // 2 on; soft labels use soft cross-entropy; ``dsa_strategy`` augments every batch with per-sample
    DSA parameters. ``learned_lr``: a scalar (MTT) replaces ``lr``; a [T] vector (DD) replays the DD schedule
    instead: the images are ``dd_steps`` equal consecutive chunks and step t does plain SGD with lr[t] on chunk
    t mod dd_steps (``epochs`` is then ignored). ``dc_augmentation``: a DC strategy of
    :func:`pydistill.dc_augment.dc_augment` ("crop_scale_rotate", "crop_noise") applied per batch instead of DSA.
    ``lr_schedule``: ``"half"`` trains ``epochs`` epochs, lr x0.1 from epoch epochs // 2; ``"official"`` is the
    official ``evaluate_synset``: epochs + 1 epochs, after epoch epochs // 2 + 1 the lr is x0.1 and SGD restarts
    (momentum buffer cleared). Shuffling and augmentation draw from ``generator`` (on ``device``). Returns
    ``net`` (on ``device``, in train mode).
    """
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    if dsa_strategy and dc_augmentation not in (None, "", "none"):
        raise ValueError("pass either dsa_strategy or dc_augmentation, not both")
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
    official = lr_schedule == "official"
    n_epochs = epochs + 1 if official else epochs
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_epochs, desc="train", leave=False)
    for ep in range(n_epochs):
        if not official and ep == epochs // 2 and epochs > 1:
            for group in opt.param_groups:
                group["lr"] = float(lr) * 0.1
        perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
        for b in range(0, n, batch_size):
            idx = perm[b : b + batch_size]
            x = x_all[idx]
            if dsa_strategy:
                x = _augment(x, dsa_strategy, generator)
            elif dc_augmentation not in (None, "", "none"):
                from pydistill.dc_augment import dc_augment

                x = dc_augment(x, dc_augmentation, generator)
            loss = _loss(net(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if official and ep == epochs // 2 + 1:  # lr x0.1 and a fresh SGD (momentum cleared), as evaluate_synset
            opt = torch.optim.SGD(net.parameters(), lr=float(lr) * 0.1, momentum=momentum, weight_decay=weight_decay)
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
        raise ValueError(
            "a [T] learned_lr (DD) needs dd_steps (the number of distillation steps; "
            "SyntheticSet.meta['distill_steps'])"
        )
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
        x = dataset.x_test[i : i + batch_size].to(dev)
        y = dataset.y_test[i : i + batch_size].to(dev)
        correct += (net(x).argmax(1) == y).sum()
    net.train(was_training)
    return int(correct) / n


test_accuracy.__test__ = False  # not a pytest test when imported into a test module


def _build(model, dataset, seed, model_kwargs, device):
    from pydistill.models import seeded_network

    return seeded_network(
        model, dataset.channel, dataset.num_classes, dataset.im_size, seed, device=device, **(model_kwargs or {})
    )


# A synthetic set whose meta names a ``train_schedule`` is trained by that schedule's own evaluator, named here
# as "module:function" and imported on demand (no import of the methods from this module).
TRAIN_SCHEDULES: dict[str, str] = {"dd_unrolled": "pydistill.methods.dd:evaluate_dd"}


def schedule_evaluator(name: str):
    """The evaluator registered for train schedule ``name`` in ``TRAIN_SCHEDULES``, imported on demand."""
    import importlib

    if name not in TRAIN_SCHEDULES:
        raise ValueError(f"unknown train_schedule {name!r}; known: {sorted(TRAIN_SCHEDULES)}")
    module, func = TRAIN_SCHEDULES[name].split(":")
    return getattr(importlib.import_module(module), func)


PROTOCOLS = ("paper", "uniform")

# What each method's paper reports (the official scripts: DC/DSA main.py, DM main_DM.py, MTT distill.py).
OFFICIAL_STATISTIC = {
    "dc": "mean +- std over 5 experiments x 20 networks",
    "dsa": "mean +- std over 5 experiments x 20 networks",
    "dm": "mean +- std over 5 experiments x 20 networks",
    "mtt": "best mean over evaluations every 100 iterations (5 networks each), over 5 experiments",
    "dd": "mean over networks trained with the learned schedule",
}


def resolve_protocol(
    protocol: str,
    method: str | None,
    dataset_name: str,
    model: str,
    *,
    dsa: bool | None = None,
    dsa_strategy: str | None = None,
    epochs: int | None = None,
) -> dict:
    """How an evaluation network of ``model`` is trained under ``protocol`` for a set made by ``method``.

    ``"paper"``: DC sets (``method == "dc"``) get the official DC augmentation
    (:func:`pydistill.dc_augment.dc_augmentation_for`: MNIST crop_scale_rotate, ConvNetBN crop_noise, else none),
    every other set DSA per sample (DSA/DM/MTT's protocol). ``"uniform"``: DSA for every set. Epochs: 1000 with
    augmentation, 300 without (official main.py). ``dsa`` True/False forces DSA / no augmentation; ``epochs``
    overrides. Both use the official lr schedule (:func:`train_model` ``lr_schedule="official"``).
    Returns ``{"protocol", "augmentation" ("dsa"/"dc"/"none"), "strategy", "epochs", "lr_schedule"}``.
    """
    from pydistill.data import dsa_strategy_for

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    strategy = None
    if dsa is True:
        aug = "dsa"
    elif dsa is False:
        aug = "none"
    elif protocol == "paper" and method == "dc":
        from pydistill.dc_augment import dc_augmentation_for

        strategy = dc_augmentation_for(dataset_name, model)
        aug = "none" if strategy == "none" else "dc"
    else:
        aug = "dsa"
    if aug == "dsa":
        strategy = dsa_strategy or dsa_strategy_for(dataset_name)
    elif aug == "none":
        strategy = None
    if epochs is None:
        epochs = 300 if aug == "none" else 1000
    return {
        "protocol": protocol,
        "augmentation": aug,
        "strategy": strategy,
        "epochs": int(epochs),
        "lr_schedule": "official",
    }


def _job_key(
    data_key,
    dataset,
    model,
    model_kwargs,
    run_seed,
    epochs,
    lr,
    batch_size,
    strategy,
    learned_lr,
    dd_steps,
    device,
    augmentation="dsa",
    lr_schedule="official",
) -> str:
    """SHA-256 naming everything one evaluation network's accuracy depends on (its resume-cache key)."""
    from pydistill.utils import to_jsonable

    spec = {
        "data": data_key,
        "dataset": dataset.name,
        "zca": dataset.zca is not None,
        "num_train": int(dataset.x_train.shape[0]),
        "num_test": int(dataset.x_test.shape[0]),
        "model": model,
        "model_kwargs": model_kwargs or {},
        "seed": run_seed,
        "epochs": epochs,
        "lr": float(lr),
        "batch_size": batch_size,
        "dsa": strategy,
        "learned_lr": learned_lr,
        "dd_steps": dd_steps,
        "device": torch.device(device).type,
        "torch": torch.__version__,
        "augmentation": augmentation,
        "lr_schedule": lr_schedule,
    }
    return hashlib.sha256(json.dumps(to_jsonable(spec), sort_keys=True).encode()).hexdigest()


def _cached_accuracy(path: Path, key: str):
    """The accuracy stored at ``path`` for ``key``, or None (missing, unreadable or another job's file)."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    acc = rec.get("acc") if isinstance(rec, dict) and rec.get("key") == key else None
    return float(acc) if isinstance(acc, (int, float)) and 0.0 <= acc <= 1.0 else None


def _run_models(
    train_sets,
    dataset,
    *,
    models,
    num_eval,
    epochs,
    lr,
    learned_lr,
    dd_steps,
    batch_size,
    dsa,
    dsa_strategy,
    device,
    seed,
    progress,
    model_kwargs,
    desc,
    resume_dir=None,
    data_key=None,
    protocol="paper",
    method=None,
):
    from pydistill import distributed as pdist
    from pydistill.utils import resolve_device

    if isinstance(models, str):
        models = (models,)
    models = tuple(models)
    if not models:
        raise ValueError("models must name at least one network, e.g. ('ConvNet',)")
    for m in models:
        if not isinstance(m, str) or not m:
            raise ValueError(f"models must be network names (non-empty strings), got {m!r}")
    if isinstance(num_eval, bool) or not isinstance(num_eval, int) or num_eval < 1:
        raise ValueError(f"num_eval must be a positive int, got {num_eval!r}")
    device = resolve_device(device if device is not None else dataset.device)
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0):
        raise ValueError(f"epochs must be None or an int >= 0, got {epochs!r}")
    specs = [
        resolve_protocol(protocol, method, dataset.name, m, dsa=dsa, dsa_strategy=dsa_strategy, epochs=epochs)
        for m in models
    ]
    # Job j = (model mi, network i) runs on rank j % world (see pydistill.distributed); its seed depends on
    # (seed, mi, i) only, so the accuracies do not depend on the number of processes.
    jobs = [(mi, i) for mi in range(len(models)) for i in range(num_eval)]
    mine = pdist.shard(jobs)
    bar = None
    if progress and pdist.is_main():
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc=desc, leave=False)
    done = {}
    if resume_dir is not None:
        resume_dir = Path(resume_dir)
        resume_dir.mkdir(parents=True, exist_ok=True)
    lr_list = None if learned_lr is None else torch.as_tensor(learned_lr).detach().cpu().reshape(-1).tolist()
    from pydistill.models import default_model_kwargs

    for mi, i in mine:
        model = models[mi]
        kwargs = model_kwargs if model_kwargs is not None else default_model_kwargs(model, dataset.name)
        run_seed = seed * 1_000_003 + mi * 1009 + i
        spec = specs[mi]
        cache = None
        if resume_dir is not None:  # a finished network is read back, not retrained (same seed, same result)
            key = _job_key(
                data_key,
                dataset,
                model,
                kwargs,
                run_seed,
                spec["epochs"],
                lr,
                batch_size,
                spec["strategy"],
                lr_list,
                dd_steps,
                device,
                spec["augmentation"],
                spec["lr_schedule"],
            )
            cache = resume_dir / f"net_{key[:20]}.json"
            acc = _cached_accuracy(cache, key)
            if acc is not None:
                done[(mi, i)] = acc
                if bar is not None:
                    bar.update(1)
                continue
        images, labels = train_sets(i)
        net = _build(model, dataset, run_seed, kwargs, device)
        gen = torch.Generator(device=device).manual_seed(run_seed)
        train_model(
            net,
            images,
            labels,
            epochs=spec["epochs"],
            lr=lr,
            batch_size=batch_size,
            dsa_strategy=spec["strategy"] if spec["augmentation"] == "dsa" else None,
            dc_augmentation=spec["strategy"] if spec["augmentation"] == "dc" else None,
            lr_schedule=spec["lr_schedule"],
            learned_lr=learned_lr,
            dd_steps=dd_steps,
            device=device,
            generator=gen,
        )
        done[(mi, i)] = test_accuracy(net, dataset)
        if cache is not None:
            from pydistill.utils import atomic_write_text

            atomic_write_text(cache, json.dumps({"key": key, "model": model, "index": i, "acc": done[(mi, i)]}))
        if bar is not None:
            bar.set_postfix(model=model, acc=f"{100 * done[(mi, i)]:.1f}%")
            bar.update(1)
    if bar is not None:
        bar.close()
    for part in pdist.all_gather_object(done):
        done.update(part)
    results = {}
    for mi, model in enumerate(models):
        accs = [done[(mi, i)] for i in range(num_eval)]
        results[model] = {
            "mean": float(np.mean(accs)),
            "std": float(np.std(accs)),
            "accs": [float(a) for a in accs],
            **specs[mi],
            "statistic": f"mean +- std over {num_eval} networks",
        }
        if protocol == "paper" and method in OFFICIAL_STATISTIC:
            results[model]["official_statistic"] = OFFICIAL_STATISTIC[method]
    return results


def evaluate(
    synthetic_set,
    dataset,
    *,
    models=("ConvNet",),
    num_eval: int = 5,
    epochs: int | None = None,
    lr: float = 0.01,
    batch_size: int = 256,
    dsa: bool | None = None,
    dsa_strategy: str | None = None,
    use_learned_lr: bool = True,
    device=None,
    seed: int = 0,
    model_kwargs: dict | None = None,
    progress: bool = True,
    resume_dir: str | os.PathLike | None = None,
    protocol: str = "paper",
    compared_with: str | None = None,
) -> dict:
    """Train ``num_eval`` fresh networks of each of ``models`` on ``synthetic_set``; test on ``dataset``.

    ``protocol`` "paper" (the method's published evaluation, see :func:`resolve_protocol`; the method is
    ``compared_with`` or else the set's ``meta["method"]``) or "uniform" (DSA + 1000 epochs for every set).
    ``dsa`` None follows the protocol, True/False forces DSA / no augmentation. epochs: None -> the protocol's
    (1000 with augmentation, 300 without; pass fewer for quick runs). A learned lr in the
    set (MTT scalar, DD vector) is used unless ``use_learned_lr=False``; a DD set (meta ``train_schedule`` ==
    "dd_unrolled") is evaluated by ``pydistill.methods.dd.evaluate_dd`` with its own network and learned
    schedule (``models``, ``epochs`` and ``dsa`` do not apply). Deterministic given ``seed``; the
    global RNG is left untouched. ``resume_dir``: a folder where each finished network's accuracy is stored
    (keyed by a hash of the set and every setting); a rerun after a crash skips those networks and gives the
    same result. Under torch.distributed the networks are split across ranks (see pydistill.distributed).
    ``model_kwargs=None`` builds each model with ``pydistill.models.default_model_kwargs(model, dataset.name)``
    (ConvNet width 32, depth 2 on 8x8 digits). Returns ``{model: {"mean", "std", "accs", ...}}`` (fractions in
    [0, 1]) with the protocol recorded per model: "protocol", "augmentation", "strategy", "epochs",
    "lr_schedule", "statistic" (and "official_statistic" under the paper protocol).
    """
    from pydistill.synthetic import SyntheticSet

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")

    if not isinstance(synthetic_set, SyntheticSet):
        raise TypeError(f"synthetic_set must be a SyntheticSet, got {type(synthetic_set).__name__}")
    imgs, labels = synthetic_set.images, synthetic_set.labels
    expect = (dataset.channel, *dataset.im_size)
    if tuple(imgs.shape[1:]) != expect:
        raise ValueError(
            f"synthetic images are {tuple(imgs.shape[1:])} but dataset {dataset.name!r} has images {expect}"
        )
    if synthetic_set.soft and labels.shape[1] != dataset.num_classes:
        raise ValueError(f"soft labels have {labels.shape[1]} classes, dataset has {dataset.num_classes}")
    if (
        not synthetic_set.soft
        and labels.numel()
        and not (0 <= int(labels.min()) and int(labels.max()) < dataset.num_classes)
    ):
        raise ValueError(
            f"labels must lie in [0, {dataset.num_classes}), got range [{int(labels.min())}, {int(labels.max())}]"
        )
    learned = synthetic_set.lr if (use_learned_lr and synthetic_set.lr is not None) else None
    schedule = synthetic_set.meta.get("train_schedule")
    if learned is not None and learned.dim() == 1 and schedule in TRAIN_SCHEDULES:
        # DD sets only make sense with their learned unrolled schedule (fixed/random init, chunked steps).
        res = schedule_evaluator(schedule)(
            synthetic_set,
            dataset,
            num_models=num_eval,
            seed=seed,
            device=device if device is not None else dataset.device,
        )
        for row in res.values():  # both protocols: the set's own learned schedule
            row.update(
                protocol=protocol,
                augmentation="none",
                strategy=None,
                lr_schedule=schedule,
                statistic=f"mean +- std over {num_eval} networks",
            )
        return res
    dd_steps = synthetic_set.meta.get("distill_steps")
    data_key = None
    if resume_dir is not None:
        from pydistill.synthetic import _digest

        data_key = "synthetic:" + _digest(synthetic_set._tensors())
    return _run_models(
        lambda i: (imgs, labels),
        dataset,
        models=models,
        num_eval=num_eval,
        epochs=epochs,
        lr=lr,
        learned_lr=learned,
        dd_steps=dd_steps,
        batch_size=batch_size,
        dsa=dsa,
        dsa_strategy=dsa_strategy,
        device=device,
        seed=seed,
        progress=progress,
        model_kwargs=model_kwargs,
        desc="evaluate",
        resume_dir=resume_dir,
        data_key=data_key,
        protocol=protocol,
        method=compared_with or synthetic_set.meta.get("method"),
    )


def evaluate_baseline(
    dataset,
    kind: str = "random",
    ipc: int | None = None,
    *,
    models=("ConvNet",),
    num_eval: int = 5,
    epochs: int | None = None,
    lr: float = 0.01,
    batch_size: int = 256,
    dsa: bool | None = None,
    dsa_strategy: str | None = None,
    device=None,
    seed: int = 0,
    model_kwargs: dict | None = None,
    progress: bool = True,
    resume_dir: str | os.PathLike | None = None,
    protocol: str = "paper",
    compared_with: str | None = None,
) -> dict:
    """Reference points: ``kind="random"`` trains on ``ipc`` random real images per class (a new draw per
    network), ``kind="full"`` on the whole training set. Same output (and ``resume_dir``) as :func:`evaluate`;
    under ``protocol="paper"`` the networks are trained as the method ``compared_with`` evaluates its sets
    (None: DSA/DM/MTT's protocol; "dc": DC's augmentation)."""
    if kind == "random":
        if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
            raise ValueError(f"ipc must be a positive int for kind='random', got {ipc!r}")

        def sets(i):
            sel = random_subset_indices(dataset, ipc, seed, i)
            return dataset.x_train[sel], dataset.y_train[sel]
    elif kind == "full":

        def sets(i):
            return dataset.x_train, dataset.y_train
    else:
        raise ValueError(f"kind must be 'random' or 'full', got {kind!r}")
    return _run_models(
        sets,
        dataset,
        models=models,
        num_eval=num_eval,
        epochs=epochs,
        lr=lr,
        learned_lr=None,
        dd_steps=None,
        batch_size=batch_size,
        dsa=dsa,
        dsa_strategy=dsa_strategy,
        device=device,
        seed=seed,
        progress=progress,
        model_kwargs=model_kwargs,
        desc=f"baseline-{kind}",
        resume_dir=resume_dir,
        data_key=f"baseline:{kind}:{ipc}",
        protocol=protocol,
        method=compared_with,
    )


class _CallableModule(types.ModuleType):
    """Lets ``pydistill.evaluate(...)`` call :func:`evaluate` while staying importable as a module."""

    def __call__(self, *args, **kwargs):
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
