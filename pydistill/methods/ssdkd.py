"""SSD-KD: small-scale data-free knowledge distillation with prioritized replay (He Liu et al., CVPR 2024).

A fixed, trained teacher acts as the discriminator of a generator (Fast-DFKD inversion). Each round:

1. **Synthesis** (``g_steps`` Adam steps on the generator and the round's latent codes, teacher and student in
   eval mode). Loss on a batch ``x = G(z)``::

       w_bn * sum_BN-layers (||mu(x) - mu_run|| + ||var(x) - var_run||)          # BN-statistics prior
     + w_ce * mean_i phi(x_i) * CE(t(x_i), argmax t(x_i))                        # task loss, modulated
     - w_adv * mean_i m_i * KL(p_T(x_i) || p_S(x_i))                             # adversarial

   ``phi = diversity * difficulty`` (:func:`pydistill.kd.modulating_phi`): with ``y = argmax t(x)``, ``K``
   classes and ``f[y]`` the frequency of class ``y`` among the buffer's teacher labels plus the batch,
   ``diversity = min(1, 1 / (K f[y]))`` and ``difficulty = (1 - softmax(t(x))[y])^gamma``;
   ``m_i`` = 1 where student and teacher agree (``adv_agree_mask``) else 0.
2. **Replay insert**: the last synthesized batch goes into a fixed-size buffer (default 10% of the training
   set) with the teacher's logits and its priority ``delta = KL(p_T || p_S)``; tree priority
   ``(delta + eps)^alpha`` (:class:`pydistill.ops.SumTree`). When full, the *oldest* images are replaced
   (``replace="oldest"``, a ring) or the lowest-priority ones (``replace="lowest"``).
3. **Student KD** (``kd_steps`` SGD steps): mini-batches drawn with ``P(i) ∝ (delta_i + eps)^alpha``
   (stratified over the tree; with ``uniform_mix = u > 0`` a fraction ``u`` of each batch is drawn uniformly
   and ``P = u / |B| + (1 - u) P_prio``), per-sample ``T^2 KL`` at temperature ``T`` weighted by
   ``w ∝ (|B| P)^-beta`` (beta annealed linearly from ``beta`` to ``beta_final``), normalised by
   ``weight_norm``: ``"mean"`` (default) ``w / mean_batch(w)`` keeps the student's average step size;
   ``"batch"`` ``w / max_batch(w)`` (common PER practice) and ``"buffer"`` ``w / max over the whole buffer``
   (the paper's formula) give ``w <= 1``, which on small budgets shrinks the effective learning rate (mean w
   about 0.3 and 0.14 at beta = 1 on digits) and lost to the uniform baseline. The default ``beta = 0``
   (``w = 1``: prioritized sampling without bias correction) measured best on digits
   (benchmarks/results/ssdkd-digits-*.md). The sampled items' priorities are refreshed from the same forward
   pass (pre-update student, as in prioritized replay).

``use_phi=False`` (phi = 1) and ``use_priority=False`` (uniform replay, w = 1) give the Fast-DFKD-style
baseline. A teacher without BatchNorm gets a BN term of 0 (no BN prior; the default teachers have BN).
The teacher comes from :func:`train_teacher` (``pydistill teacher --dataset D --model M --out PATH``).
"""
from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pydistill.generator import Generator
from pydistill.kd import BNStatsLoss, class_frequencies, kd_loss, modulating_phi, priority
from pydistill.methods.base import Method
from pydistill.evaluate import test_accuracy
from pydistill.synthetic import SyntheticSet
from pydistill.utils import load_checked, save_checked

__all__ = [
    "Config",
    "SSDKD",
    "ReplayBuffer",
    "train_teacher",
    "load_teacher",
    "register_cli",
    "TEACHER_FORMAT",
    "STUDENT_FILE",
]

TEACHER_FORMAT = "pydistill-teacher-v1"
STUDENT_FILE = "student.pt"


# ----------------------------------------------------------------------------------------------- helpers
def _im_size(dataset) -> tuple[int, int]:
    s = dataset.im_size
    return (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))


def _build_network(name: str, dataset, seed: int, **kw) -> nn.Module:
    from pydistill.models import get_network

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_network(name, dataset.channel, dataset.num_classes, _im_size(dataset), **kw)


def _augment(x: torch.Tensor, gen: torch.Generator, *, flip: bool, pad: int) -> torch.Tensor:
    """Per-sample random translation (zero pad ``pad`` + crop) and optional horizontal flip, ``[N, C, H, W]``."""
    n, c, h, w = x.shape
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
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
    if augment is None:
        augment = dataset.channel == 3
    h, w = _im_size(dataset)
    pad = max(1, h // 8)

    net = _build_network(model, dataset, seed, **model_kwargs).to(device)
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
            if augment:
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


# ----------------------------------------------------------------------------------------------- replay
class ReplayBuffer:
    """Fixed-size buffer of synthesized images with teacher logits and SSD-KD priorities.

    Stores ``images [capacity, C, H, W]`` (normalized space), ``logits [capacity, K]`` (teacher),
    ``labels [capacity]`` (teacher argmax) and ``delta [capacity]`` (raw priority, KL(teacher || student)).
    The :class:`pydistill.ops.SumTree` holds ``(delta + eps)^alpha`` per slot.
    ``replace``: ``"oldest"`` writes new images over the oldest ones (ring order); ``"lowest"`` over the
    lowest-priority ones (ties: lowest slot). Until full, images fill the free slots in order.
    """

    def __init__(self, capacity: int, image_shape, num_classes: int, *, alpha: float, eps: float,
                 replace: str = "oldest", device="cpu", backend: str = "auto"):
        from pydistill.ops import SumTree

        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        if replace not in ("oldest", "lowest"):
            raise ValueError(f"replace must be 'oldest' or 'lowest', got {replace!r}")
        self.capacity = int(capacity)
        self.alpha, self.eps, self.replace = float(alpha), float(eps), replace
        self.device = torch.device(device)
        self.images = torch.zeros(self.capacity, *image_shape, device=self.device)
        self.logits = torch.zeros(self.capacity, num_classes, device=self.device)
        self.labels = torch.zeros(self.capacity, dtype=torch.long, device=self.device)
        self.delta = torch.zeros(self.capacity, device=self.device)
        self.size = 0
        self.ptr = 0
        self.tree = SumTree(self.capacity, device=self.device, backend=backend)

    def tree_priority(self, delta: torch.Tensor) -> torch.Tensor:
        return (delta.clamp_min(0) + self.eps).pow(self.alpha)

    def _slots(self, n: int) -> torch.Tensor:
        free = min(n, self.capacity - self.size)
        slots = [torch.arange(self.size, self.size + free, device=self.device)]
        rest = n - free
        if rest > 0:
            if self.replace == "oldest":
                slots.append((self.ptr + torch.arange(rest, device=self.device)) % self.capacity)
            else:
                filled = self.delta[: self.size]
                slots.append(torch.topk(-filled, rest, sorted=True).indices)
        return torch.cat(slots)

    def add(self, images: torch.Tensor, logits: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Insert ``n`` images (at most ``capacity``; extra leading ones are dropped); returns their slots."""
        if images.shape[0] > self.capacity:
            images, logits, delta = images[-self.capacity :], logits[-self.capacity :], delta[-self.capacity :]
        n = images.shape[0]
        was_full = self.size == self.capacity
        slots = self._slots(n)
        self.images[slots] = images.detach().to(self.device, self.images.dtype)
        self.logits[slots] = logits.detach().to(self.device, self.logits.dtype)
        self.labels[slots] = self.logits[slots].argmax(1)
        self.delta[slots] = delta.detach().to(self.device, self.delta.dtype)
        self.tree.update(slots, self.tree_priority(self.delta[slots]))
        filled_now = min(self.capacity, self.size + n)
        if self.replace == "oldest":
            if was_full:
                self.ptr = (self.ptr + n) % self.capacity
            elif filled_now == self.capacity:
                self.ptr = (n - (self.capacity - self.size)) % self.capacity
        self.size = filled_now
        return slots

    def update(self, slots: torch.Tensor, delta: torch.Tensor) -> None:
        """Refresh the priorities of ``slots`` (duplicates: the last value wins)."""
        self.delta[slots] = delta.detach().to(self.device, self.delta.dtype)
        self.tree.update(slots, self.tree_priority(self.delta[slots]))

    def sample_prioritized(self, n: int, generator: torch.Generator):
        """``n`` slots with ``P(i) = p_i / sum p`` (stratified); returns ``(slots, P)``."""
        slots, probs = self.tree.sample(n, generator=generator, stratified=True)
        return slots.to(self.device).long(), probs.to(self.device)

    def sample_uniform(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.size, (n,), generator=generator, device=generator.device).to(self.device)

    def state_dict(self) -> dict:
        return dict(images=self.images, logits=self.logits, labels=self.labels, delta=self.delta,
                    size=self.size, ptr=self.ptr, tree=self.tree.state_dict())

    def load_state_dict(self, sd: dict) -> None:
        for k in ("images", "logits", "labels", "delta"):
            if sd[k].shape != getattr(self, k).shape:
                raise ValueError(
                    f"buffer state {k} has shape {tuple(sd[k].shape)}, expected {tuple(getattr(self, k).shape)}"
                )
            getattr(self, k).copy_(sd[k])
        self.size, self.ptr = int(sd["size"]), int(sd["ptr"])
        self.tree.load_state_dict(sd["tree"])


# ----------------------------------------------------------------------------------------------- method
@dataclass
class Config:
    """SSD-KD hyperparameters (defaults follow Fast-DFKD / SSD-KD where published; see REFERENCE.md)."""

    teacher: Any = None  # path of a teacher file from train_teacher (or an nn.Module); required
    student: str = "ResNet18BN"  # student architecture (pydistill.models.get_network name)
    student_kwargs: dict = field(default_factory=dict)  # extra get_network keywords (e.g. width)
    rounds: int = 200  # generator/student rounds = num_iterations
    synthesis_batch: int = 256  # images synthesized per round (all go into the buffer)
    g_steps: int = 2  # generator Adam steps per round
    kd_steps: int = 10  # student SGD steps per round
    batch_size: int = 256  # student mini-batch drawn from the buffer
    buffer_size: int | None = None  # replay buffer capacity; None = buffer_fraction x training-set size
    buffer_fraction: float = 0.1  # buffer size as a fraction of the training set (SSD-KD: 10%)
    replace: str = "oldest"  # full buffer: "oldest" (ring) or "lowest" (lowest priority) images are replaced
    latent_dim: int = 256  # generator latent size
    gen_width: int = 64  # generator feature maps (first stage 2x)
    lr_g: float = 4e-3  # Adam lr of the generator and of the round's latent codes, betas (0.5, 0.999)
    optimize_latent: bool = True  # also optimize each round's latent codes
    w_bn: float = 10.0  # weight of the BN-statistics loss
    w_ce: float = 0.5  # weight of the phi-modulated CE(teacher argmax) task loss
    w_adv: float = 1.0  # weight of the adversarial term (minus teacher-student KL)
    adv_agree_mask: bool = True  # adversarial KL only on samples where student and teacher agree
    temperature: float = 20.0  # KD temperature T (loss scaled by T^2)
    lr_student: float = 0.2  # student SGD lr, cosine-annealed over rounds x kd_steps
    momentum: float = 0.9  # student SGD momentum
    weight_decay: float = 5e-4  # student SGD weight decay
    use_phi: bool = True  # modulate the task loss by phi = diversity x difficulty (False: phi = 1)
    gamma: float = 2.0  # focal exponent of the difficulty term (1 - p_T(y|x))^gamma
    use_priority: bool = True  # prioritized replay with importance weights (False: uniform, w = 1)
    alpha: float = 0.6  # priority exponent: P(i) ∝ (delta_i + eps)^alpha
    beta: float = 0.0  # importance-weight exponent at round 0 (PER's 0.4 -> 1 lost to beta = 0 on digits) ...
    beta_final: float = 0.0  # ... annealed linearly to this at the last round
    weight_norm: str = "mean"  # importance weights divided by their batch "mean", or max over "batch"/"buffer"
    uniform_mix: float = 0.0  # fraction of each replay batch drawn uniformly (P = mix/|B| + (1-mix) P_prio)
    priority_eps: float = 1e-3  # eps in (delta + eps)^alpha
    priority_temperature: float = 1.0  # temperature of the priority KL(teacher || student)
    tree_backend: str = "auto"  # SumTree backend: "auto", "cpp", "cuda" or "reference"
    eval_every: int = 0  # every this many rounds, report the student's test accuracy in step() (0: never)

    @classmethod
    def for_dataset(cls, name: str, ipc: int | None = None) -> "Config":
        """Defaults for ``name``: the published CIFAR setting; CPU-sized budgets for ``digits`` and ``mnist``."""
        return cls(**_CPU_PRESETS.get(str(name).lower(), {}))


# dataset -> Config fields that differ from the published CIFAR setting (student ConvNet width 32, lr 0.05)
_CPU_PRESETS = {
    "digits": dict(student="ConvNetW32", rounds=150, synthesis_batch=32, batch_size=64, kd_steps=5, lr_student=0.05),
    # 200 rounds x 64 images = 12,800 synthesized (about 1/5 of the training set), buffer 6,000 (10%)
    "mnist": dict(student="ConvNetW32", rounds=200, synthesis_batch=64, batch_size=128, kd_steps=10, lr_student=0.05),
}


class SSDKD(Method):
    """SSD-KD data-free distillation (see the module docstring); ``num_iterations = config.rounds``.

    ``synthetic_set()`` returns up to ``ipc`` buffer images per teacher class (highest priority first) with the
    teacher's labels. ``extra_metrics()``: student and teacher test accuracy, synthesized-sample count.
    ``save_outputs(out_dir)`` writes ``out_dir/student.pt``; ``student_state()`` / ``save_student(path)``.
    """

    Config = Config
    name = "ssdkd"

    def __init__(self, dataset, ipc: int, *, config: Config | dict | None = None, device="cpu", seed: int = 0):
        super().__init__(dataset, ipc, config=config, device=device, seed=seed)
        cfg = self.config
        self._validate(cfg)
        dev = self.device
        dataset = self.dataset
        h, w = _im_size(dataset)
        k = int(dataset.num_classes)

        # teacher
        if cfg.teacher is None:
            raise ValueError(
                "config.teacher is required: the path of a trained teacher (train one with "
                "`pydistill teacher --dataset D --model M --out PATH`, then pass --teacher PATH)"
            )
        if isinstance(cfg.teacher, nn.Module):
            self.teacher, self.teacher_meta = cfg.teacher.to(dev).eval(), {"model": type(cfg.teacher).__name__}
        else:
            self.teacher, self.teacher_meta = load_teacher(cfg.teacher, dev)
        t_classes = self.teacher_meta.get("num_classes", k)
        if t_classes != k or self.teacher_meta.get("channel", dataset.channel) != dataset.channel:
            raise ValueError(
                f"teacher {cfg.teacher!r} was trained for {self.teacher_meta.get('channel')} channels / "
                f"{self.teacher_meta.get('num_classes')} classes, the dataset has {dataset.channel} / {k}"
            )
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.bn_loss = BNStatsLoss(self.teacher)
        self.bn_loss.enabled = False

        # student, generator, optimizers
        self.student = _build_network(cfg.student, dataset, seed + 1, **dict(cfg.student_kwargs)).to(dev)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 2)
            self.gen_net = Generator(cfg.latent_dim, int(dataset.channel), (h, w), dataset.mean, dataset.std,
                                     width=cfg.gen_width).to(dev)
        self.opt_g = torch.optim.Adam(self.gen_net.parameters(), lr=cfg.lr_g, betas=(0.5, 0.999))
        self.opt_s = torch.optim.SGD(self.student.parameters(), lr=cfg.lr_student, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay)

        # replay buffer
        n_train = int(dataset.x_train.shape[0])
        cap = cfg.buffer_size if cfg.buffer_size is not None else max(1, math.ceil(cfg.buffer_fraction * n_train))
        self.buffer = ReplayBuffer(cap, (int(dataset.channel), h, w), k, alpha=cfg.alpha, eps=cfg.priority_eps,
                                   replace=cfg.replace, device=dev, backend=cfg.tree_backend)
        self.synthesized = 0
        self.student_steps = 0
        self._teacher_acc: float | None = None

    # ----------------------------------------------------------------------------------------- config
    @staticmethod
    def _validate(cfg: Config) -> None:
        pos_int = ("rounds", "synthesis_batch", "g_steps", "kd_steps", "batch_size", "latent_dim", "gen_width")
        for name in pos_int:
            v = getattr(cfg, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"config.{name} must be a positive int, got {v!r}")
        if cfg.buffer_size is not None and (not isinstance(cfg.buffer_size, int) or cfg.buffer_size < 1):
            raise ValueError(f"config.buffer_size must be a positive int or None, got {cfg.buffer_size!r}")
        if not 0 < cfg.buffer_fraction <= 1:
            raise ValueError(f"config.buffer_fraction must be in (0, 1], got {cfg.buffer_fraction}")
        for name in ("lr_g", "temperature", "lr_student", "priority_eps", "priority_temperature"):
            if not getattr(cfg, name) > 0:
                raise ValueError(f"config.{name} must be > 0, got {getattr(cfg, name)}")
        for name in ("w_bn", "w_ce", "w_adv", "gamma", "alpha", "beta", "beta_final", "momentum", "weight_decay"):
            if not getattr(cfg, name) >= 0:
                raise ValueError(f"config.{name} must be >= 0, got {getattr(cfg, name)}")
        if cfg.replace not in ("oldest", "lowest"):
            raise ValueError(f"config.replace must be 'oldest' or 'lowest', got {cfg.replace!r}")
        if cfg.weight_norm not in ("batch", "buffer", "mean"):
            raise ValueError(f"config.weight_norm must be 'batch', 'buffer' or 'mean', got {cfg.weight_norm!r}")
        if not 0 <= cfg.uniform_mix <= 1:
            raise ValueError(f"config.uniform_mix must be in [0, 1], got {cfg.uniform_mix!r}")
        if not isinstance(cfg.eval_every, int) or cfg.eval_every < 0:
            raise ValueError(f"config.eval_every must be an int >= 0, got {cfg.eval_every!r}")

    @property
    def num_iterations(self) -> int:
        return self.config.rounds

    # ----------------------------------------------------------------------------------------- round
    def _beta(self, it: int) -> float:
        cfg = self.config
        frac = it / max(1, cfg.rounds - 1)
        return cfg.beta + (cfg.beta_final - cfg.beta) * min(1.0, frac)

    def _synthesize(self) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        self.student.eval()
        self.gen_net.train()
        z = self.gen_net.sample_latent(cfg.synthesis_batch, generator=self.generator)
        if cfg.optimize_latent:
            z.requires_grad_(True)
            opt_z = torch.optim.Adam([z], lr=cfg.lr_g, betas=(0.5, 0.999))
        buf_labels = self.buffer.labels[: self.buffer.size]
        stats = {}
        for _ in range(cfg.g_steps):
            x = self.gen_net(z)
            self.bn_loss.clear()
            self.bn_loss.enabled = True
            t_logits = self.teacher(x)
            self.bn_loss.enabled = False
            l_bn = self.bn_loss.loss()
            s_logits = self.student(x)
            y_hat = t_logits.argmax(1)
            if cfg.use_phi:
                freq = class_frequencies(buf_labels, y_hat, t_logits.shape[1])
                phi = modulating_phi(t_logits, freq, cfg.gamma)
            else:
                phi = torch.ones(x.shape[0], device=x.device)
            l_ce = (phi * F.cross_entropy(t_logits, y_hat, reduction="none")).mean()
            kl = kd_loss(s_logits, t_logits, 1.0, reduction="none")
            if cfg.adv_agree_mask:
                kl = kl * (s_logits.argmax(1) == y_hat).float()
            l_adv = -kl.mean()
            loss = cfg.w_bn * l_bn + cfg.w_ce * l_ce + cfg.w_adv * l_adv
            self.opt_g.zero_grad(set_to_none=True)
            if cfg.optimize_latent:
                opt_z.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_g.step()
            if cfg.optimize_latent:
                opt_z.step()
            stats = dict(loss_g=float(loss.detach()), loss_bn=float(l_bn.detach()), loss_ce=float(l_ce.detach()),
                         loss_adv=float(l_adv.detach()),
                         phi_mean=float(phi.mean()))
        with torch.no_grad():
            x = self.gen_net(z.detach())
        return x, stats

    def _sample_weighted(self, n: int, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` replay slots and their importance weights ``[n]`` (prioritized replay, see the module doc)."""
        cfg, buf = self.config, self.buffer
        n_u = int(round(cfg.uniform_mix * n))
        slots_p, probs = buf.sample_prioritized(n - n_u, self.generator) if n_u < n else (None, None)
        if n_u == 0 and cfg.weight_norm == "buffer":
            return slots_p, buf.tree.importance_weights(probs, beta, size=buf.size).float()
        if n_u > 0:
            slots = buf.sample_uniform(n_u, self.generator)
            slots = slots if slots_p is None else torch.cat([slots_p, slots])
            # sampling probability of each drawn slot under the mixture
            pri = buf.tree_priority(buf.delta[: buf.size].double())
            probs = (1.0 - cfg.uniform_mix) * pri[slots] / pri.sum() + cfg.uniform_mix / buf.size
            p_min = (1.0 - cfg.uniform_mix) * pri.min() / pri.sum() + cfg.uniform_mix / buf.size
        else:
            slots = slots_p
            p_min = None
        from pydistill.ops.sum_tree import importance_weights as _iw

        probs = probs.to(self.device, torch.float64)
        if cfg.weight_norm == "mean":
            w = (buf.size * probs) ** (-float(beta))
            return slots, (w / w.mean()).float()
        mp = None if cfg.weight_norm == "batch" else p_min
        return slots, _iw(probs, beta, buf.size, mp).float()

    def step(self, it: int) -> dict:
        """One round: synthesis, buffer insert, ``kd_steps`` student steps. Returns scalar logs."""
        cfg = self.config
        t0 = time.perf_counter()
        x, stats = self._synthesize()
        with torch.no_grad():
            t_logits = self.teacher(x)
            self.student.eval()
            s_logits = self.student(x)
        self.buffer.add(x, t_logits, priority(t_logits, s_logits, cfg.priority_temperature))
        self.synthesized += x.shape[0]

        self.student.train()
        beta = self._beta(it)
        total_steps = cfg.rounds * cfg.kd_steps
        kd_sum, w_sum = 0.0, 0.0
        for _ in range(cfg.kd_steps):
            lr = 0.5 * cfg.lr_student * (1.0 + math.cos(math.pi * min(self.student_steps, total_steps) / total_steps))
            for g in self.opt_s.param_groups:
                g["lr"] = lr
            n = cfg.batch_size  # drawn with replacement in both modes
            if cfg.use_priority:
                slots, wts = self._sample_weighted(n, beta)
            else:
                slots = self.buffer.sample_uniform(n, self.generator)
                wts = torch.ones(n, device=self.device)
            xb, tb = self.buffer.images[slots], self.buffer.logits[slots]
            sb = self.student(xb)
            per = kd_loss(sb, tb, cfg.temperature, reduction="none")
            loss = (wts * per).mean()
            self.opt_s.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_s.step()
            self.student_steps += 1
            if cfg.use_priority:
                self.buffer.update(slots, priority(tb, sb, cfg.priority_temperature))
            kd_sum += float(loss.detach())
            w_sum += float(wts.mean())
        out = dict(stats)
        out.update(loss_kd=kd_sum / cfg.kd_steps, weight_mean=w_sum / cfg.kd_steps, beta=beta,
                   buffer=self.buffer.size, synthesized=self.synthesized,
                   priority_mean=float(self.buffer.delta[: self.buffer.size].mean()),
                   buffer_classes=int(torch.unique(self.buffer.labels[: self.buffer.size]).numel()),
                   round_s=time.perf_counter() - t0)
        if cfg.eval_every and (it + 1) % cfg.eval_every == 0:
            out["student_acc"] = self.student_accuracy()
        return out

    # ----------------------------------------------------------------------------------------- outputs
    def student_accuracy(self) -> float:
        """Student top-1 test accuracy (fraction)."""
        return test_accuracy(self.student, self.dataset)

    def teacher_accuracy(self) -> float:
        if self._teacher_acc is None:
            self._teacher_acc = test_accuracy(self.teacher, self.dataset)
        return self._teacher_acc

    def synthetic_set(self):
        """A ``SyntheticSet`` of up to ``ipc`` buffer images per teacher class (highest priority first), class-major,
        labelled with the teacher's argmax (int64)."""
        size = self.buffer.size
        meta = {"method": self.name, "ipc": self.ipc, "student": self.config.student,
                "teacher": self.teacher_meta.get("model"), "synthesized_samples": self.synthesized,
                "labels": "teacher argmax"}
        if size == 0:
            c, (h, w) = int(self.dataset.channel), _im_size(self.dataset)
            return SyntheticSet(torch.zeros(0, c, h, w, device=self.device),
                                torch.zeros(0, dtype=torch.long, device=self.device), None, meta)
        labels, delta = self.buffer.labels[:size], self.buffer.delta[:size]
        keep = []
        for c in range(int(self.dataset.num_classes)):
            idx = torch.nonzero(labels == c).flatten()
            if idx.numel():
                order = torch.argsort(delta[idx], descending=True, stable=True)
                keep.append(idx[order[: self.ipc]])
        keep = torch.cat(keep)
        keep = keep[torch.argsort(labels[keep], stable=True)]
        return SyntheticSet(self.buffer.images[keep].clone(), labels[keep].clone(), None, meta)

    def extra_metrics(self) -> dict:
        return dict(
            student_accuracy=self.student_accuracy(),
            teacher_accuracy=self.teacher_accuracy(),
            synthesized_samples=self.synthesized,
            student_steps=self.student_steps,
            buffer_capacity=self.buffer.capacity,
            student=self.config.student,
            teacher=self.teacher_meta.get("model"),
        )

    def student_state(self) -> dict:
        """The trained student as a loadable dict (architecture name, shapes, state_dict, accuracy)."""
        h, w = _im_size(self.dataset)
        return dict(format="pydistill-student-v1", model=self.config.student, channel=int(self.dataset.channel),
                    num_classes=int(self.dataset.num_classes), im_size=[h, w],
                    state_dict=self.student.state_dict(), synthesized_samples=self.synthesized)

    def save_student(self, path: str) -> str:
        """Write the student (``student_state()`` plus its test accuracy) atomically to ``path``."""
        save_checked(dict(self.student_state(), test_accuracy=self.student_accuracy()), path)
        return path

    def save_outputs(self, out_dir: str) -> list[str]:
        """Method-specific outputs of a finished run: ``out_dir/student.pt`` (see :meth:`save_student`)."""
        return [self.save_student(os.path.join(str(out_dir), STUDENT_FILE))]

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return dict(
            super().state_dict(),
            generator_net=self.gen_net.state_dict(),
            student=self.student.state_dict(),
            opt_g=self.opt_g.state_dict(),
            opt_s=self.opt_s.state_dict(),
            buffer=self.buffer.state_dict(),
            synthesized=self.synthesized,
            student_steps=self.student_steps,
        )

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.gen_net.load_state_dict(state["generator_net"])
        self.student.load_state_dict(state["student"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_s.load_state_dict(state["opt_s"])
        self.buffer.load_state_dict(state["buffer"])
        self.synthesized = int(state["synthesized"])
        self.student_steps = int(state["student_steps"])


# ----------------------------------------------------------------------------------------------- CLI
def _cli_teacher(args: argparse.Namespace) -> int:
    from pydistill.data import load_dataset

    import json

    from pydistill.utils import resolve_device

    try:
        model_kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError:
        model_kwargs = None
    if not isinstance(model_kwargs, dict):
        raise ValueError(f"--model-kwargs must be a JSON object such as '{{\"width\": 64}}', got {args.model_kwargs!r}")
    ds = load_dataset(args.dataset, args.data_root, device=resolve_device(args.device))
    meta = train_teacher(
        ds, args.out, model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, seed=args.seed, max_steps_per_epoch=args.max_steps_per_epoch,
        model_kwargs=model_kwargs,
    )
    print(f"teacher {meta['model']} on {args.dataset}: test accuracy {meta['test_accuracy']:.4f} -> {args.out}")
    return 0


def register_cli(subparsers) -> None:
    """Add ``pydistill teacher --dataset D --model M --out PATH [...]`` to an argparse subparsers object."""
    p = subparsers.add_parser("teacher", help="train a teacher for data-free KD (SSD-KD); resumable")
    p.add_argument("--dataset", required=True, help="dataset name (see pydistill.data.load_dataset)")
    p.add_argument("--model", default="ResNet34", help="architecture name (pydistill.models.get_network)")
    p.add_argument("--model-kwargs", default="{}", help='extra get_network keywords as JSON, e.g. \'{"width": 64}\'')
    p.add_argument("--out", required=True, help="teacher file to write (resumes when it exists)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap mini-batches per epoch (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--data-root", default=None,
                   help="dataset folder (default: $PYDISTILL_DATA, else ~/.cache/pydistill/datasets)")
    p.set_defaults(func=_cli_teacher)
