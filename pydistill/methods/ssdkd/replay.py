"""SSD-KD's dynamic replay buffer with priority sampling on :class:`pydistill.ops.SumTree`.

A fixed-size buffer ``B`` (default 10% of the training-set size) of synthesized images with their teacher logits
and priorities. The paper's priority of a sample at student step ``i`` is
``delta_i(x) = w_{i-1}(x) * KL(f_t(x) || f_s(x))`` with ``w_{-1} = 1``; it is drawn with
``P_i(x) = (delta_i(x) + eps)^alpha / sum_B (delta + eps)^alpha`` and weighted by
``w_i(x) = (|B| P_i(x))^-beta / max_B (|B| P_i)^-beta``. The tree holds ``(delta + eps)^alpha`` per slot; the
importance-weight formula is :func:`pydistill.ops.sum_tree.importance_weights` (written once, there).
"""

from __future__ import annotations

import torch

from pydistill.ops import SumTree, importance_weights

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    """Fixed-size buffer of synthesized images with teacher logits and SSD-KD priorities.

    Stores ``images [capacity, C, H, W]`` (normalized space), ``logits [capacity, K]`` (teacher),
    ``labels [capacity]`` (teacher argmax) and ``delta [capacity]`` (raw priority, KL(teacher || student)).
    The :class:`pydistill.ops.SumTree` holds ``(delta + eps)^alpha`` per slot.
    ``replace``: ``"oldest"`` writes new images over the oldest ones (ring order); ``"lowest"`` over the
    lowest-priority ones (ties: lowest slot). Until full, images fill the free slots in order.
    """

    def __init__(
        self,
        capacity: int,
        image_shape,
        num_classes: int,
        *,
        alpha: float,
        eps: float,
        replace: str = "oldest",
        device="cpu",
        backend: str = "auto",
    ):
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
        """``n`` slots drawn uniformly with replacement from the filled ones (the base's replay)."""
        return torch.randint(0, self.size, (n,), generator=generator, device=generator.device).to(self.device)

    def importance_weights(self, probs: torch.Tensor, beta: float, norm: str = "buffer") -> torch.Tensor:
        """IS weights of drawn slots with sampling probabilities ``probs [n]``: ``w = (|B| P)^-beta`` normalised by
        ``norm``: ``"buffer"`` (the paper) its maximum over the buffer, ``(|B| min_B P)^-beta``; ``"batch"`` the
        maximum over the drawn batch; ``"mean"`` the batch mean (keeps the average step size). float32 ``[n]``."""
        if norm not in ("buffer", "batch", "mean"):
            raise ValueError(f"norm must be 'buffer', 'batch' or 'mean', got {norm!r}")
        probs = probs.to(self.device, torch.float64)
        if norm == "buffer":
            w = self.tree.importance_weights(probs, beta, size=self.size)
        else:
            w = importance_weights(probs, beta, self.size)  # normalised by the batch max
            if norm == "mean":
                w = w / w.mean()
        return w.float()

    def sample(
        self, n: int, generator: torch.Generator, *, prioritized: bool, beta: float = 0.0, norm: str = "buffer"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(slots [n], IS weights [n])``: prioritized draws with :meth:`importance_weights`, or uniform draws
        with weights 1."""
        if not prioritized:
            return self.sample_uniform(n, generator), torch.ones(n, device=self.device)
        slots, probs = self.sample_prioritized(n, generator)
        return slots, self.importance_weights(probs, beta, norm)

    def state_dict(self) -> dict:
        return dict(
            images=self.images,
            logits=self.logits,
            labels=self.labels,
            delta=self.delta,
            size=self.size,
            ptr=self.ptr,
            tree=self.tree.state_dict(),
        )

    def load_state_dict(self, sd: dict) -> None:
        for k in ("images", "logits", "labels", "delta"):
            if sd[k].shape != getattr(self, k).shape:
                raise ValueError(
                    f"buffer state {k} has shape {tuple(sd[k].shape)}, expected {tuple(getattr(self, k).shape)}"
                )
            getattr(self, k).copy_(sd[k])
        self.size, self.ptr = int(sd["size"]), int(sd["ptr"])
        self.tree.load_state_dict(sd["tree"])
