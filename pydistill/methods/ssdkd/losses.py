"""SSD-KD's losses: BN-statistics prior, phi-weighted task loss, adversarial loss, KD loss, replay priority.

- :class:`BNStatsLoss`: forward hooks on every BatchNorm layer of the (fixed) teacher. After a forward,
  ``loss()`` is ``sum_l ||mu_l - running_mean_l||_2 + ||var_l - running_var_l||_2`` with ``mu_l`` / ``var_l`` the
  per-channel mean and biased variance of the layer's *input*; with ``momentum m > 0`` (Fast-DFKD's ``bn_mmt``)
  the batch statistics are first blended with those of earlier rounds, ``(1 - m) stat + m stat_ema``, and
  :meth:`BNStatsLoss.update_momentum` (once per synthesis round) updates ``stat_ema = m stat_ema + (1 - m) stat``.
- :func:`modulating_phi`: SSD-KD's ``phi(x) = diversity(x) * (1 - p_T(x))^gamma`` over the replay buffer.
- :func:`task_loss`: ``mean_i phi_i CE(t(x_i), y_i)``; :func:`adversarial_loss`: ``-mean_i m_i KL(p_T || p_S)``.
- :func:`kd_loss`: ``T^2 KL(softmax(t/T) || softmax(s/T))``; :func:`priority`: ``KL(p_T || p_S)`` at T = 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BNStatsLoss",
    "bn_stats_distance",
    "kd_loss",
    "priority",
    "class_counts",
    "class_frequencies",
    "modulating_phi",
    "task_loss",
    "adversarial_loss",
]


def batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of ``x [N, C, ...]`` over every dim but 1: two ``[C]`` tensors."""
    if x.dim() < 2:
        raise ValueError(f"x must be [N, C, ...] with at least 2 dims, got shape {tuple(x.shape)}")
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)
    return flat.mean(dim=1), flat.var(dim=1, unbiased=False)


def bn_stats_distance(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """``||mean(x) - running_mean||_2 + ||var(x) - running_var||_2`` for one BN input ``x [N, C, ...]``.

    Mean and (biased) variance are per channel over every dim but 1. Returns a 0-dim tensor.
    """
    mean, var = batch_stats(x)
    return _stats_distance(mean, var, running_mean, running_var)


def _stats_distance(mean, var, running_mean, running_var) -> torch.Tensor:
    c = mean.shape[0]
    if running_mean.shape != (c,) or running_var.shape != (c,):
        raise ValueError(
            f"running_mean/running_var must have shape ({c},) to match x's channels, got "
            f"{tuple(running_mean.shape)} and {tuple(running_var.shape)}"
        )
    return torch.linalg.vector_norm(mean - running_mean.to(mean.dtype)) + torch.linalg.vector_norm(
        var - running_var.to(var.dtype)
    )


class BNStatsLoss:
    """Forward hooks on every ``BatchNorm{1,2,3}d`` of ``model`` that measure the BN-statistics distance.

    Usage::

        bn = BNStatsLoss(teacher, momentum=0.9)   # registers the hooks
        logits = teacher(x)            # each BN layer records the distance of its input's statistics
        loss = bn.loss()               # sum over layers, differentiable w.r.t. x
        bn.update_momentum()           # end of a synthesis round: fold the last batch's statistics in
        bn.remove()                    # or use it as a context manager

    ``momentum = m`` (Fast-DFKD's ``bn_mmt``; 0 = off): the distance compares ``(1 - m) stat(x) + m ema`` with the
    running statistics once an ``ema`` exists (after the first :meth:`update_momentum`), and
    ``update_momentum`` sets ``ema = m ema + (1 - m) stat(last batch)`` (the first call: ``ema = stat``).
    While ``enabled`` is False the hooks record nothing. Layers without running statistics are skipped; with no
    BN layer at all ``loss()`` is a zero tensor (the BN prior is then inactive).
    """

    def __init__(self, model: nn.Module, momentum: float = 0.0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.enabled = True
        self._values: list[torch.Tensor] = []
        self._handles = []
        self.layers: list[nn.Module] = []
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                self.layers.append(m)
                self._handles.append(m.register_forward_hook(self._hook))
        self._index = {id(m): i for i, m in enumerate(self.layers)}
        self._last: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self.ema: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self._device = next((p.device for p in model.parameters()), torch.device("cpu"))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def _hook(self, module, inputs, output):
        if not self.enabled:
            return
        i = self._index[id(module)]
        mean, var = batch_stats(inputs[0])
        self._last[i] = (mean.detach(), var.detach())
        if self.momentum > 0 and self.ema[i] is not None:
            m = self.momentum
            mean = (1 - m) * mean + m * self.ema[i][0]
            var = (1 - m) * var + m * self.ema[i][1]
        self._values.append(_stats_distance(mean, var, module.running_mean, module.running_var))

    def update_momentum(self) -> None:
        """Fold the statistics of the last recorded batch into the moving averages (no-op at momentum 0)."""
        if self.momentum == 0:
            return
        m = self.momentum
        for i, last in enumerate(self._last):
            if last is None:
                continue
            old = self.ema[i]
            self.ema[i] = last if old is None else (m * old[0] + (1 - m) * last[0], m * old[1] + (1 - m) * last[1])

    def state_dict(self) -> dict:
        """``{"ema": [[mean, var] or [], ...]}`` (per layer; empty before the first update)."""
        return {"ema": [list(e) if e is not None else [] for e in self.ema]}

    def load_state_dict(self, state: dict) -> None:
        ema = state["ema"]
        if len(ema) != len(self.layers):
            raise ValueError(f"BN momentum state has {len(ema)} layers, the teacher has {len(self.layers)}")
        self.ema = [(e[0].to(self._device), e[1].to(self._device)) if len(e) else None for e in ema]

    def clear(self) -> None:
        """Forget the values recorded by earlier forwards."""
        self._values = []

    def loss(self, *, clear: bool = True) -> torch.Tensor:
        """Sum of the per-layer distances recorded since the last ``clear`` (0-dim tensor)."""
        if not self._values:
            out = torch.zeros((), device=self._device)
        else:
            out = torch.stack(self._values).sum()
        if clear:
            self.clear()
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _check_logits(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a [N, K] logits tensor, got {shape}")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 20.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Hinton KD loss ``T^2 * KL(softmax(t/T) || softmax(s/T))``.

    Args:
        student_logits, teacher_logits: ``[N, K]``.
        temperature: ``T > 0``.
        reduction: ``"none"`` gives ``[N]`` per-sample values, ``"mean"`` their mean, ``"sum"`` their sum.
    """
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape, got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=1)
    per = (log_p.exp() * (log_p - log_q)).sum(dim=1) * (temperature * temperature)
    if reduction == "none":
        return per
    return per.mean() if reduction == "mean" else per.sum()


def priority(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """SSD-KD priority ``delta(x) = KL(p_T(.|x) || p_S(.|x))`` per sample, ``[N]``, detached, >= 0.

    With ``temperature != 1`` both distributions are softened by ``T`` (no ``T^2`` factor).
    """
    with torch.no_grad():
        d = kd_loss(student_logits.detach(), teacher_logits.detach(), temperature, reduction="none")
        return (d / (temperature * temperature)).clamp_min(0.0)


def class_counts(buffer_labels: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    """``n_B[c]``: number of buffer samples whose teacher-predicted class is ``c``, ``[K]`` float (zeros if empty)."""
    if buffer_labels is None or buffer_labels.numel() == 0:
        return torch.zeros(num_classes)
    labels = buffer_labels.long().flatten()
    if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    return torch.bincount(labels, minlength=num_classes).float()


def class_frequencies(buffer_labels: torch.Tensor | None, batch_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class frequencies ``f[c] = (n_B(c) + n_batch(c)) / (|B| + N)`` over the buffer plus the new batch, ``[K]``.

    Used by ``diversity="ratio"`` of :func:`modulating_phi` (our earlier form, kept as an option).
    """
    if batch_labels.dim() != 1 or batch_labels.numel() == 0:
        raise ValueError(f"batch_labels must be a non-empty 1-D tensor, got shape {tuple(batch_labels.shape)}")
    labels = batch_labels.long()
    if buffer_labels is not None and buffer_labels.numel() > 0:
        labels = torch.cat([labels, buffer_labels.long().flatten().to(labels.device)])
    return class_counts(labels, num_classes).to(labels.device) / labels.numel()


def modulating_phi(
    teacher_logits: torch.Tensor,
    buffer_counts: torch.Tensor,
    gamma: float = 2.0,
    *,
    diversity: str = "count",
    use_diversity: bool = True,
    use_difficulty: bool = True,
    classes: torch.Tensor | None = None,
) -> torch.Tensor:
    """SSD-KD modulating function ``phi(x) = diversity(x) * (1 - p_T(x))^gamma``, ``[N]``, detached, in [0, 1].

    ``c(x)`` is the class phi is taken for: ``classes`` ``[N]`` when given (the task loss's target classes, the
    default of :class:`Config`, ``phi_class="target"``), else the teacher's predicted class ``argmax_c t_c(x)``
    (``phi_class="predicted"``). ``p_T(x) = softmax(t(x))[c(x)]`` (focal loss's p_t: the difficulty-aware term is
    large where the teacher does not yet see x as c(x)), and ``n_B[c(x)]`` below counts the buffer samples
    sharing c(x).

    - ``diversity="count"`` (default; the paper's form as we read it): ``buffer_counts`` holds ``n_B[c]``, the
      number of buffer samples of (teacher-predicted) class ``c`` (:func:`class_counts`), and
      ``diversity(x) = 1 - n_B[c(x)] / |B|`` (``|B| = sum n_B``): a class that fills the buffer gets 0, an
      absent one 1; an empty buffer gives 1.
    - ``diversity="ratio"`` (our earlier form): ``buffer_counts`` holds class frequencies ``f``
      (:func:`class_frequencies`) and ``diversity(x) = min(1, 1 / (K f[c(x)]))`` (1 where ``f = 0``).

    Either factor can be switched off (replaced by 1).
    """
    _check_logits("teacher_logits", teacher_logits)
    k = teacher_logits.shape[1]
    if buffer_counts.shape != (k,):
        raise ValueError(
            f"buffer_counts must have shape ({k},) (one value per class), got {tuple(buffer_counts.shape)}"
        )
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if diversity not in ("count", "ratio"):
        raise ValueError(f"diversity must be 'count' or 'ratio', got {diversity!r}")
    with torch.no_grad():
        prob = F.softmax(teacher_logits.detach().float(), dim=1)
        conf, pred = prob.max(dim=1)
        if classes is not None:
            if classes.shape != conf.shape:
                raise ValueError(f"classes must have shape ({conf.shape[0]},), got {tuple(classes.shape)}")
            pred = classes.to(prob.device).long()
            conf = prob.gather(1, pred.view(-1, 1)).squeeze(1)
        phi = torch.ones_like(conf)
        if use_diversity:
            counts = buffer_counts.to(conf.device, torch.float32)
            if diversity == "count":
                total = counts.sum()
                if float(total) > 0:
                    phi = phi * (1.0 - counts[pred] / total)
            else:
                f = counts[pred]
                phi = phi * torch.where(f > 0, (1.0 / (k * f.clamp_min(1e-12))).clamp(max=1.0), torch.ones_like(f))
        if use_difficulty:
            phi = phi * (1.0 - conf).clamp_min(0.0).pow(gamma)
        return phi


def task_loss(teacher_logits: torch.Tensor, targets: torch.Tensor, phi: torch.Tensor | None = None) -> torch.Tensor:
    """phi-weighted task (one-hot) loss ``mean_i phi_i CE(t(x_i), y_i)`` (phi = 1 when None); 0-dim."""
    ce = F.cross_entropy(teacher_logits, targets, reduction="none")
    return (ce if phi is None else phi * ce).mean()


def adversarial_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, agree_mask: bool = True):
    """Fast-DFKD's adversarial term ``-mean_i m_i KL(p_T(x_i) || p_S(x_i))`` (T = 1); ``m_i = 1`` where student
    and teacher predict the same class (``agree_mask``) else 1 for all; 0-dim, differentiable w.r.t. both."""
    kl = kd_loss(student_logits, teacher_logits, 1.0, reduction="none")
    if agree_mask:
        kl = kl * (student_logits.argmax(1) == teacher_logits.argmax(1)).float()
    return -kl.mean()
