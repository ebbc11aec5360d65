"""Loss pieces of data-free knowledge distillation (Fast-DFKD inversion, SSD-KD).

- :class:`BNStatsLoss`: forward hooks on every BatchNorm layer of a (fixed) teacher; after a forward pass,
  ``loss()`` is ``sum_l ||mu_l(x) - running_mean_l||_2 + ||var_l(x) - running_var_l||_2`` where ``mu_l``/``var_l``
  are the per-channel mean and biased variance of the layer's *input* over the batch and spatial dims.
  A teacher without BatchNorm layers gives a loss of exactly 0 (the term then does nothing).
- :func:`kd_loss`: temperature-scaled ``T^2 * KL(softmax(t/T) || softmax(s/T))`` per sample or averaged.
- :func:`priority`: the SSD-KD replay priority ``delta(x) = KL(p_T || p_S)`` (temperature 1 by default).
- :func:`class_frequencies`, :func:`modulating_phi`: the SSD-KD modulating function
  ``phi(x) = diversity(x) * difficulty(x)`` (definitions in :func:`modulating_phi`).
- :func:`importance_weights`: ``w = (|B| P)^-beta / max w``.
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
    "class_frequencies",
    "modulating_phi",
    "importance_weights",
]


def bn_stats_distance(
    x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor
) -> torch.Tensor:
    """``||mean(x) - running_mean||_2 + ||var(x) - running_var||_2`` for one BN input ``x [N, C, ...]``.

    Mean and (biased) variance are per channel over every dim but 1. Returns a 0-dim tensor.
    """
    if x.dim() < 2:
        raise ValueError(f"x must be [N, C, ...] with at least 2 dims, got shape {tuple(x.shape)}")
    c = x.shape[1]
    if running_mean.shape != (c,) or running_var.shape != (c,):
        raise ValueError(
            f"running_mean/running_var must have shape ({c},) to match x's channels, got "
            f"{tuple(running_mean.shape)} and {tuple(running_var.shape)}"
        )
    flat = x.transpose(0, 1).reshape(c, -1)
    mean = flat.mean(dim=1)
    var = flat.var(dim=1, unbiased=False)
    return torch.linalg.vector_norm(mean - running_mean.to(mean.dtype)) + torch.linalg.vector_norm(
        var - running_var.to(var.dtype)
    )


class BNStatsLoss:
    """Forward hooks on every ``BatchNorm{1,2,3}d`` of ``model`` that measure the BN-statistics distance.

    Usage::

        bn = BNStatsLoss(teacher)      # registers the hooks
        logits = teacher(x)            # each BN layer records bn_stats_distance(its input, its running stats)
        loss = bn.loss()               # sum over layers, differentiable w.r.t. x
        bn.remove()                    # or use it as a context manager

    While ``enabled`` is False the hooks record nothing (use for teacher forwards that need no BN term).
    Layers without running statistics (``track_running_stats=False``) are skipped. With no BN layer at all,
    ``loss()`` returns a zero tensor: document that the BN prior is then inactive.
    """

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.enabled = True
        self._values: list[torch.Tensor] = []
        self._handles = []
        self.layers: list[nn.Module] = []
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                self.layers.append(m)
                self._handles.append(m.register_forward_hook(self._hook))
        self._device = next((p.device for p in model.parameters()), torch.device("cpu"))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def _hook(self, module, inputs, output):
        if not self.enabled:
            return
        self._values.append(bn_stats_distance(inputs[0], module.running_mean, module.running_var))

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


def priority(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """SSD-KD priority ``delta(x) = KL(p_T(.|x) || p_S(.|x))`` per sample, ``[N]``, detached, >= 0.

    With ``temperature != 1`` both distributions are softened by ``T`` (no ``T^2`` factor).
    """
    with torch.no_grad():
        d = kd_loss(student_logits.detach(), teacher_logits.detach(), temperature, reduction="none")
        return (d / (temperature * temperature)).clamp_min(0.0)


def class_frequencies(
    buffer_labels: torch.Tensor | None, batch_labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Class frequencies ``f[c] = (n_B(c) + n_batch(c)) / (|B| + N)`` over the buffer plus the new batch, ``[K]``.

    ``buffer_labels``: labels of the images currently in the replay buffer ``[|B|]`` (or None / empty);
    ``batch_labels``: teacher-predicted labels of the new batch ``[N]``, ``N >= 1``.
    """
    if batch_labels.dim() != 1 or batch_labels.numel() == 0:
        raise ValueError(f"batch_labels must be a non-empty 1-D tensor, got shape {tuple(batch_labels.shape)}")
    labels = batch_labels.long()
    if buffer_labels is not None and buffer_labels.numel() > 0:
        labels = torch.cat([labels, buffer_labels.long().flatten().to(labels.device)])
    if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    return torch.bincount(labels, minlength=num_classes).float() / labels.numel()


def modulating_phi(
    teacher_logits: torch.Tensor,
    class_freq: torch.Tensor,
    gamma: float = 2.0,
    *,
    use_diversity: bool = True,
    use_difficulty: bool = True,
) -> torch.Tensor:
    """SSD-KD modulating function ``phi(x) = diversity(x) * difficulty(x)``, ``[N]``, detached, in [0, 1].

    With ``y = argmax_c t_c(x)`` the teacher's prediction, ``p = softmax(t(x))[y]`` its confidence, ``K``
    classes and ``f`` the class frequencies of the replay buffer (:func:`class_frequencies`):

    - ``diversity(x) = min(1, 1 / (K * f[y]))``: 1 for a class at or below its uniform share ``1/K``,
      ``1/r`` for a class ``r`` times over-represented (freq-ratio form); 1 when ``f[y] == 0``.
    - ``difficulty(x) = (1 - p)^gamma``: the focal term, large for samples the teacher is unsure about.

    Either factor can be switched off (replaced by 1).
    """
    _check_logits("teacher_logits", teacher_logits)
    k = teacher_logits.shape[1]
    if class_freq.shape != (k,):
        raise ValueError(f"class_freq must have shape ({k},) (one frequency per class), got {tuple(class_freq.shape)}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    with torch.no_grad():
        prob = F.softmax(teacher_logits.detach().float(), dim=1)
        conf, pred = prob.max(dim=1)
        phi = torch.ones_like(conf)
        if use_diversity:
            f = class_freq.to(conf.device, torch.float32)[pred]
            phi = phi * torch.where(f > 0, (1.0 / (k * f.clamp_min(1e-12))).clamp(max=1.0), torch.ones_like(f))
        if use_difficulty:
            phi = phi * (1.0 - conf).clamp_min(0.0).pow(gamma)
        return phi


def importance_weights(
    probabilities: torch.Tensor, size: int, beta: float, *, min_probability: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Prioritized-replay importance weights ``w_i = (size * P_i)^-beta / max w``, ``[N]``, in (0, 1].

    ``max w`` is ``(size * min_probability)^-beta`` when ``min_probability`` (the smallest probability of any
    item in the buffer) is given, so weights are comparable across batches; otherwise the max over this batch.
    Validates its arguments (host syncs), then calls :func:`pydistill.ops.sum_tree.importance_weights`.
    """
    from pydistill.ops.sum_tree import importance_weights as _iw

    if not isinstance(probabilities, torch.Tensor) or probabilities.dim() != 1:
        got = tuple(probabilities.shape) if isinstance(probabilities, torch.Tensor) else type(probabilities).__name__
        raise ValueError(f"probabilities must be a 1-D [N] tensor, got {got}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an int >= 1 (the buffer size), got {size!r}")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if bool((probabilities <= 0).any()) or bool((probabilities > 1).any()):
        raise ValueError("probabilities must lie in (0, 1] (a sampled item has a positive probability)")
    if min_probability is not None:
        pm = torch.as_tensor(min_probability, dtype=probabilities.dtype, device=probabilities.device)
        if not 0 < float(pm) <= float(probabilities.min()):
            raise ValueError(
                f"min_probability must be > 0 and <= every probability in the batch, got {float(pm)}"
            )
    return _iw(probabilities.float() if not probabilities.is_floating_point() else probabilities, float(beta),
               size, min_probability)
