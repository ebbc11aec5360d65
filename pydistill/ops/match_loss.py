"""Gradient-matching distance of Dataset Condensation (DC/DSA): ``match_loss``.

``match_loss(gw_syn, gw_real, metric="ours")`` compares two equal-length lists of gradient tensors (one per
network parameter, pairwise the same shape) and returns a 0-dim tensor in their dtype:

- ``"ours"``: every tensor with ``dim >= 2`` is viewed as ``[size(0), numel / size(0)]`` (conv weight
  ``[out, in*kh*kw]``, 3-D ``[C, H*W]``, linear as is); sum over rows of ``1 - <a,b> / (|a| |b| + 1e-6)``.
  Tensors with ``dim < 2`` (biases, norm parameters) contribute 0. Summed over tensors.
- ``"mse"``: sum of squared differences over all tensors.
- ``"cos"``: one ``1 - <a,b> / (|a| |b| + 1e-6)`` over the concatenation of all tensors.

Gradients flow to ``gw_syn`` only (``gw_real`` is a constant). The backward output is an ordinary tensor, so
when ``gw_syn`` comes from ``torch.autograd.grad(..., create_graph=True)`` the gradient flows on to the
synthetic images. Compiled backends run the whole list in one kernel launch per direction, accumulating in
fp32 (fp64 for fp64 inputs), without host synchronisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pydistill import _backend

__all__ = ["match_loss", "match_loss_reference", "METRICS"]

METRICS = ("ours", "mse", "cos")
EPS = 1e-6
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_AVAILABLE = ("cuda", "triton", "cpp", "reference")


# ----------------------------------------------------------------------------------------------------------
# Reference (plain PyTorch; ground truth and the per-layer "baseline" of the benchmark)
# ----------------------------------------------------------------------------------------------------------
def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)


def match_loss_reference(
    gw_syn: Sequence[torch.Tensor], gw_real: Sequence[torch.Tensor], metric: str = "ours"
) -> torch.Tensor:
    """Plain PyTorch ``match_loss`` (per-layer loop, differentiable, computed in the input dtype).

    Args: ``gw_syn``, ``gw_real``: lists of same-shape gradient tensors; ``metric``: "ours", "mse" or "cos".
    Returns: 0-dim tensor.
    """
    if metric == "ours":
        total = gw_syn[0].new_zeros(())
        for a, b in zip(gw_syn, gw_real):
            if a.dim() < 2:
                continue
            a2, b2 = _rows(a), _rows(b)
            dot = (a2 * b2).sum(dim=-1)
            total = total + (1 - dot / (torch.norm(a2, dim=-1) * torch.norm(b2, dim=-1) + EPS)).sum()
        return total
    if metric == "mse":
        total = gw_syn[0].new_zeros(())
        for a, b in zip(gw_syn, gw_real):
            total = total + ((a - b) ** 2).sum()
        return total
    if metric == "cos":
        a = torch.cat([x.reshape(-1) for x in gw_syn])
        b = torch.cat([x.reshape(-1) for x in gw_real])
        return 1 - (a * b).sum() / (torch.norm(a) * torch.norm(b) + EPS)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _num_rows(gw_syn, metric: str) -> int:
    if metric == "mse":
        return 0
    if metric == "cos":
        return 1
    return sum(int(t.shape[0]) for t in gw_syn if t.dim() >= 2)


def _reference_fwd(gw_syn, gw_real, metric: str):
    """(loss [] in input dtype, stats [R, 3] = per row (<a,b>, |a|^2, |b|^2) in fp32/fp64) with torch ops."""
    acc = _acc(gw_syn[0].dtype)
    dev = gw_syn[0].device
    if metric == "mse":
        total = torch.zeros((), dtype=acc, device=dev)
        for a, b in zip(gw_syn, gw_real):
            total = total + ((a.to(acc) - b.to(acc)) ** 2).sum()
        return total.to(gw_syn[0].dtype), torch.empty((0, 3), dtype=acc, device=dev)
    if metric == "cos":
        pairs = [(a.reshape(1, -1).to(acc), b.reshape(1, -1).to(acc)) for a, b in zip(gw_syn, gw_real)]
        parts = [torch.stack([(a * b).sum(), (a * a).sum(), (b * b).sum()]) for a, b in pairs]
        stats = torch.stack(parts).sum(0, keepdim=True)
    else:
        parts = [
            torch.stack([(a * b).sum(-1), (a * a).sum(-1), (b * b).sum(-1)], dim=-1)
            for a, b in ((_rows(x).to(acc), _rows(y).to(acc)) for x, y in zip(gw_syn, gw_real) if x.dim() >= 2)
        ]
        stats = torch.cat(parts) if parts else torch.empty((0, 3), dtype=acc, device=dev)
    dist = 1 - stats[:, 0] / (stats[:, 1].sqrt() * stats[:, 2].sqrt() + EPS)
    return dist.sum().to(gw_syn[0].dtype), stats


def _reference_bwd(grad, gw_syn, gw_real, stats, metric: str):
    acc = _acc(gw_syn[0].dtype)
    s = grad.reshape(()).to(acc)
    if metric == "mse":
        return [(2 * s * (a.to(acc) - b.to(acc))).to(a.dtype) for a, b in zip(gw_syn, gw_real)]
    na, nb = stats[:, 1].sqrt(), stats[:, 2].sqrt()
    den = na * nb + EPS
    alpha = -s / den
    beta = torch.where(na > 0, s * stats[:, 0] * nb / (torch.where(na > 0, na, 1.0) * den * den), 0.0)
    out, row = [], 0
    for a, b in zip(gw_syn, gw_real):
        if metric == "cos":
            out.append((alpha[0] * b.to(acc) + beta[0] * a.to(acc)).to(a.dtype))
        elif a.dim() < 2:
            out.append(torch.zeros(a.shape, dtype=a.dtype, device=a.device))
        else:
            n = a.shape[0]
            al, be = alpha[row : row + n, None], beta[row : row + n, None]
            g = al * _rows(b).to(acc) + be * _rows(a).to(acc)
            out.append(g.to(a.dtype).reshape(a.shape))
            row += n
    return out


# ----------------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------------
def _check(gw_syn, gw_real, metric) -> None:
    for name, lst in (("gw_syn", gw_syn), ("gw_real", gw_real)):
        if not isinstance(lst, (list, tuple)):
            raise TypeError(f"{name} must be a list or tuple of tensors, got {type(lst).__name__}")
    if len(gw_syn) == 0:
        raise ValueError("gw_syn must be a non-empty list of gradient tensors")
    if not isinstance(gw_syn[0], torch.Tensor):
        raise TypeError(f"gw_syn[0] must be a torch.Tensor, got {type(gw_syn[0]).__name__}")
    dtype, device = gw_syn[0].dtype, gw_syn[0].device
    # One pass; the messages are built only on failure (this runs on every training step).
    for a, b in zip(gw_syn, gw_real):
        if not (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == dtype
            and b.dtype == dtype
            and a.device == device
            and b.device == device
            and a.shape == b.shape
        ):
            _explain(gw_syn, gw_real, metric)
    if len(gw_syn) != len(gw_real) or not isinstance(metric, str) or metric not in METRICS or dtype not in _DTYPES:
        _explain(gw_syn, gw_real, metric)


def _explain(gw_syn, gw_real, metric) -> None:
    """Slow path of ``_check``: raise the error naming the first bad argument."""
    for name, lst in (("gw_syn", gw_syn), ("gw_real", gw_real)):
        for i, t in enumerate(lst):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
    if len(gw_syn) != len(gw_real):
        raise ValueError(f"gw_syn and gw_real must have the same length, got {len(gw_syn)} and {len(gw_real)}")
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    dtype, device = gw_syn[0].dtype, gw_syn[0].device
    if dtype not in _DTYPES:
        raise TypeError(f"gw_syn[0] must be float32/float64/float16/bfloat16, got {dtype}")
    for i, (a, b) in enumerate(zip(gw_syn, gw_real)):
        if a.shape != b.shape:
            raise ValueError(f"gw_real[{i}] must have the shape of gw_syn[{i}] {tuple(a.shape)}, got {tuple(b.shape)}")
        for name, t in ((f"gw_syn[{i}]", a), (f"gw_real[{i}]", b)):
            if t.dtype != dtype:
                raise TypeError(f"{name} must have dtype {dtype} (the dtype of gw_syn[0]), got {t.dtype}")
            if t.device != device:
                raise ValueError(f"{name} must be on {device} (the device of gw_syn[0]), got {t.device}")
    raise AssertionError("unreachable: _check found a problem that _explain did not")  # pragma: no cover


# ----------------------------------------------------------------------------------------------------------
# Backend dispatch
# ----------------------------------------------------------------------------------------------------------
def _fwd(gw_syn, gw_real, metric: str, backend: str):
    backend = _backend.resolve(backend, gw_syn[0].device, available=_AVAILABLE)
    return _fwd_impl(gw_syn, gw_real, metric, backend)


def _fwd_impl(gw_syn, gw_real, metric: str, backend: str):
    """Forward on an already resolved backend."""
    if backend in ("cpp", "cuda"):
        return torch.ops.pydistill.match_loss_fwd(gw_syn, gw_real, metric)
    if backend == "triton":
        from pydistill.kernels import match_loss as tk

        return tk.match_loss_fwd(gw_syn, gw_real, metric)
    return _reference_fwd(gw_syn, gw_real, metric)


def _bwd(grad, gw_syn, gw_real, stats, metric: str, backend: str):
    backend = _backend.resolve(backend, gw_syn[0].device, available=_AVAILABLE)
    return _bwd_impl(grad, gw_syn, gw_real, stats, metric, backend)


def _bwd_impl(grad, gw_syn, gw_real, stats, metric: str, backend: str):
    """Backward on an already resolved backend."""
    if backend in ("cpp", "cuda"):
        return torch.ops.pydistill.match_loss_bwd(grad, gw_syn, gw_real, stats, metric)
    if backend == "triton":
        from pydistill.kernels import match_loss as tk

        return tk.match_loss_bwd(grad, gw_syn, gw_real, stats, metric)
    return _reference_bwd(grad, gw_syn, gw_real, stats, metric)


@torch.library.custom_op("pydistill::match_loss", mutates_args=())
def _match_loss_op(
    gw_syn: list[torch.Tensor], gw_real: list[torch.Tensor], metric: str, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss [] in input dtype, stats [R, 3] fp32/fp64 per-row (<a,b>, |a|^2, |b|^2), used by the backward)."""
    loss, stats = _fwd(gw_syn, gw_real, metric, backend)
    return loss, stats


def _check_fake_fwd(op: str, gw_syn, gw_real, metric) -> None:
    """Fake-kernel checks of a forward: the lists as ``_check`` requires them and a known metric."""
    _backend.check_fake_lists(op, [("gw_syn", gw_syn), ("gw_real", gw_real)], _DTYPES)
    torch._check(metric in METRICS, lambda: f"{op}: metric must be one of {METRICS}, got {metric!r}")


def _check_fake_bwd(op: str, grad, gw_syn, gw_real, stats, metric) -> None:
    """Fake-kernel checks of a backward: the forward's, a one-element grad and stats [R, 3] in the acc dtype."""
    _check_fake_fwd(op, gw_syn, gw_real, metric)
    torch._check(grad.numel() == 1, lambda: f"{op}: grad must hold one element, got shape {tuple(grad.shape)}")
    rows, acc = _num_rows(gw_syn, metric), _acc(gw_syn[0].dtype)
    torch._check(
        stats.dim() == 2 and stats.shape[0] == rows and stats.shape[1] == 3 and stats.dtype == acc,
        lambda: f"{op}: stats must be [{rows}, 3] of dtype {acc}, got {tuple(stats.shape)} {stats.dtype}",
    )


def _fake_fwd(op: str, gw_syn, gw_real, metric):
    _check_fake_fwd(op, gw_syn, gw_real, metric)
    a = gw_syn[0]
    return a.new_empty(()), a.new_empty((_num_rows(gw_syn, metric), 3), dtype=_acc(a.dtype))


def _fake_bwd(op: str, grad, gw_syn, gw_real, stats, metric):
    _check_fake_bwd(op, grad, gw_syn, gw_real, stats, metric)
    return [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in gw_syn]


@_match_loss_op.register_fake
def _(gw_syn, gw_real, metric, backend):
    return _fake_fwd("match_loss", gw_syn, gw_real, metric)


@torch.library.custom_op("pydistill::match_loss_backward", mutates_args=())
def _match_loss_backward_op(
    grad: torch.Tensor,
    gw_syn: list[torch.Tensor],
    gw_real: list[torch.Tensor],
    stats: torch.Tensor,
    metric: str,
    backend: str,
) -> list[torch.Tensor]:
    """Gradient of match_loss w.r.t. each tensor of ``gw_syn`` (contiguous, same shapes and dtype)."""
    return list(_bwd(grad, gw_syn, gw_real, stats, metric, backend))


@_match_loss_backward_op.register_fake
def _(grad, gw_syn, gw_real, stats, metric, backend):
    return _fake_bwd("match_loss_backward", grad, gw_syn, gw_real, stats, metric)


def _setup_context(ctx, inputs, output):
    gw_syn, gw_real, metric, backend = inputs
    ctx.n = len(gw_syn)
    ctx.metric, ctx.backend = metric, backend
    ctx.save_for_backward(*gw_syn, *gw_real, output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_loss, grad_stats):
    saved = ctx.saved_tensors
    n = ctx.n
    grads = torch.ops.pydistill.match_loss_backward(
        grad_loss, list(saved[:n]), list(saved[n : 2 * n]), saved[2 * n], ctx.metric, ctx.backend
    )
    return list(grads), [None] * n, None, None


_match_loss_op.register_autograd(_backward, setup_context=_setup_context)


# Fake kernels of the compiled low-level ops (shapes only), when the extension is loaded.
if _backend.has_compiled() and hasattr(torch.ops.pydistill, "match_loss_fwd"):

    @torch.library.register_fake("pydistill::match_loss_fwd")
    def _(gw_syn, gw_real, metric):
        return _fake_fwd("match_loss_fwd", gw_syn, gw_real, metric)

    @torch.library.register_fake("pydistill::match_loss_fwd_out")
    def _(gw_syn, gw_real, metric, loss, stats):
        op = "match_loss_fwd_out"
        _check_fake_fwd(op, gw_syn, gw_real, metric)
        dtype, rows, acc = gw_syn[0].dtype, _num_rows(gw_syn, metric), _acc(gw_syn[0].dtype)
        torch._check(
            loss.dim() == 0 and loss.dtype == dtype,
            lambda: f"{op}: loss must be a 0-dim tensor of dtype {dtype}, got {tuple(loss.shape)} {loss.dtype}",
        )
        torch._check(
            stats.dim() == 2 and stats.shape[0] == rows and stats.shape[1] == 3 and stats.dtype == acc,
            lambda: f"{op}: stats must be [{rows}, 3] of dtype {acc}, got {tuple(stats.shape)} {stats.dtype}",
        )

    @torch.library.register_fake("pydistill::match_loss_bwd")
    def _(grad, gw_syn, gw_real, stats, metric):
        return _fake_bwd("match_loss_bwd", grad, gw_syn, gw_real, stats, metric)

    @torch.library.register_fake("pydistill::match_loss_bwd_out")
    def _(grad, gw_syn, gw_real, stats, metric, grad_syn):
        op = "match_loss_bwd_out"
        _check_fake_bwd(op, grad, gw_syn, gw_real, stats, metric)
        _backend.check_fake_lists(op, [("gw_syn", gw_syn), ("grad_syn", grad_syn)], _DTYPES)


# ----------------------------------------------------------------------------------------------------------
# Eager fast path
# ----------------------------------------------------------------------------------------------------------
class _EagerMatchLoss(torch.autograd.Function):
    """Same forward/backward as ``pydistill::match_loss`` (+ its registered autograd), in eager mode."""

    @staticmethod
    def forward(ctx, metric: str, backend: str, n: int, *tensors):
        syn, real = list(tensors[:n]), list(tensors[n:])
        loss, stats = _fwd_impl(syn, real, metric, backend)
        ctx.set_materialize_grads(False)  # no zero tensor for the unused stats gradient
        ctx.n, ctx.metric, ctx.backend = n, metric, backend
        ctx.save_for_backward(*syn, *real, stats)
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        n = ctx.n
        if grad_loss is None or not any(ctx.needs_input_grad[3 : 3 + n]):
            return (None,) * (3 + 2 * n)
        saved = ctx.saved_tensors
        syn, real, stats = list(saved[:n]), list(saved[n : 2 * n]), saved[2 * n]
        if torch.is_grad_enabled():  # create_graph=True: the registered op (same double-backward behaviour)
            grads = torch.ops.pydistill.match_loss_backward(grad_loss, syn, real, stats, ctx.metric, ctx.backend)
        else:
            grads = _bwd_impl(grad_loss, syn, real, stats, ctx.metric, ctx.backend)
        return (None, None, None, *grads) + (None,) * n


# ----------------------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------------------
def match_loss(
    gw_syn: Sequence[torch.Tensor], gw_real: Sequence[torch.Tensor], metric: str = "ours", backend: str = "auto"
) -> torch.Tensor:
    """DC gradient-matching distance between two lists of gradients.

    Args:
        gw_syn: gradients on the synthetic batch, one tensor per parameter (any shapes); differentiable.
        gw_real: gradients on the real batch, same length and pairwise the same shapes; treated as constant.
        metric: "ours" (per-output-node cosine distance, 1-D tensors ignored), "mse" or "cos".
        backend: "auto", "reference", "cpp", "cuda" or "triton".
    Returns:
        0-dim tensor in the dtype of the inputs.
    """
    _check(gw_syn, gw_real, metric)
    backend = _backend.resolve(backend, gw_syn[0].device, available=_AVAILABLE)
    if backend == "reference":
        return match_loss_reference(list(gw_syn), [t.detach() for t in gw_real], metric)
    syn, real = list(gw_syn), [t.detach() if t.requires_grad else t for t in gw_real]
    if _backend.plain_eager(syn) and _backend.plain_eager(real):
        loss, _ = _EagerMatchLoss.apply(metric, backend, len(syn), *syn, *real)
    else:
        loss, _ = torch.ops.pydistill.match_loss(syn, real, metric, backend)
    return loss
