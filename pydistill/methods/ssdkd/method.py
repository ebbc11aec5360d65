"""SSD-KD (He Liu et al., CVPR 2024) on its base, Fast-DFKD's meta-learned inversion (zju-vipa/Fast-Datafree).

Algorithm 1 as :meth:`SSDKD.step` runs it, one round ``i`` of ``rounds``:

1. **Data inversion** (:meth:`SSDKD.invert`; :class:`~pydistill.methods.ssdkd.generator.MetaGenerator`): clone
   the shared generator prior, draw latents ``z``, and take ``g_steps`` Adam steps on the clone and ``z`` of::

       w_bn * L_BN(aug(x))  +  w_ce * mean_j phi(x_j) CE(t(aug(x_j)), y_j)  +  w_adv * L_adv(aug(x))

   ``x = G'(z)``, ``aug`` = random crop with padding (+ flip for 3-channel sets), ``L_BN`` the BN-statistics
   distance with running-statistics momentum, ``y`` the round's targets (random classes, as the base),
   ``phi = diversity x (1 - p_T)^gamma`` over the replay buffer (SSD-KD's modulating function; 1 when
   ``use_phi=False``), ``L_adv = -mean m_j KL(p_T || p_S)`` (0 during the warm-up). Then the prior takes a
   first-order meta step (FOMAML or Reptile) and the BN momentum statistics are updated.
2. **Buffer update**: the round's images go into the fixed-size dynamic buffer ``B`` with priority
   ``delta = w_{-1} KL(f_t || f_s) = KL(f_t || f_s)`` (``w_{-1} = 1``).
3. **Distillation** (``kd_steps`` student SGD steps; none during the ``warmup`` rounds): draw a batch from ``B``
   with ``P(x) = (delta + eps)^alpha / sum`` (uniform when ``use_priority=False``), augment it, and minimise
   ``mean_j w_j T^2 KL(f_t(x_j)/T || f_s(x_j)/T)`` with ``w = (|B| P)^-beta / max_B`` (beta annealed
   ``beta -> beta_final``); then refresh the drawn samples' priorities ``delta <- w * KL(f_t || f_s)`` (the
   step's own forward, as in prioritized replay).

``use_phi=False, use_priority=False`` is the Fast-DFKD-style baseline (the base with SSD-KD's two modules off).
Every default cites its source in :class:`Config`; the CPU presets for digits/MNIST are ours.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pydistill.evaluate import test_accuracy
from pydistill.methods.base import Method
from pydistill.methods.ssdkd.generator import Generator, MetaGenerator, reset_first_layer
from pydistill.methods.ssdkd.losses import (
    BNStatsLoss,
    adversarial_loss,
    class_counts,
    class_frequencies,
    kd_loss,
    modulating_phi,
    priority,
    task_loss,
)
from pydistill.methods.ssdkd.replay import ReplayBuffer
from pydistill.methods.ssdkd.teacher import _im_size, augment, default_augment_args, load_teacher
from pydistill.models import seeded_network
from pydistill.synthetic import SyntheticSet
from pydistill.utils import save_checked

__all__ = ["Config", "SSDKD", "STUDENT_FILE"]

STUDENT_FILE = "student.pt"

# fast_cifar.sh = scripts/fast_cifar.sh, fast_meta.py = datafree/synthesis/fast_meta.py,
# datafree_kd.py: files of zju-vipa/Fast-Datafree (the base); "paper" = SSD-KD (CVPR 2024).


@dataclass
class Config:
    """SSD-KD hyperparameters: the base's published CIFAR setting (fast_cifar.sh, ResNet-34 teacher) + SSD-KD's."""

    teacher: Any = None  # path of a teacher file from train_teacher (or an nn.Module); required
    student: str = "ResNet18BN"  # student architecture (fast_cifar.sh: resnet18)
    student_kwargs: dict = field(default_factory=dict)  # extra get_network keywords (e.g. width)
    rounds: int = 220  # synthesis rounds = epochs (fast_cifar.sh --epochs 220, one round per epoch: ep_steps/kd_steps)
    warmup: int = 20  # first rounds without adversarial term and without KD (fast_cifar.sh --warmup 20)
    synthesis_batch: int = 256  # images per round (datafree_kd.py: synthesis_batch_size = batch_size 256)
    g_steps: int = 2  # inner generator steps a round (fast_cifar.sh --g_steps 2; Fast-10 row: 10, lr_g 2e-3, lr_z 0.01)
    kd_steps: int = 400  # student steps per round (fast_cifar.sh --kd_steps 400)
    batch_size: int = 256  # student mini-batch (fast_cifar.sh --batch_size 256)
    buffer_size: int | None = None  # replay buffer capacity; None = buffer_fraction x training-set size
    buffer_fraction: float = 0.1  # paper: buffer of 10% of the original data size (5,000 images for CIFAR)
    replace: str = "oldest"  # full buffer: "oldest" (ring, dynamic buffer) or "lowest" priority replaced
    latent_dim: int = 256  # datafree_kd.py: nz 256
    gen_width: int = 64  # datafree_kd.py: ngf 64
    lr_g: float = 5e-3  # inner Adam lr of the generator clone (fast_cifar.sh --lr_g 5e-3), betas (0.5, 0.999)
    lr_z: float = 0.015  # inner Adam lr of the latent codes (fast_cifar.sh --lr_z 0.015)
    meta: str = "fomaml"  # first-order meta update of the prior: "fomaml" (fast_cifar.sh --is_maml 1) or "reptile"
    meta_optimizer: str = "adam"  # fast_meta.py: Adam (0.5, 0.999), lr lr_g * g_steps; "sgd" for plain steps
    reset_l0_round: int | None = 140  # re-init the generator's first layer here (fast_meta.py: epoch 120 + warmup)
    w_bn: float = 10.0  # BN-statistics weight (fast_cifar.sh --bn 10)
    bn_momentum: float = 0.9  # running-statistics momentum of the BN hooks (fast_cifar.sh --bn_mmt 0.9)
    w_ce: float = 0.5  # one-hot (task) loss weight (fast_cifar.sh --oh 0.5)
    w_adv: float = 1.33  # adversarial weight (fast_cifar.sh --adv 1.33 for the ResNet-34 teacher; 1.0/1.1 others)
    adv_agree_mask: bool = True  # adversarial KL only where student and teacher agree (fast_meta.py)
    task_targets: str = "random"  # task-loss labels: "random" classes per round (fast_meta.py) or teacher "argmax"
    augment: bool = True  # crop + pad (+ flip) before the teacher and in KD (fast_meta.py, datafree_kd.py)
    temperature: float = 20.0  # KD temperature T, loss x T^2 (fast_cifar.sh --T 20)
    lr_student: float = 0.2  # student SGD lr (fast_cifar.sh --lr 0.2), cosine over the KD rounds ...
    lr_student_min: float = 2e-4  # ... down to this (datafree_kd.py: CosineAnnealingLR(200, eta_min=2e-4))
    momentum: float = 0.9  # student SGD momentum (datafree_kd.py)
    weight_decay: float = 1e-4  # student SGD weight decay (datafree_kd.py default 1e-4; fast_cifar.sh keeps it)
    use_phi: bool = True  # SSD-KD modulating function on the task loss (False: phi = 1)
    diversity: str = "count"  # phi's diversity term: "count" 1 - n_B(c_T)/|B| (paper, README), "ratio" (ours)
    gamma: float = 2.0  # focal exponent of (1 - p_T(x))^gamma (not stated in the paper; focal loss's default)
    phi_class: str = "target"  # phi's class c(x): the task target (ours, README); "predicted": teacher argmax
    use_priority: bool = True  # SSD-KD priority sampling with IS weights (False: uniform replay, w = 1)
    alpha: float = 0.6  # P ∝ (delta + eps)^alpha (not stated in the paper; prioritized replay's 0.6)
    priority_eps: float = 1e-3  # eps in (delta + eps)^alpha
    beta: float = 0.4  # IS exponent at the first KD round (prioritized replay's 0.4; not stated in the paper) ...
    beta_final: float = 1.0  # ... annealed linearly to this at the last round (prioritized replay's 1.0)
    weight_norm: str = "buffer"  # IS weights / max over the buffer (paper); "batch" max or batch "mean" (ours)
    tree_backend: str = "auto"  # SumTree backend: "auto", "cpp", "cuda" or "reference"
    eval_every: int = 0  # every this many rounds, report the student's test accuracy in step() (0: never)

    @classmethod
    def for_dataset(cls, name: str, ipc: int | None = None) -> "Config":
        """Defaults for ``name``: the published CIFAR setting; our CPU-sized presets for ``digits`` and ``mnist``."""
        return cls(**_CPU_PRESETS.get(str(name).lower(), {}))


# Ours (not published): CPU-sized budgets that keep the base's ratio of student steps to synthesized images
# (400 steps per 256 images, about 1.6 steps per image) and its warm-up share (20 of 220 rounds); student
# ConvNet width 32 (lr 0.05, measured stable; 0.2 diverged on digits), no generator reset.
_CPU_PRESETS = {
    # digits: 1,442 train images -> buffer 145; 110 rounds x 32 images = 3,520 synthesized, 100 x 50 student steps
    "digits": dict(
        student="ConvNetW32",
        rounds=110,
        warmup=10,
        synthesis_batch=32,
        batch_size=64,
        kd_steps=50,
        lr_student=0.05,
        reset_l0_round=None,
    ),
    # mnist: 60,000 train images -> buffer 6,000; 110 rounds x 64 images = 7,040 synthesized, 100 x 100 steps
    "mnist": dict(
        student="ConvNetW32",
        rounds=110,
        warmup=10,
        synthesis_batch=64,
        batch_size=128,
        kd_steps=100,
        lr_student=0.05,
        reset_l0_round=None,
    ),
}


class SSDKD(Method):
    """SSD-KD data-free distillation (see the module docstring); ``num_iterations = config.rounds``.

    ``synthetic_set()`` returns up to ``ipc`` buffer images per teacher class (highest priority first) with the
    teacher's labels. ``extra_metrics()``: student and teacher test accuracy, synthesized-sample count.
    ``save_outputs(out_dir)`` writes ``out_dir/student.pt``; ``student_state()`` / ``save_student(path)``.
    """

    Config = Config
    name = "ssdkd"
    uses_real_images = False  # data-free: --ipc picks buffer images, never real ones (no class-size check)

    def __init__(self, dataset, ipc: int, *, config: Config | dict | None = None, device="cpu", seed: int = 0):
        super().__init__(dataset, ipc, config=config, device=device, seed=seed)
        cfg = self.config
        self._validate(cfg)
        dev = self.device
        dataset = self.dataset
        h, w = _im_size(dataset)
        k = int(dataset.num_classes)

        # teacher (fixed) with BN-statistics hooks
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
        self.bn_loss = BNStatsLoss(self.teacher, momentum=cfg.bn_momentum)
        self.bn_loss.enabled = False

        # student, meta-learned generator, optimizer
        self.student = seeded_network(
            cfg.student, dataset.channel, dataset.num_classes, (h, w), seed + 1, device=dev, **dict(cfg.student_kwargs)
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 2)
            prior = Generator(
                cfg.latent_dim, int(dataset.channel), (h, w), dataset.mean, dataset.std, width=cfg.gen_width
            ).to(dev)
        self.gen = MetaGenerator(
            prior, lr_g=cfg.lr_g, lr_z=cfg.lr_z, g_steps=cfg.g_steps, meta=cfg.meta, meta_optimizer=cfg.meta_optimizer
        )
        self.opt_s = torch.optim.SGD(
            self.student.parameters(), lr=cfg.lr_student, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.aug_args = default_augment_args(dataset)

        # dynamic replay buffer
        n_train = int(dataset.x_train.shape[0])
        cap = cfg.buffer_size if cfg.buffer_size is not None else max(1, math.ceil(cfg.buffer_fraction * n_train))
        self.buffer = ReplayBuffer(
            cap,
            (int(dataset.channel), h, w),
            k,
            alpha=cfg.alpha,
            eps=cfg.priority_eps,
            replace=cfg.replace,
            device=dev,
            backend=cfg.tree_backend,
        )
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
        if not isinstance(cfg.warmup, int) or isinstance(cfg.warmup, bool) or not 0 <= cfg.warmup < cfg.rounds:
            raise ValueError(f"config.warmup must be an int in [0, rounds={cfg.rounds}), got {cfg.warmup!r}")
        if cfg.buffer_size is not None and (not isinstance(cfg.buffer_size, int) or cfg.buffer_size < 1):
            raise ValueError(f"config.buffer_size must be a positive int or None, got {cfg.buffer_size!r}")
        if not 0 < cfg.buffer_fraction <= 1:
            raise ValueError(f"config.buffer_fraction must be in (0, 1], got {cfg.buffer_fraction}")
        for name in ("lr_g", "lr_z", "temperature", "lr_student", "priority_eps"):
            if not getattr(cfg, name) > 0:
                raise ValueError(f"config.{name} must be > 0, got {getattr(cfg, name)}")
        for name in (
            "w_bn",
            "w_ce",
            "w_adv",
            "gamma",
            "alpha",
            "beta",
            "beta_final",
            "momentum",
            "weight_decay",
            "lr_student_min",
        ):
            if not getattr(cfg, name) >= 0:
                raise ValueError(f"config.{name} must be >= 0, got {getattr(cfg, name)}")
        if not 0 <= cfg.bn_momentum < 1:
            raise ValueError(f"config.bn_momentum must be in [0, 1), got {cfg.bn_momentum}")
        choices = dict(
            replace=("oldest", "lowest"),
            weight_norm=("buffer", "batch", "mean"),
            meta=("fomaml", "reptile"),
            meta_optimizer=("adam", "sgd"),
            task_targets=("random", "argmax"),
            diversity=("count", "ratio"),
            phi_class=("target", "predicted"),
        )
        for name, allowed in choices.items():
            if getattr(cfg, name) not in allowed:
                raise ValueError(f"config.{name} must be one of {allowed}, got {getattr(cfg, name)!r}")
        if cfg.reset_l0_round is not None and (not isinstance(cfg.reset_l0_round, int) or cfg.reset_l0_round < 0):
            raise ValueError(f"config.reset_l0_round must be an int >= 0 or None, got {cfg.reset_l0_round!r}")
        if not isinstance(cfg.eval_every, int) or cfg.eval_every < 0:
            raise ValueError(f"config.eval_every must be an int >= 0, got {cfg.eval_every!r}")

    @property
    def num_iterations(self) -> int:
        return self.config.rounds

    # ----------------------------------------------------------------------------------------- schedules
    def in_warmup(self, it: int) -> bool:
        """Round ``it`` is a warm-up round: no adversarial term, no KD (the base's ``--warmup``)."""
        return it < self.config.warmup

    def _kd_round(self, it: int) -> tuple[int, int]:
        """``(j, J)``: index of round ``it`` among the KD rounds and their number."""
        cfg = self.config
        return it - cfg.warmup, cfg.rounds - cfg.warmup

    def _beta(self, it: int) -> float:
        cfg = self.config
        j, n = self._kd_round(it)
        frac = j / max(1, n - 1)
        return cfg.beta + (cfg.beta_final - cfg.beta) * min(1.0, max(0.0, frac))

    def _lr(self, it: int) -> float:
        """Student lr of KD round ``it``: cosine from ``lr_student`` to ``lr_student_min`` over the KD rounds."""
        cfg = self.config
        j, n = self._kd_round(it)
        return cfg.lr_student_min + 0.5 * (cfg.lr_student - cfg.lr_student_min) * (1 + math.cos(math.pi * j / n))

    def _aug(self, x: torch.Tensor) -> torch.Tensor:
        return augment(x, self.generator, **self.aug_args) if self.config.augment else x

    # ----------------------------------------------------------------------------------------- Algorithm 1
    def step(self, it: int) -> dict:
        """Round ``it`` of Algorithm 1: inversion, buffer update, ``kd_steps`` prioritized KD steps."""
        cfg = self.config
        t0 = time.perf_counter()
        warm = self.in_warmup(it)
        if cfg.reset_l0_round is not None and it == cfg.reset_l0_round:
            reset_first_layer(self.gen.prior, self.generator)
        x, logs = self.invert(adversarial=not warm)  # 1. data inversion (meta generator)
        self.buffer_update(x)  # 2. dynamic buffer, delta = KL(t || s)
        logs.update(loss_kd=0.0, weight_mean=0.0, beta=0.0, lr=0.0)
        if not warm:  # 3. priority-sampled distillation
            logs.update(self.distill(it))
        logs.update(
            warmup=float(warm),
            buffer=self.buffer.size,
            synthesized=self.synthesized,
            priority_mean=float(self.buffer.delta[: self.buffer.size].mean()),
            buffer_classes=int(torch.unique(self.buffer.labels[: self.buffer.size]).numel()),
            round_s=time.perf_counter() - t0,
        )
        if cfg.eval_every and (it + 1) % cfg.eval_every == 0:
            logs["student_acc"] = self.student_accuracy()
        return logs

    def round_targets(self, n: int) -> torch.Tensor | None:
        """Task-loss labels of a round: ``n`` random classes (the base), or None for the teacher's argmax."""
        if self.config.task_targets == "argmax":
            return None
        k = int(self.dataset.num_classes)
        return torch.randint(0, k, (n,), generator=self.generator, device=self.generator.device).to(self.device)

    def phi(self, t_logits: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """SSD-KD's modulating function of a batch over the current buffer (1 when ``use_phi=False``), ``[N]``;
        ``targets``: the task loss's labels (phi's class when ``phi_class="target"``)."""
        cfg = self.config
        if not cfg.use_phi:
            return torch.ones(t_logits.shape[0], device=t_logits.device)
        k = t_logits.shape[1]
        labels = self.buffer.labels[: self.buffer.size]
        classes = targets if cfg.phi_class == "target" and targets is not None else None
        if cfg.diversity == "count":
            counts = class_counts(labels, k)
        else:
            counts = class_frequencies(labels, t_logits.argmax(1) if classes is None else classes, k)
        return modulating_phi(t_logits, counts, cfg.gamma, diversity=cfg.diversity, classes=classes)

    def invert(self, *, adversarial: bool) -> tuple[torch.Tensor, dict]:
        """One meta-generator round: ``(images [synthesis_batch, C, H, W] detached, logs)``."""
        cfg = self.config
        self.student.eval()
        z = self.gen.prior.sample_latent(cfg.synthesis_batch, generator=self.generator)
        targets = self.round_targets(cfg.synthesis_batch)

        def inversion_loss(x):
            xa = self._aug(x)
            self.bn_loss.clear()
            self.bn_loss.enabled = True
            t_logits = self.teacher(xa)
            self.bn_loss.enabled = False
            l_bn = self.bn_loss.loss()
            y = t_logits.argmax(1) if targets is None else targets
            phi = self.phi(t_logits, y)
            l_ce = task_loss(t_logits, y, phi)
            if adversarial and cfg.w_adv > 0:
                l_adv = adversarial_loss(self.student(xa), t_logits, cfg.adv_agree_mask)
            else:
                l_adv = torch.zeros((), device=x.device)
            loss = cfg.w_bn * l_bn + cfg.w_ce * l_ce + cfg.w_adv * l_adv
            return loss, dict(
                loss_bn=float(l_bn.detach()),
                loss_ce=float(l_ce.detach()),
                loss_adv=float(l_adv.detach()),
                phi_mean=float(phi.mean()),
            )

        x, logs, _ = self.gen.round(z, inversion_loss)
        self.bn_loss.update_momentum()
        return x, logs

    def buffer_update(self, x: torch.Tensor) -> None:
        """Insert a round's images with their teacher logits and priority ``delta = 1 * KL(f_t || f_s)``."""
        with torch.no_grad():
            t_logits = self.teacher(x)
            self.student.eval()
            s_logits = self.student(x)
        self.buffer.add(x, t_logits, priority(t_logits, s_logits))
        self.synthesized += x.shape[0]

    def distill(self, it: int) -> dict:
        """``kd_steps`` student steps on priority-sampled, IS-weighted, augmented buffer batches."""
        cfg = self.config
        beta, lr = self._beta(it), self._lr(it)
        for g in self.opt_s.param_groups:
            g["lr"] = lr
        self.student.train()
        kd_sum, w_sum = 0.0, 0.0
        for _ in range(cfg.kd_steps):
            slots, wts = self.buffer.sample(
                cfg.batch_size, self.generator, prioritized=cfg.use_priority, beta=beta, norm=cfg.weight_norm
            )
            xb = self._aug(self.buffer.images[slots])
            with torch.no_grad():
                tb = self.teacher(xb)
            sb = self.student(xb)
            loss = (wts * kd_loss(sb, tb, cfg.temperature, reduction="none")).mean()
            self.opt_s.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_s.step()
            self.student_steps += 1
            if cfg.use_priority:  # delta_i = w_{i-1} * KL(f_t || f_s): this step's weight times its KL
                self.buffer.update(slots, wts * priority(tb, sb))
            kd_sum += float(loss.detach())
            w_sum += float(wts.mean())
        return dict(loss_kd=kd_sum / cfg.kd_steps, weight_mean=w_sum / cfg.kd_steps, beta=beta, lr=lr)

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
        meta = {
            "method": self.name,
            "ipc": self.ipc,
            "student": self.config.student,
            "teacher": self.teacher_meta.get("model"),
            "synthesized_samples": self.synthesized,
            "labels": "teacher argmax",
        }
        if size == 0:
            c, (h, w) = int(self.dataset.channel), _im_size(self.dataset)
            return SyntheticSet(
                torch.zeros(0, c, h, w, device=self.device),
                torch.zeros(0, dtype=torch.long, device=self.device),
                None,
                meta,
            )
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
        return dict(
            format="pydistill-student-v1",
            model=self.config.student,
            channel=int(self.dataset.channel),
            num_classes=int(self.dataset.num_classes),
            im_size=[h, w],
            state_dict=self.student.state_dict(),
            synthesized_samples=self.synthesized,
        )

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
            meta_generator=self.gen.state_dict(),
            bn_momentum=self.bn_loss.state_dict(),
            student=self.student.state_dict(),
            opt_s=self.opt_s.state_dict(),
            buffer=self.buffer.state_dict(),
            synthesized=self.synthesized,
            student_steps=self.student_steps,
        )

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "meta_generator" not in state:
            raise ValueError(
                "this SSD-KD checkpoint predates the meta-learned generator (no 'meta_generator'); "
                "start the run in a new output folder"
            )
        self.gen.load_state_dict(state["meta_generator"])
        self.bn_loss.load_state_dict(state["bn_momentum"])
        self.student.load_state_dict(state["student"])
        self.opt_s.load_state_dict(state["opt_s"])
        self.buffer.load_state_dict(state["buffer"])
        self.synthesized = int(state["synthesized"])
        self.student_steps = int(state["student_steps"])
