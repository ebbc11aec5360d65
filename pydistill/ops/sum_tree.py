"""``SumTree``: batched priority sampling for (prioritized) replay buffers.

A binary sum tree plus a min tree over ``capacity`` leaves, kept on the device as two flat float64
tensors of ``2 * P`` nodes (``P`` = next power of two >= capacity; heap order: node ``k`` has children
``2k`` and ``2k + 1``, the root is node 1, leaf ``i`` is node ``P + i``, node 0 is unused).
float64 keeps the root within about ``log2(P) * 2**-53`` relative error of the exact sum, so prefix
sums stay meaningful at 2**22 leaves and beyond (float32 would lose whole low-priority leaves).
Never-written leaves hold priority 0 in the sum tree and +inf in the min tree.

Backends: ``"cpp"`` (C++ kernels in ``pydistill._C``, the CPU default), ``"cuda"`` (CUDA kernels, the GPU
default) and ``"reference"`` (plain PyTorch; rebuilds the whole tree on every update, for tests).
The compiled ops are ``torch.ops.pydistill.sum_tree_update`` (in place; refreshes only the ancestors of
the written leaves) and ``torch.ops.pydistill.sum_tree_sample`` (one descent per draw).
"""

from __future__ import annotations

import math
import numbers

import torch

from pydistill._backend import has_compiled, resolve

__all__ = [
    "SumTree",
    "importance_weights",
    "sum_tree_build_reference",
    "sum_tree_update_reference",
    "sum_tree_sample_reference",
]

_AVAILABLE = ("cuda", "cpp", "reference")


# --------------------------------------------------------------------------------------------------
# Reference (plain PyTorch) kernels: same layout and semantics as the compiled ones.
# --------------------------------------------------------------------------------------------------
def sum_tree_build_reference(tree: torch.Tensor, min_tree: torch.Tensor) -> None:
    """Recompute every internal node of ``tree`` / ``min_tree`` (float64 [2P]) from the leaves, in place."""
    h = tree.numel() // 4  # internal nodes [h, 2h) of the level above the leaves
    while h >= 1:
        tree[h : 2 * h] = tree[2 * h : 4 * h].view(h, 2).sum(1)
        min_tree[h : 2 * h] = min_tree[2 * h : 4 * h].view(h, 2).amin(1)
        h //= 2


def sum_tree_update_reference(
    tree: torch.Tensor, min_tree: torch.Tensor, indices: torch.Tensor, priorities: torch.Tensor
) -> None:
    """Write leaves ``indices`` (int64 [K]) := ``priorities`` (float64 [K]), last write wins, then rebuild."""
    if indices.numel() == 0:
        return
    p_leaves = tree.numel() // 2
    sorted_idx, perm = torch.sort(indices, stable=True)
    last = torch.ones_like(sorted_idx, dtype=torch.bool)
    last[:-1] = sorted_idx[1:] != sorted_idx[:-1]  # the last of a run is the last write in input order
    nodes = sorted_idx[last] + p_leaves
    values = priorities[perm[last]]
    tree.index_copy_(0, nodes, values)
    min_tree.index_copy_(0, nodes, values)
    sum_tree_build_reference(tree, min_tree)


def sum_tree_sample_reference(tree: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Leaf index (int64 [n]) holding prefix mass ``u`` (float64 [n], in [0, total)); never a zero leaf."""
    p_leaves = tree.numel() // 2
    v = torch.ones(u.shape, dtype=torch.int64, device=u.device)
    x = u.clone()
    while p_leaves > 1:
        left = tree.index_select(0, 2 * v)
        go_right = (x >= left) & (tree.index_select(0, 2 * v + 1) > 0)
        x = torch.where(go_right, x - left, x)
        v = 2 * v + go_right.long()
        p_leaves //= 2
    return v - tree.numel() // 2


# --------------------------------------------------------------------------------------------------
# Fake kernels of the compiled ops (shapes only), registered when _C provides them.
# --------------------------------------------------------------------------------------------------
def _compiled_ops_present() -> bool:
    if not has_compiled():
        return False
    try:
        torch.ops.pydistill.sum_tree_update.default  # noqa: B018
        torch.ops.pydistill.sum_tree_sample.default  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


_HAS_OPS = _compiled_ops_present()

if _HAS_OPS:

    def _check_fake_tree(op: str, name: str, tree) -> None:
        """A tree as the compiled kernels take it: 1-D float64 with 2 * P nodes, P a power of two."""
        torch._check(
            tree.dim() == 1 and tree.dtype == torch.float64,
            lambda: f"{op}: {name} must be a 1-D float64 tensor, got {tree.dtype} of shape {tuple(tree.shape)}",
        )
        n = tree.shape[0]
        torch._check(n >= 2, lambda: f"{op}: {name} must hold 2 * P nodes with P a power of two, got {n}")
        if isinstance(n, int):  # the power of two is checked on concrete sizes (no bit ops on symbolic ones)
            torch._check(n & (n - 1) == 0, lambda: f"{op}: {name} must hold 2 * P nodes with P a power of two, got {n}")

    @torch.library.register_fake("pydistill::sum_tree_update")
    def _sum_tree_update_fake(tree, min_tree, indices, priorities):
        op = "sum_tree_update"
        _check_fake_tree(op, "tree", tree)
        _check_fake_tree(op, "min_tree", min_tree)
        torch._check(
            min_tree.shape[0] == tree.shape[0] and min_tree.device == tree.device,
            lambda: f"{op}: min_tree must have as many nodes as tree ({tree.shape[0]}) on its device",
        )
        torch._check(
            indices.dim() == 1 and indices.dtype == torch.int64,
            lambda: f"{op}: indices must be 1-D int64, got {indices.dtype} of shape {tuple(indices.shape)}",
        )
        torch._check(
            priorities.dim() == 1 and priorities.dtype == torch.float64,
            lambda: f"{op}: priorities must be 1-D float64, got {priorities.dtype} of shape {tuple(priorities.shape)}",
        )
        torch._check(
            indices.shape[0] == priorities.shape[0],
            lambda: (
                f"{op}: indices ({indices.shape[0]}) and priorities ({priorities.shape[0]}) must have the same length"
            ),
        )
        return None

    @torch.library.register_fake("pydistill::sum_tree_sample")
    def _sum_tree_sample_fake(tree, u):
        op = "sum_tree_sample"
        _check_fake_tree(op, "tree", tree)
        torch._check(
            u.dim() == 1 and u.dtype == torch.float64,
            lambda: f"{op}: u must be 1-D float64, got {u.dtype} of shape {tuple(u.shape)}",
        )
        return u.new_empty(u.shape, dtype=torch.int64)


# --------------------------------------------------------------------------------------------------
# Importance-sampling weights
# --------------------------------------------------------------------------------------------------
def importance_weights(
    probabilities: torch.Tensor,
    beta: float,
    size,
    min_probability: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Prioritized-replay importance weights ``w = (size * P)**-beta / max(w)``, in (0, 1].

    ``probabilities``: [n] sampling probabilities (> 0); ``beta`` >= 0; ``size``: buffer size (int or
    0-dim tensor). ``max(w)`` is over the batch, or over the whole buffer, ``(size * min_probability)**-beta``,
    when ``min_probability`` (the smallest positive probability in the buffer) is given. No host sync.
    """
    if not isinstance(probabilities, torch.Tensor) or not probabilities.is_floating_point():
        raise ValueError(
            f"probabilities must be a floating-point tensor, got {type(probabilities).__name__}"
            + (f" of dtype {probabilities.dtype}" if isinstance(probabilities, torch.Tensor) else "")
        )
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (0.0 <= float(beta) < math.inf):
        raise ValueError(f"beta must be a finite real number >= 0, got {beta!r}")
    if isinstance(size, torch.Tensor):
        size = size.to(device=probabilities.device, dtype=probabilities.dtype)
    elif isinstance(size, bool) or not isinstance(size, numbers.Real) or not size > 0:
        raise ValueError(f"size must be a positive number (the buffer size), got {size!r}")

    def unnormalised(p):  # (|B| P)^-beta: the one place this formula is written
        return (size * p) ** (-float(beta))

    w = unnormalised(probabilities)
    if min_probability is None:
        w_max = w.amax() if w.numel() else w.new_ones(())
    else:
        w_max = unnormalised(torch.as_tensor(min_probability, dtype=probabilities.dtype, device=probabilities.device))
    return w / w_max


# --------------------------------------------------------------------------------------------------
# The public class
# --------------------------------------------------------------------------------------------------
def _as_int_tensor(x, name: str, device: torch.device) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{name} must be an integer tensor, got {type(x).__name__}") from exc
        if x.numel() == 0:
            x = x.long()
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise ValueError(f"{name} must have an integer dtype (int64 preferred), got {x.dtype}")
    return x.to(device=device, dtype=torch.int64)


class SumTree:
    """Sum tree (+ min tree) over ``capacity`` priorities for proportional sampling, on ``device``.

    ``update(indices [K] int, priorities [K] float)`` writes leaves (duplicates: the last write in input
    order wins) and refreshes only their ancestors; ``sample(n)`` draws leaves with probability
    priority / total. Storage: two float64 tensors of ``2 * next_pow2(capacity)`` nodes (16 bytes per
    node; 128 MiB at 2**22 leaves). ``backend``: "auto", "cpp" (CPU), "cuda" (GPU) or "reference".
    """

    def __init__(self, capacity: int, device="cpu", backend: str = "auto"):
        if isinstance(capacity, bool) or not isinstance(capacity, numbers.Integral) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        if capacity > 2**40:
            raise ValueError(f"capacity must be at most 2**40, got {capacity}")
        try:
            device = torch.device(device)
        except (TypeError, RuntimeError) as exc:
            raise ValueError(f"device must be a torch.device or device string, got {device!r}") from exc
        self._capacity = int(capacity)
        self._p = 1 << (self._capacity - 1).bit_length()
        self.backend = resolve(backend, device, available=_AVAILABLE)
        if self.backend in ("cpp", "cuda") and not _HAS_OPS:
            raise RuntimeError(
                f"backend={self.backend!r}: pydistill._C has no sum_tree ops (stale build?); rebuild the "
                "extension or pass backend='reference'"
            )
        self._sum = torch.zeros(2 * self._p, dtype=torch.float64, device=device)
        self._min = torch.full((2 * self._p,), math.inf, dtype=torch.float64, device=device)
        self.device = self._sum.device
        if self.backend == "reference":
            self._update_op, self._sample_op = sum_tree_update_reference, sum_tree_sample_reference
        else:
            self._update_op = torch.ops.pydistill.sum_tree_update
            self._sample_op = torch.ops.pydistill.sum_tree_sample

    # -- basic properties ---------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return self._capacity

    def __repr__(self) -> str:
        return f"SumTree(capacity={self._capacity}, device={str(self.device)!r}, backend={self.backend!r})"

    def total(self) -> torch.Tensor:
        """Sum of all priorities: float64 0-dim tensor on the device (a view of the root; no sync)."""
        return self._sum[1].clone()

    def min(self) -> torch.Tensor:
        """Smallest priority over the written leaves (float64 0-dim; +inf if nothing was written)."""
        return self._min[1].clone()

    def _leaf_indices(self, indices, name: str, validate: bool) -> torch.Tensor:
        idx = _as_int_tensor(indices, name, self.device)
        if validate and idx.numel():
            if bool(((idx < 0) | (idx >= self._capacity)).any()):
                lo, hi = int(idx.min()), int(idx.max())
                raise ValueError(f"{name} must lie in [0, capacity={self._capacity}), got values in [{lo}, {hi}]")
        return idx

    def get(self, indices, *, validate: bool = True) -> torch.Tensor:
        """Priorities (float64, same shape as ``indices``) of leaves ``indices``; 0 for never-written ones."""
        idx = self._leaf_indices(indices, "indices", validate)
        # index_select, not tensor[idx]: advanced indexing goes multi-threaded early on the CPU
        return self._sum.index_select(0, idx.reshape(-1) + self._p).view(idx.shape)

    # -- update -------------------------------------------------------------------------------------
    def update(self, indices, priorities, *, validate: bool = True) -> None:
        """Set leaves ``indices`` (int [K]) to ``priorities`` ([K] or a scalar; any real dtype, stored float64).

        Duplicate indices: the last one in input order wins. With ``validate`` (one host sync) a negative,
        NaN or infinite priority or an index outside [0, capacity) raises ``ValueError``.
        """
        idx = _as_int_tensor(indices, "indices", self.device)
        if idx.dim() > 1:
            raise ValueError(f"indices must be 1-D [K], got shape {tuple(idx.shape)}")
        idx = idx.reshape(-1)
        if not isinstance(priorities, torch.Tensor):
            if isinstance(priorities, bool):
                raise ValueError("priorities must be real numbers, got a bool")
            try:
                priorities = torch.as_tensor(priorities, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ValueError(f"priorities must be a float tensor, got {type(priorities).__name__}") from exc
        if priorities.dtype == torch.bool or priorities.is_complex():
            raise ValueError(f"priorities must have a real (float) dtype, got {priorities.dtype}")
        pri = priorities.detach().to(device=self.device, dtype=torch.float64)
        if pri.dim() == 0:
            pri = pri.expand(idx.shape)
        if pri.shape != idx.shape:
            raise ValueError(
                f"priorities must have the shape of indices {tuple(idx.shape)} (or be a scalar), "
                f"got {tuple(priorities.shape)}"
            )
        if idx.numel() == 0:
            return
        pri = pri.contiguous()
        if validate:
            lo_i, hi_i = torch.aminmax(idx)
            lo_p, hi_p = torch.aminmax(pri)  # NaN propagates into both
            lo_i, hi_i, lo_p, hi_p = torch.stack([lo_i.double(), hi_i.double(), lo_p, hi_p]).tolist()  # one sync
            if lo_i < 0 or hi_i >= self._capacity:
                raise ValueError(
                    f"indices must lie in [0, capacity={self._capacity}), got values in [{int(lo_i)}, {int(hi_i)}]"
                )
            if math.isnan(lo_p) or math.isnan(hi_p):
                raise ValueError("priorities must not contain NaN")
            if math.isinf(lo_p) or math.isinf(hi_p):
                raise ValueError(f"priorities must be finite, got values in [{lo_p}, {hi_p}]")
            if lo_p < 0:
                raise ValueError(f"priorities must be >= 0, got minimum {lo_p}")
        self._update_op(self._sum, self._min, idx.contiguous(), pri)

    # -- sampling -----------------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        stratified: bool = True,
        *,
        validate: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` leaves with probability priority / total.

        Returns ``(indices int64 [n], probabilities float64 [n])`` on the device. ``stratified``: draw
        ``u_i = (i + U_i) / n * total`` (one draw per equal-mass stratum, lower variance), else
        ``u_i = U_i * total``; ``U`` ~ uniform[0, 1) from ``generator``. A zero-priority leaf is never
        returned. ``validate`` (one host sync) raises ``ValueError`` when the tree is empty (total 0).
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        if not isinstance(stratified, bool):
            raise ValueError(f"stratified must be a bool, got {stratified!r}")
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
            if generator.device.type != self.device.type:
                raise ValueError(
                    f"generator must live on the tree's device type ({self.device.type}), "
                    f"got a generator on {generator.device}"
                )
        n = int(n)
        total = self._sum[1]
        if validate and not float(total) > 0.0:
            raise ValueError("sample: the tree is empty (total priority is 0); update it with positive priorities")
        r = torch.rand(n, dtype=torch.float64, device=self.device, generator=generator)
        if stratified:
            u = (torch.arange(n, dtype=torch.float64, device=self.device) + r) * (total / max(n, 1))
        else:
            u = r * total
        idx = self._sample_op(self._sum, u)
        prob = self._sum.index_select(0, idx + self._p) / total
        return idx, prob

    def importance_weights(self, probabilities: torch.Tensor, beta: float, size=None) -> torch.Tensor:
        """``(size * P)**-beta`` normalised by the largest weight in the buffer, ``(size * min P)**-beta``.

        ``size`` defaults to the number of written leaves (an O(capacity) count on the device). When the
        buffer holds a written zero priority (min P = 0) the batch maximum is used instead. No host sync.
        """
        if size is None:
            size = (self._min[self._p : self._p + self._capacity] != math.inf).sum()
        if not isinstance(probabilities, torch.Tensor) or probabilities.numel() == 0:
            return importance_weights(probabilities, beta, size)
        p_min = (self._min[1] / self._sum[1]).to(device=probabilities.device, dtype=probabilities.dtype)
        # (size * P)**-beta decreases in P, so the batch maximum is the weight of the batch's smallest P.
        p_min = torch.where(p_min > 0, p_min, probabilities.detach().amin())
        return importance_weights(probabilities, beta, size, min_probability=p_min)

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"capacity": int, "priorities": float64 [capacity], "written": bool [capacity]}`` (copies)."""
        leaves_min = self._min[self._p : self._p + self._capacity]
        return {
            "capacity": self._capacity,
            "priorities": self._sum[self._p : self._p + self._capacity].clone(),
            "written": leaves_min != math.inf,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()`` output (any device); the tree is rebuilt from the leaves."""
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict from SumTree.state_dict(), got {type(state).__name__}")
        missing = {"capacity", "priorities", "written"} - set(state)
        if missing:
            raise ValueError(f"state is missing keys {sorted(missing)}")
        if int(state["capacity"]) != self._capacity:
            raise ValueError(f"state['capacity'] is {state['capacity']}, this tree has capacity {self._capacity}")
        pri, written = state["priorities"], state["written"]
        if not isinstance(pri, torch.Tensor) or pri.shape != (self._capacity,) or not pri.is_floating_point():
            raise ValueError(f"state['priorities'] must be a float tensor of shape ({self._capacity},)")
        if not isinstance(written, torch.Tensor) or written.shape != (self._capacity,) or written.dtype != torch.bool:
            raise ValueError(f"state['written'] must be a bool tensor of shape ({self._capacity},)")
        pri = pri.to(device=self.device, dtype=torch.float64)
        written = written.to(self.device)
        if not bool((torch.isfinite(pri) & (pri >= 0) & (written | (pri == 0))).all()):
            raise ValueError("state['priorities'] must be finite, >= 0, and 0 where not written")
        self._sum.zero_()
        self._min.fill_(math.inf)
        self._sum[self._p : self._p + self._capacity] = pri
        self._min[self._p : self._p + self._capacity] = torch.where(written, pri, math.inf)
        sum_tree_build_reference(self._sum, self._min)
