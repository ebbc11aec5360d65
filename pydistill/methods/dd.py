"""DD: dataset distillation by unrolled optimisation (Wang et al., 2018).

Notation (paper): x~ the synthetic images (from randn, fixed labels), eta~ the learned step sizes, theta_0 the
initial weights (one fixed vector, or a fresh Xavier draw every iteration). T = distill_steps x distill_epochs
applied steps; step i uses the synthetic chunk s = i mod distill_steps and its own lr eta~_i = softplus(r_i),
r_i initialised to log(expm1(lr0)) so that eta~_i starts at lr0 and stays positive. One iteration:

    theta_0 <- fixed init, or Xavier draw            (init_mode "fixed" / "random")
    for i in 0 .. T-1:  theta_{i+1} = theta_i - eta~_i * grad_theta l(x~_{s(i)}; theta_i)
    L = l(x_real; theta_T)                           (batch_real real images)
    (x~, r) <- Adam(dL/dx~, dL/dr)                   (lr 0.01, betas (0.5, 0.999), x0.5 every decay_every its)

The backward goes through the whole unroll (O(T) memory, as in the paper).

Synthetic chunks: the ipc * num_classes images are split into n_chunks = min(ipc, distill_steps) class-balanced
chunks (chunk j: the images whose index within their class is j mod n_chunks); step s uses chunk s mod n_chunks.
So IPC 1 feeds all 10 digits to every step (the paper's "10 images"), and IPC >= distill_steps gives each step
its own images (the original code's layout).

Evaluation: the images only make sense when trained with the learned schedule. ``synthetic_set().meta`` holds
``"train_schedule": "dd_unrolled"`` plus ``distill_steps``, ``distill_epochs``, ``n_chunks``, ``init_mode``,
``init_seed``, ``model`` and ``model_kwargs``; ``SyntheticSet.lr`` holds the T learned lrs in order.
An evaluator seeing that key must call :func:`evaluate_dd` (or do the same): start from the fixed init
(``init_mode == "fixed"``, rebuilt from ``init_seed``) or a fresh Xavier draw, apply the T steps in order
(full chunk per step, no augmentation, no momentum), then test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pydistill.functional import functional_forward, xavier_flat
from pydistill.methods.base import Method
from pydistill.methods.common import class_labels

__all__ = ["Config", "DD", "evaluate_dd", "evaluate_dd_random", "TRAIN_SCHEDULE"]

TRAIN_SCHEDULE = "dd_unrolled"


@dataclass
class Config:
    """DD defaults as published (LeNet on MNIST); ``for_dataset("digits")`` shrinks the budget."""

    model: str = "LeNet"
    model_kwargs: dict = field(default_factory=dict)
    distill_steps: int = 10
    distill_epochs: int = 3
    lr0: float = 0.02  # initial eta~ (0.001 suggested for CIFAR-10)
    lr_outer: float = 0.01  # Adam on images and raw lrs
    betas: tuple = (0.5, 0.999)
    batch_real: int = 1024
    epochs: int = 400  # of the real training set; iterations = epochs * ceil(N_train / batch_real) unless set
    iterations: int | None = None
    decay_epochs: int = 40  # lr x decay_factor every decay_epochs epochs (decay_every iterations when set)
    decay_every: int | None = None
    decay_factor: float = 0.5
    # "random" (a fresh Xavier theta_0 per iteration: the official --train_nets_type default unknown_init) or
    # "fixed" (one theta_0, the paper's fixed-init results)
    init_mode: str = "random"

    @classmethod
    def for_dataset(cls, name: str, ipc: int | None = None) -> "Config":
        """Official defaults (SsnL/dataset-distillation base_options.py); MNIST IPC 1: the published 10-image
        setting, one step of 10 images x 3 epochs (its 93.8 uses init_mode "fixed"); CIFAR-10: lr0 0.001 and the
        official AlexCifarNet; on ``digits`` (ours, CPU preset) 200 iterations (lr decay every 100), batch_real
        256, lr0 and Adam lr 0.05 (tuned: 0.02/0.01 learn too slowly at this budget)."""
        cfg = cls()
        if name.lower() == "mnist" and ipc == 1:
            cfg.distill_steps = 1
        if name.lower() == "digits":
            cfg.batch_real = 256
            cfg.iterations = 200
            cfg.decay_every = 100
            cfg.lr0 = 0.05
            cfg.lr_outer = 0.05
        elif name.lower() == "cifar10":
            cfg.lr0 = 0.001
            cfg.model = "AlexCifarNet"
        return cfg


def _chunks(num_classes: int, ipc: int, distill_steps: int, device) -> list[torch.Tensor]:
    n_chunks = min(ipc, distill_steps)
    k = torch.arange(ipc, device=device)
    return [
        (torch.arange(num_classes, device=device)[:, None] * ipc + k[k % n_chunks == j][None]).reshape(-1)
        for j in range(n_chunks)
    ]


def _build(model: str, model_kwargs: dict, channel, num_classes, im_size, device):
    from pydistill.models import seeded_network

    # architecture only: the weights come from xavier_flat
    net = seeded_network(model, channel, num_classes, im_size, 0, device=device, **dict(model_kwargs))
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _fixed_init(net, init_seed: int) -> torch.Tensor:
    """The fixed theta_0: Xavier from a CPU generator seeded with init_seed (identical on every device)."""
    return xavier_flat(net, torch.Generator().manual_seed(int(init_seed)))


def _unroll(net, w, images, labels, lrs, chunks, distill_steps, create_graph):
    """theta_T after the T = len(lrs) steps; lrs [T] positive."""
    for i in range(lrs.shape[0]):
        idx = chunks[(i % distill_steps) % len(chunks)]
        loss = F.cross_entropy(functional_forward(net, w, images[idx]), labels[idx])
        g = torch.autograd.grad(loss, w, create_graph=create_graph)[0]
        w = w - lrs[i] * g
        if not create_graph:
            w = w.detach().requires_grad_(True)
    return w


class DD(Method):
    """Dataset distillation (Wang et al.); ``step(it)`` is one outer Adam step through the unroll."""

    Config = Config
    name = "dd"
    extendable = True  # no schedule depends on the total: a run resumes with a larger config.iterations

    def __init__(self, dataset, ipc, *, config=None, device="cpu", seed=0):
        super().__init__(dataset, ipc, config=config, device=device, seed=seed)
        cfg, ds = self.config, self.dataset
        for name in ("distill_steps", "distill_epochs", "batch_real", "epochs", "decay_epochs"):
            if int(getattr(cfg, name)) < 1:
                raise ValueError(f"config.{name} must be >= 1, got {getattr(cfg, name)}")
        for name in ("iterations", "decay_every"):
            if getattr(cfg, name) is not None and int(getattr(cfg, name)) < 1:
                raise ValueError(f"config.{name} must be >= 1 or None, got {getattr(cfg, name)}")
        if not float(cfg.lr0) > 0 or not float(cfg.lr_outer) > 0:
            raise ValueError(f"config.lr0 and config.lr_outer must be > 0, got {cfg.lr0}, {cfg.lr_outer}")
        if not 0 < float(cfg.decay_factor) <= 1:
            raise ValueError(f"config.decay_factor must be in (0, 1], got {cfg.decay_factor}")
        if cfg.init_mode not in ("fixed", "random"):
            raise ValueError(f"config.init_mode must be 'fixed' or 'random', got {cfg.init_mode!r}")
        per_epoch = math.ceil(ds.x_train.shape[0] / cfg.batch_real)
        self._iterations = int(cfg.iterations or cfg.epochs * per_epoch)
        self._decay_every = int(cfg.decay_every or cfg.decay_epochs * per_epoch)
        self.model_kwargs = dict(cfg.model_kwargs)
        self.net = _build(cfg.model, self.model_kwargs, ds.channel, ds.num_classes, ds.im_size, self.device)
        self.T = cfg.distill_steps * cfg.distill_epochs
        self.labels = class_labels(ds.num_classes, self.ipc, self.device)
        self.chunks = _chunks(ds.num_classes, self.ipc, cfg.distill_steps, self.device)
        shape = (ds.num_classes * self.ipc, ds.channel, *ds.im_size)
        self.images = torch.randn(shape, generator=self.generator, device=self.device).requires_grad_(True)
        # r_i with softplus(r_i) = lr0
        self.raw_lr = torch.full((self.T,), math.log(math.expm1(cfg.lr0)), device=self.device).requires_grad_(True)
        self.init_seed = int(
            torch.randint(0, 2**62, (1,), generator=self.generator, device=self.generator.device).item()
        )
        self.w0 = _fixed_init(self.net, self.init_seed) if cfg.init_mode == "fixed" else None
        self.opt = torch.optim.Adam([self.images, self.raw_lr], lr=cfg.lr_outer, betas=tuple(cfg.betas))

    @property
    def num_iterations(self) -> int:
        return self._iterations

    @property
    def lrs(self) -> torch.Tensor:
        """The T learned step sizes eta~ = softplus(r) [T] (> 0), detached."""
        return F.softplus(self.raw_lr.detach())

    def step(self, it: int) -> dict[str, float]:
        cfg, ds = self.config, self.dataset
        for group in self.opt.param_groups:  # step decay, a function of it (resume-exact)
            group["lr"] = cfg.lr_outer * cfg.decay_factor ** (int(it) // self._decay_every)
        idx = torch.randperm(ds.x_train.shape[0], generator=self.generator, device=self.generator.device)[
            : cfg.batch_real
        ].to(ds.x_train.device)
        x_real, y_real = ds.x_train[idx].to(self.device), ds.y_train[idx].to(self.device)
        w0 = self.w0 if self.w0 is not None else xavier_flat(self.net, self.generator)
        w0 = w0.detach().clone().requires_grad_(True)
        w_T = _unroll(
            self.net,
            w0,
            self.images,
            self.labels,
            F.softplus(self.raw_lr),
            self.chunks,
            cfg.distill_steps,
            create_graph=True,
        )
        loss = F.cross_entropy(functional_forward(self.net, w_T, x_real), y_real)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        lrs = self.lrs
        return {"loss": float(loss.detach()), "lr_mean": float(lrs.mean()), "lr_min": float(lrs.min())}

    def synthetic_set(self):
        from pydistill.synthetic import SyntheticSet

        cfg = self.config
        meta = {
            "method": self.name,
            "ipc": self.ipc,
            "num_classes": self.dataset.num_classes,
            "train_schedule": TRAIN_SCHEDULE,
            "distill_steps": cfg.distill_steps,
            "distill_epochs": cfg.distill_epochs,
            "n_chunks": len(self.chunks),
            "init_mode": cfg.init_mode,
            "init_seed": self.init_seed,
            "model": cfg.model,
            "model_kwargs": self.model_kwargs,
        }
        return SyntheticSet(self.images.detach().clone(), self.labels.clone(), self.lrs.clone(), meta)

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "images": self.images.detach().clone(),
            "raw_lr": self.raw_lr.detach().clone(),
            "init_seed": self.init_seed,
            "opt": self.opt.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.images.copy_(state["images"].to(self.device))
            self.raw_lr.copy_(state["raw_lr"].to(self.device))
        self.init_seed = int(state["init_seed"])
        if self.w0 is not None:
            self.w0 = _fixed_init(self.net, self.init_seed)
        self.opt.load_state_dict(state["opt"])


def evaluate_dd(syn, dataset, *, num_models: int = 5, device="cpu", seed: int = 0, batch_size: int = 2048) -> dict:
    """Test accuracy of networks trained with DD's learned schedule (``meta["train_schedule"] == "dd_unrolled"``).

    For each of ``num_models`` networks: theta_0 = the fixed init (``init_mode`` "fixed") or a fresh Xavier draw
    (seeded from ``seed``), then the T = len(syn.lr) steps theta <- theta - lr_i grad l(chunk_{s(i)}; theta),
    then accuracy on ``dataset.x_test``. Returns ``{model: {"mean", "std", "accs"}}`` like
    ``pydistill.evaluate.evaluate`` (fractions in [0, 1]). With ``init_mode == "fixed"`` every network starts
    from the same theta_0, so the runs coincide (std 0): that is the paper's fixed-init protocol.
    """
    meta = syn.meta
    if meta.get("train_schedule") != TRAIN_SCHEDULE:
        raise ValueError(
            f"syn.meta['train_schedule'] must be {TRAIN_SCHEDULE!r} (a DD synthetic set), got "
            f"{meta.get('train_schedule')!r}"
        )
    if syn.lr is None or syn.lr.dim() != 1:
        raise ValueError("syn.lr must hold the T learned step sizes [T] of a DD synthetic set")
    if int(num_models) < 1:
        raise ValueError(f"num_models must be >= 1, got {num_models}")
    device = torch.device(device)
    ipc, k = int(meta["ipc"]), int(meta.get("num_classes", dataset.num_classes))
    steps = int(meta["distill_steps"])
    net = _build(meta["model"], meta.get("model_kwargs", {}), dataset.channel, k, dataset.im_size, device)
    images, labels, lrs = syn.images.to(device), syn.labels.to(device), syn.lr.to(device)
    chunks = _chunks(k, ipc, steps, device)
    x_test, y_test = dataset.x_test, dataset.y_test
    accs = []
    for m in range(int(num_models)):
        if meta.get("init_mode") == "fixed":
            w0 = _fixed_init(net, int(meta["init_seed"]))
        else:
            w0 = xavier_flat(net, torch.Generator().manual_seed(int(seed) * 1_000_003 + m))
        with torch.enable_grad():
            w = _unroll(net, w0.requires_grad_(True), images, labels, lrs, chunks, steps, create_graph=False)
        w = w.detach()
        correct = 0
        with torch.no_grad():
            for b in range(0, x_test.shape[0], batch_size):
                xb = x_test[b : b + batch_size].to(device)
                correct += int(
                    (functional_forward(net, w, xb).argmax(1) == y_test[b : b + batch_size].to(device)).sum()
                )
        accs.append(correct / max(1, x_test.shape[0]))
    t = torch.tensor(accs, dtype=torch.float64)
    return {meta["model"]: {"mean": float(t.mean()), "std": float(t.std(unbiased=False)), "accs": accs}}


def evaluate_dd_random(
    syn,
    dataset,
    *,
    num_models: int = 5,
    lrs=(0.003, 0.01, 0.03, 0.1, 0.3),
    device="cpu",
    seed: int = 0,
    batch_size: int = 2048,
) -> dict:
    """DD's own baseline: random real images in place of the learned ones, trained with the same schedule.

    For each of ``num_models`` networks, draw ``meta["ipc"]`` random training images per class (a new draw per
    network), start from the same theta_0 as :func:`evaluate_dd` and apply the same T steps over the same chunks,
    every step with one constant lr; each lr of ``lrs`` is tried and the best mean test accuracy is reported (a
    baseline tuned on the test set: conservative for DD). ``syn`` supplies the schedule (a DD synthetic set).
    Returns ``{model: {"mean", "std", "accs", "lr"}}`` (fractions in [0, 1]).
    """
    if syn.meta.get("train_schedule") != TRAIN_SCHEDULE:
        raise ValueError(
            f"syn.meta['train_schedule'] must be {TRAIN_SCHEDULE!r} (a DD synthetic set), got "
            f"{syn.meta.get('train_schedule')!r}"
        )
    lrs = [float(v) for v in lrs]
    if not lrs or min(lrs) <= 0:
        raise ValueError(f"lrs must be a non-empty sequence of positive step sizes, got {lrs!r}")
    from pydistill.data import random_subset_indices

    ipc, T = int(syn.meta["ipc"]), int(syn.lr.numel())
    best = None
    for lr in lrs:
        accs = []
        for m in range(int(num_models)):
            sel = random_subset_indices(dataset, ipc, seed, m)  # class-major, as class_labels
            real = type(syn)(dataset.x_train[sel].clone(), dataset.y_train[sel].clone(), torch.full((T,), lr), syn.meta)
            res = evaluate_dd(
                real, dataset, num_models=1, device=device, seed=int(seed) * 1_000_003 + m, batch_size=batch_size
            )
            accs += next(iter(res.values()))["accs"]
        t = torch.tensor(accs, dtype=torch.float64)
        row = {"mean": float(t.mean()), "std": float(t.std(unbiased=False)), "accs": accs, "lr": lr}
        if best is None or row["mean"] > best["mean"]:
            best = row
    return {syn.meta["model"]: best}
