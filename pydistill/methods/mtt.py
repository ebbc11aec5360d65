"""MTT: dataset distillation by matching training trajectories (Cazenavette et al., CVPR 2022).

Experts (``train_experts``): networks trained with plain SGD on the real data; their flat parameters
theta*_t are saved before training (t = 0) and after every epoch t = 1..E.

One distillation iteration (paper notation):

    pick a random expert and t ~ U{0, ..., max_start_epoch - 1};  theta_hat_0 = theta*_t
    for n in 0 .. N-1:                                       # N = syn_steps
        b_n   = mini-batch of S (batch_syn images, a fresh shuffle when exhausted), A_n = DSA draw per sample
        theta_hat_{n+1} = theta_hat_n - alpha * grad_theta l(A_n(b_n); theta_hat_n)
    L = ||theta_hat_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2       # ops.trajectory_loss
    S     <- SGD_momentum(S, dL/dS)            (lr_img, momentum 0.5)
    alpha <- positive learnable lr, see below  (lr_lr,  momentum 0.5)

Learnable lr: alpha = exp(log_alpha) (always > 0; the original could turn negative / explode).
``lr_lr`` is given in the original's units (a step on alpha itself); the optimiser on log_alpha uses
``lr_lr / alpha_0**2`` so that its first step equals the original update, alpha_0 the initial lr.

Memory (``Config.unroll``):
- ``"plain"``: keep the graph of every inner step (create_graph), O(N) activation memory, as the original.
- ``"recompute"``: exact reverse mode with constant activation memory. The forward keeps only the N
  parameter vectors theta_hat_n (plus batch indices and augmentation parameters); the backward walks
  n = N-1 .. 0, recomputes step n's graph and propagates the adjoint a_n = dL/dtheta_hat_n through
  theta_{n+1} = theta_n - alpha g_n(theta_n, S):
      a_n      = a_{n+1} - alpha * (dg_n/dtheta_n)^T a_{n+1}
      dL/dS   += -alpha * (dg_n/dS)^T a_{n+1}
      dL/dalpha += -<g_n, a_{n+1}>
  These are the same gradients as the plain unroll (cross-step terms included), unlike TESLA's approximation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pydistill.functional import flat_params, functional_forward, num_params
from pydistill.methods.base import Method
from pydistill.methods.dc import class_labels, init_synthetic_images
from pydistill.models import default_model_kwargs

__all__ = ["Config", "MTT", "ExpertBuffer", "train_experts", "register_cli", "EXPERT_FORMAT", "unroll_student"]

EXPERT_FORMAT = "pydistill-expert-v1"
_UNROLLS = ("plain", "recompute")


# ================================================================================================ experts
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
    from pydistill.models import get_network

    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        return get_network(model, dataset.channel, dataset.num_classes, dataset.im_size, **dict(model_kwargs))


def train_experts(dataset, out_dir, *, num_experts: int, epochs: int, lr: float = 0.01, batch_size: int = 256,
                  dsa: bool = True, dsa_strategy: str | None = None, model: str = "ConvNet",
                  model_kwargs: dict | None = None, dtype: str = "float32", device="cpu", seed: int = 0,
                  data_root=None, zca: bool = False, log=print) -> list[Path]:
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
    settings = {"format": EXPERT_FORMAT, "dataset": ds.name, "zca": str(ds.zca is not None), "model": model,
                "model_kwargs": json.dumps(model_kwargs, sort_keys=True), "lr": repr(float(lr)),
                "batch_size": str(batch_size), "dsa": str(bool(dsa)), "epochs": str(epochs), "dtype": dtype}
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
                idx = perm[b: b + batch_size]
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
            raise FileNotFoundError(f"buffers directory {str(self.dir)!r} does not exist; train experts with "
                                    "`pydistill experts --dataset D --out DIR` (or mtt.train_experts)")
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
                raise ValueError(f"experts in {self.dir} disagree: {p.name} has {m['num_params']} params / "
                                 f"{m['epochs']} epochs, {self.paths[0].name} {m0['num_params']} / {m0['epochs']}")
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
            return [sl[int(e): int(e) + 1][0].to(device=device, dtype=dtype) for e in epochs]


# ================================================================================================ unroll
class _Plan:
    """What one unroll needs to replay a step: labels, per-step batch indices and DSA parameters."""

    def __init__(self, net, labels, indices, strategy, aug_params):
        self.net, self.labels, self.indices = net, labels, indices
        self.strategy, self.aug_params = strategy, aug_params

    def inputs(self, images: torch.Tensor, n: int) -> torch.Tensor:
        x = images[self.indices[n]]
        if self.strategy is not None:
            from pydistill.ops.diff_augment import diff_augment

            x = diff_augment(x, self.strategy, params=self.aug_params[n], per_sample=True)
        return x

    def grad(self, w, images, n, create_graph):
        """g_n = d l(A_n(b_n); w) / dw."""
        loss = F.cross_entropy(functional_forward(self.net, w, self.inputs(images, n)), self.labels[self.indices[n]])
        return torch.autograd.grad(loss, w, create_graph=create_graph)[0]


class _RecomputeUnroll(torch.autograd.Function):
    """theta_N from (images, alpha, theta_0) with O(1) activation memory and exact reverse mode."""

    @staticmethod
    def forward(ctx, images, lr, w0, plan):
        ws = [w0.detach()]
        with torch.enable_grad():
            for n in range(len(plan.indices)):
                w = ws[-1].detach().requires_grad_(True)
                g = plan.grad(w, images.detach(), n, create_graph=False)
                ws.append((w.detach() - lr.detach() * g).detach())
        ctx.plan = plan
        ctx.save_for_backward(images, lr, *ws[:-1])
        return ws[-1].clone()

    @staticmethod
    def backward(ctx, a):
        images, lr, *ws = ctx.saved_tensors
        plan = ctx.plan
        d_images = torch.zeros_like(images)
        d_lr = torch.zeros_like(lr)
        a = a.detach()
        for n in reversed(range(len(ws))):
            with torch.enable_grad():
                w = ws[n].detach().requires_grad_(True)
                x = images.detach().requires_grad_(True)
                g = plan.grad(w, x, n, create_graph=True)
                hw, hx = torch.autograd.grad(g, (w, x), grad_outputs=a, allow_unused=True)
            d_lr = d_lr - (g.detach() * a).sum()
            if hx is not None:
                d_images = d_images - lr.detach() * hx
            a = a - lr.detach() * hw if hw is not None else a
        return d_images, d_lr, a, None


def unroll_student(net, images, labels, lr, w0, indices, *, strategy=None, aug_params=None, unroll="plain"):
    """theta_hat_N after len(indices) SGD steps from ``w0`` [P] on mini-batches ``images[indices[n]]``.

    images [K, C, H, W], labels [K] int64, lr a 0-dim tensor (the student lr alpha), indices a list of
    index tensors, aug_params the DSA parameters per step (or None without DSA). Differentiable w.r.t.
    ``images`` and ``lr``; ``unroll`` "plain" (O(N) graph) or "recompute" (exact, constant activation memory).
    """
    if unroll not in _UNROLLS:
        raise ValueError(f"unroll must be one of {_UNROLLS}, got {unroll!r}")
    if aug_params is None:
        aug_params = [None] * len(indices)
    plan = _Plan(net, labels, indices, strategy, aug_params)
    if unroll == "recompute":
        return _RecomputeUnroll.apply(images, lr, w0, plan)
    w = w0.detach().clone().requires_grad_(True)
    for n in range(len(indices)):
        w = w - lr * plan.grad(w, images, n, create_graph=True)
    return w


# ================================================================================================ method
@dataclass
class Config:
    """MTT defaults as published for CIFAR-10 IPC 10 (``for_dataset`` holds the per-IPC table and digits)."""

    buffers: str | None = None  # directory of expert_*.safetensors (train_experts / `pydistill experts`)
    model: str | None = None  # None: the experts' model (must match them)
    model_kwargs: dict | None = None
    iterations: int = 5000
    syn_steps: int = 30  # N
    expert_epochs: int = 2  # M
    max_start_epoch: int = 20  # t ~ U{0, ..., max_start_epoch - 1}
    batch_syn: int | None = None  # None: the whole synthetic set per student step
    lr_img: float = 1000.0
    lr_lr: float = 1e-5  # in lr units (see the module docstring)
    lr_teacher: float | None = None  # initial student lr alpha_0; None: the experts' lr
    momentum: float = 0.5
    init: str = "real"
    dsa: bool = True
    dsa_strategy: str | None = None  # None: data.dsa_strategy_for(dataset)
    unroll: str = "plain"  # "plain" or "recompute" (exact, constant activation memory)
    num_segments: int = 1  # expert segments per iteration, loss averaged (split across torch.distributed ranks)

    @classmethod
    def for_dataset(cls, name: str, ipc: int | None = None) -> "Config":
        """Published CIFAR-10 settings per IPC (1, 10, 50) and a small budget for scikit-learn ``digits``."""
        cfg = cls()
        name = name.lower()
        if name == "cifar10" and ipc is not None:
            table = {1: (50, 2, 2, 100.0, 1e-7, 0.01), 10: (30, 2, 20, 1000.0, 1e-5, 0.001),
                     50: (30, 2, 40, 1000.0, 1e-5, 0.001)}
            key = min(table, key=lambda k: abs(k - ipc))
            (cfg.syn_steps, cfg.expert_epochs, cfg.max_start_epoch, cfg.lr_img, cfg.lr_lr,
             cfg.lr_teacher) = table[key]
        elif name == "digits":
            # experts: the digits ConvNet (width 32, depth 2), lr 0.05, batch 64, 15 epochs (benchmarks/accuracy.py).
            # Without ZCA the image gradients are larger than on ZCA CIFAR: lr_img 10 (1 learns slower: IPC 10 at
            # 100 iterations 97.2 vs 98.0 +- 0.3%; a random subset scores 95.3 +- 0.9%).
            cfg.model_kwargs = default_model_kwargs("ConvNet", "digits")  # width 32, depth 2
            cfg.iterations = 100
            cfg.syn_steps = 20
            cfg.expert_epochs = 2
            cfg.max_start_epoch = 10
            cfg.lr_img = 10.0
            cfg.lr_lr = 1e-5
            cfg.lr_teacher = 0.05
        return cfg


class MTT(Method):
    """Trajectory matching; ``step(it)`` is one iteration (one expert segment, N student steps)."""

    Config = Config
    name = "mtt"
    extendable = True  # no schedule depends on the total: a run resumes with a larger config.iterations
    supports_distributed = True  # expert segments split across torch.distributed ranks (see step)

    def __init__(self, dataset, ipc, *, config=None, device="cpu", seed=0):
        super().__init__(dataset, ipc, config=config, device=device, seed=seed)
        cfg = self.config
        if cfg.buffers is None:
            raise ValueError("config.buffers is required: a directory of expert trajectories written by "
                             "`pydistill experts --dataset D --out DIR` (or mtt.train_experts); pass --buffers DIR")
        if cfg.unroll not in _UNROLLS:
            raise ValueError(f"config.unroll must be one of {_UNROLLS}, got {cfg.unroll!r}")
        if cfg.init not in ("real", "noise"):
            raise ValueError(f"config.init must be 'real' or 'noise', got {cfg.init!r}")
        for name in ("iterations", "syn_steps", "expert_epochs", "max_start_epoch", "num_segments"):
            if int(getattr(cfg, name)) < 1:
                raise ValueError(f"config.{name} must be >= 1, got {getattr(cfg, name)}")
        if cfg.batch_syn is not None and int(cfg.batch_syn) < 1:
            raise ValueError(f"config.batch_syn must be >= 1 or None, got {cfg.batch_syn}")
        for name in ("lr_img", "lr_lr"):
            if not float(getattr(cfg, name)) > 0:
                raise ValueError(f"config.{name} must be > 0, got {getattr(cfg, name)}")
        self.buffer = ExpertBuffer(cfg.buffers)
        if self.buffer.dataset != self.dataset.name or self.buffer.zca != (self.dataset.zca is not None):
            raise ValueError(f"the experts in {cfg.buffers} were trained on {self.buffer.dataset!r} "
                             f"(zca={self.buffer.zca}), the dataset is {self.dataset.name!r} "
                             f"(zca={self.dataset.zca is not None})")
        if cfg.max_start_epoch + cfg.expert_epochs - 1 > self.buffer.epochs:
            raise ValueError(f"config.max_start_epoch - 1 + config.expert_epochs must be <= the experts' epochs "
                             f"({self.buffer.epochs}), got {cfg.max_start_epoch} - 1 + {cfg.expert_epochs}")
        model = cfg.model or self.buffer.model
        kw = self.buffer.model_kwargs if cfg.model_kwargs is None else dict(cfg.model_kwargs)
        self.net = _build_model(model, kw, self.dataset, 0).to(self.device)  # architecture only
        for p in self.net.parameters():
            p.requires_grad_(False)
        if num_params(self.net) != self.buffer.num_params:
            raise ValueError(f"model {model!r} has {num_params(self.net)} parameters, the experts "
                             f"{self.buffer.num_params}; set config.model/model_kwargs to the experts' architecture")
        self.strategy = None
        if cfg.dsa:
            from pydistill.data import dsa_strategy_for

            self.strategy = cfg.dsa_strategy or dsa_strategy_for(self.dataset.name)
        self.labels = class_labels(self.dataset.num_classes, self.ipc, self.device)
        self.images = init_synthetic_images(self, cfg.init).requires_grad_(True)
        lr0 = float(cfg.lr_teacher if cfg.lr_teacher is not None else self.buffer.lr)
        if not lr0 > 0:
            raise ValueError(f"config.lr_teacher must be > 0, got {lr0}")
        self.log_lr = torch.tensor(math.log(lr0), device=self.device).requires_grad_(True)  # alpha = exp(log_lr)
        self.opt_img = torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=cfg.momentum)
        self.opt_lr = torch.optim.SGD([self.log_lr], lr=cfg.lr_lr / lr0 ** 2, momentum=cfg.momentum)

    @property
    def num_iterations(self) -> int:
        return int(self.config.iterations)

    @property
    def lr(self) -> float:
        """The current learned student lr alpha (> 0)."""
        return float(self.log_lr.detach().exp())

    def _plan(self, generator=None):
        """Batch indices and DSA parameters of the N student steps (drawn from ``generator``, default
        self.generator)."""
        from pydistill.ops.diff_augment import diff_augment

        gen = self.generator if generator is None else generator
        cfg, k = self.config, self.images.shape[0]
        bs = k if cfg.batch_syn is None else min(int(cfg.batch_syn), k)
        indices, aug, chunks = [], [], []
        for _ in range(cfg.syn_steps):
            if not chunks:
                perm = torch.randperm(k, generator=gen, device=gen.device).to(self.device)
                chunks = list(torch.split(perm, bs))
            idx = chunks.pop(0)
            indices.append(idx)
            if self.strategy is not None:
                _, p = diff_augment(self.images.detach()[idx], self.strategy, per_sample=True,
                                    generator=gen, return_params=True)
                aug.append(p)
        return indices, (aug if self.strategy is not None else None)

    def step(self, it: int) -> dict[str, float]:
        """One iteration: ``num_segments`` expert segments, L = mean over segments of the trajectory loss.

        Segment s draws its expert, start epoch, batches and DSA from a generator derived from (seed_k, s),
        seed_k drawn from ``self.generator``; under torch.distributed rank r runs the segments s % world == r
        and the gradients are summed across ranks (equal to one process up to float summation order).
        """
        from pydistill import distributed as pdist
        from pydistill.ops.trajectory_loss import trajectory_loss

        cfg = self.config
        n_seg = int(cfg.num_segments)
        iter_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.generator.device).item())
        stats = torch.zeros(2, n_seg, dtype=torch.float64)  # loss, start epoch per segment
        self.opt_img.zero_grad(set_to_none=True)
        self.opt_lr.zero_grad(set_to_none=True)
        for s in pdist.shard(range(n_seg)):  # all segments in one process
            gen = pdist.derived_generator(self.device, iter_seed, s)
            e = int(torch.randint(0, len(self.buffer), (1,), generator=gen, device=gen.device).item())
            t = int(torch.randint(0, cfg.max_start_epoch, (1,), generator=gen, device=gen.device).item())
            start, target = self.buffer.snapshots(e, [t, t + cfg.expert_epochs], self.device)
            indices, aug = self._plan(gen)
            lr = self.log_lr.exp()  # alpha > 0
            w_n = unroll_student(self.net, self.images, self.labels, lr, start, indices, strategy=self.strategy,
                                 aug_params=aug, unroll=cfg.unroll)
            loss = trajectory_loss(w_n, start, target)
            (loss / n_seg).backward()  # one segment's graph alive at a time
            stats[0, s], stats[1, s] = float(loss.detach()), float(t)
        if pdist.is_initialized():
            pdist.all_reduce_grads_([self.images, self.log_lr])
            pdist.all_reduce_(stats)
        self.opt_img.step()
        self.opt_lr.step()
        return {"loss": float(stats[0].mean()), "lr": self.lr, "start_epoch": float(stats[1].mean())}

    def synthetic_set(self):
        from pydistill.synthetic import SyntheticSet

        return SyntheticSet(self.images.detach().clone(), self.labels.clone(), self.lr,
                            {"method": self.name, "ipc": self.ipc, "model": self.net.__class__.__name__,
                             "dsa": bool(self.config.dsa), "buffers": str(self.config.buffers)})

    def state_dict(self) -> dict:
        return {**super().state_dict(), "images": self.images.detach().clone(), "log_lr": self.log_lr.detach().clone(),
                "opt_img": self.opt_img.state_dict(), "opt_lr": self.opt_lr.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.images.copy_(state["images"].to(self.device))
            self.log_lr.copy_(state["log_lr"].to(self.device))
        self.opt_img.load_state_dict(state["opt_img"])
        self.opt_lr.load_state_dict(state["opt_lr"])


# ================================================================================================ CLI
def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``pydistill experts --dataset D --out DIR --num-experts N --epochs E ...``."""
    p = subparsers.add_parser("experts", help="train MTT expert trajectories (resumable)",
                              description=train_experts.__doc__.split("\n\n")[0])
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
    paths = train_experts(args.dataset, args.out, num_experts=args.num_experts, epochs=args.epochs, lr=args.lr,
                          batch_size=args.batch_size, dsa=not args.no_dsa, model=args.model, model_kwargs=kw or None,
                          dtype=args.dtype, device=args.device, seed=args.seed, data_root=args.data_root,
                          zca=args.zca)
    from pydistill.distributed import is_main

    if is_main():
        print(f"{len(paths)} experts in {args.out}")
    return 0
