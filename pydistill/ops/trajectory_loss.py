"""MTT's normalized parameter-matching loss (Cazenavette et al. 2022).

``trajectory_loss(student, start, target) = sum ||student - target||^2 / sum ||start - target||^2``

``student`` are the student parameters after N synthetic steps, ``start`` the expert snapshot the student
started from (epoch t) and ``target`` the expert snapshot M epochs later. Each argument is a tensor (a flat
parameter vector or any shape) or an equal-length list of tensors (per-layer parameters, pairwise equal
shapes); all tensors share one dtype (fp32, fp64, fp16, bf16) and one device. Sums accumulate in fp32
(fp64 for fp64 inputs); the loss has the input dtype.

Gradient flows to ``student`` only: ``start`` and ``target`` are expert snapshots, treated as constants
(their gradient is ``None`` even if they require grad). No double backward.

A zero denominator (``start == target``) gives ``inf`` (or ``nan`` when the numerator is 0 too) and a
non-finite gradient, exactly like the plain formula; the function never synchronises with the device to
look. Pass ``check=True`` to raise a ``ValueError`` instead (this reads the denominator back: one sync).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import torch

from pydistill import _backend

__all__ = ["trajectory_loss", "trajectory_loss_reference"]

TensorOrList = Union[torch.Tensor, Sequence[torch.Tensor]]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Preference order for backend="auto": CUDA kernel on GPUs, C++ kernel on the CPU (measured faster than
# the reference: see benchmarks/ops/bench_trajectory_loss.py), Triton on GPUs when _C lacks CUDA.
_AVAILABLE = ("cuda", "cpp", "triton", "reference")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as_list(x, name: str) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        for i, t in enumerate(x):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
        return list(x)
    raise TypeError(f"{name} must be a torch.Tensor or a list/tuple of tensors, got {type(x).__name__}")


def _validate(student, start, target) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    s, a, t = _as_list(student, "student"), _as_list(start, "start"), _as_list(target, "target")
    if len(s) == 0:
        raise ValueError("student must hold at least one tensor, got an empty list")
    if not (len(s) == len(a) == len(t)):
        raise ValueError(
            f"student, start and target must have the same number of tensors, got {len(s)}, {len(a)}, {len(t)}"
        )
    dtype, device = s[0].dtype, s[0].device
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"student[0] must be float32, float64, float16 or bfloat16, got {dtype}")
    total = 0
    for name, lst in (("student", s), ("start", a), ("target", t)):
        for i, x in enumerate(lst):
            if x.dtype != dtype:
                raise TypeError(f"{name}[{i}] has dtype {x.dtype}, expected {dtype} (the dtype of student[0])")
            if x.device != device:
                raise ValueError(f"{name}[{i}] is on {x.device}, expected {device} (the device of student[0])")
            if x.shape != s[i].shape:
                raise ValueError(
                    f"{name}[{i}] has shape {tuple(x.shape)}, expected {tuple(s[i].shape)} (the shape of student[{i}])"
                )
    for x in s:
        total += x.numel()
    if total == 0:
        raise ValueError("trajectory_loss needs at least one element, got empty tensors")
    return s, a, t


# ----------------------------------------------------------------------------------------------- reference
def trajectory_loss_reference(student: TensorOrList, start: TensorOrList, target: TensorOrList) -> torch.Tensor:
    """Plain-PyTorch ground truth: 0-dim ``sum||s - t||^2 / sum||a - t||^2`` in the input dtype.

    Differentiable in all three arguments (unlike ``trajectory_loss``, which treats start/target as constants).
    """
    s, a, t = _validate(student, start, target)
    acc = _acc_dtype(s[0].dtype)
    num = sum(((x.to(acc) - y.to(acc)) ** 2).sum() for x, y in zip(s, t))
    den = sum(((x.to(acc) - y.to(acc)) ** 2).sum() for x, y in zip(a, t))
    return (num / den).to(s[0].dtype)


def _fwd_reference(s, a, t):
    acc = _acc_dtype(s[0].dtype)
    with torch.no_grad():
        num = sum(((x.to(acc) - y.to(acc)) ** 2).sum() for x, y in zip(s, t))
        den = sum(((x.to(acc) - y.to(acc)) ** 2).sum() for x, y in zip(a, t))
        return (num / den).to(s[0].dtype), den.clone()


def _bwd_reference(grad, s, t, den):
    acc = _acc_dtype(s[0].dtype)
    with torch.no_grad():
        scale = 2.0 * grad.to(acc) / den
        return [(scale * (x.to(acc) - y.to(acc))).to(x.dtype).contiguous() for x, y in zip(s, t)]


# -------------------------------------------------------------------------------------------- dispatching
def _has_compiled_op() -> bool:
    return _backend.has_compiled() and hasattr(torch.ops.pydistill, "trajectory_loss_fwd")


# Fixed at import (the extension cannot appear later): no per-call attribute probing.
_AVAILABLE_HERE = _AVAILABLE if _has_compiled_op() else tuple(b for b in _AVAILABLE if b not in ("cpp", "cuda"))


def _available() -> tuple[str, ...]:
    return _AVAILABLE_HERE


def _resolve(backend: str, device: torch.device) -> str:
    return _backend.resolve(backend, device, available=_available())


def _impl(backend: str, device: torch.device) -> str:
    """Backend inside the custom ops: the public function already resolved it in eager mode (cheap path);
    "auto" arrives here from compiled graphs and direct ``torch.ops`` calls."""
    if backend in ("cpp", "cuda", "triton", "reference") and backend in _available():
        return backend
    return _resolve(backend, device)


def _fake_fwd(op: str, student, start, target):
    """Fake forward (shapes, dtypes and devices checked with ``torch._check``): (loss [], den [] acc dtype)."""
    _backend.check_fake_lists(op, [("student", student), ("start", start), ("target", target)], _FLOAT_DTYPES)
    s0 = student[0]
    return s0.new_empty(()), s0.new_empty((), dtype=_acc_dtype(s0.dtype))


def _fake_bwd(op: str, grad, student, target, den):
    """Fake backward (checked like ``_fake_fwd``, plus one-element grad and den): one tensor per student."""
    _backend.check_fake_lists(op, [("student", student), ("target", target)], _FLOAT_DTYPES)
    acc = _acc_dtype(student[0].dtype)
    torch._check(grad.numel() == 1, lambda: f"{op}: grad must hold one element, got shape {tuple(grad.shape)}")
    torch._check(
        den.numel() == 1 and den.dtype == acc,
        lambda: f"{op}: den must be one element of dtype {acc}, got {tuple(den.shape)} {den.dtype}",
    )
    return [x.new_empty(x.shape) for x in student]


if _has_compiled_op():

    @torch.library.register_fake("pydistill::trajectory_loss_fwd")
    def _fwd_fake(student, start, target):
        return _fake_fwd("trajectory_loss_fwd", student, start, target)

    @torch.library.register_fake("pydistill::trajectory_loss_bwd")
    def _bwd_fake(grad, student, target, den):
        return _fake_bwd("trajectory_loss_bwd", grad, student, target, den)


@torch.library.custom_op("pydistill::trajectory_loss_triton_fwd", mutates_args=())
def _triton_fwd(
    student: list[torch.Tensor], start: list[torch.Tensor], target: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    from pydistill.kernels import trajectory_loss as tk

    return tk.trajectory_loss_fwd(student, start, target)


@_triton_fwd.register_fake
def _(student, start, target):
    return _fake_fwd("trajectory_loss_triton_fwd", student, start, target)


@torch.library.custom_op("pydistill::trajectory_loss_triton_bwd", mutates_args=())
def _triton_bwd(
    grad: torch.Tensor, student: list[torch.Tensor], target: list[torch.Tensor], den: torch.Tensor
) -> list[torch.Tensor]:
    from pydistill.kernels import trajectory_loss as tk

    return tk.trajectory_loss_bwd(grad, student, target, den)


@_triton_bwd.register_fake
def _(grad, student, target, den):
    return _fake_bwd("trajectory_loss_triton_bwd", grad, student, target, den)


def _fwd_impl(impl: str, student, start, target):
    """Forward on a concrete backend (no dispatcher hop for Triton: we are already inside an opaque op)."""
    if impl == "reference":
        return _fwd_reference(student, start, target)
    if impl == "triton":
        from pydistill.kernels import trajectory_loss as tk

        return tk.trajectory_loss_fwd(student, start, target)
    return torch.ops.pydistill.trajectory_loss_fwd(student, start, target)


def _bwd_impl(impl: str, grad, student, target, den):
    if impl == "reference":
        return _bwd_reference(grad, student, target, den)
    if impl == "triton":
        from pydistill.kernels import trajectory_loss as tk

        return tk.trajectory_loss_bwd(grad, student, target, den)
    return torch.ops.pydistill.trajectory_loss_bwd(grad, student, target, den)


@torch.library.custom_op("pydistill::trajectory_loss", mutates_args=())
def _trajectory_loss_op(
    student: list[torch.Tensor], start: list[torch.Tensor], target: list[torch.Tensor], backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(loss, den)``: the loss (input dtype) and the denominator (accumulation dtype), both 0-dim."""
    return _fwd_impl(_impl(backend, student[0].device), student, start, target)


@_trajectory_loss_op.register_fake
def _(student, start, target, backend):
    return _fake_fwd("trajectory_loss", student, start, target)


@torch.library.custom_op("pydistill::trajectory_loss_backward", mutates_args=())
def _trajectory_loss_backward_op(
    grad: torch.Tensor, student: list[torch.Tensor], target: list[torch.Tensor], den: torch.Tensor, backend: str
) -> list[torch.Tensor]:
    """Gradient wrt ``student``: ``grad * 2 * (student_i - target_i) / den`` per tensor (contiguous)."""
    return _bwd_impl(_impl(backend, student[0].device), grad, student, target, den)


@_trajectory_loss_backward_op.register_fake
def _(grad, student, target, den, backend):
    return _fake_bwd("trajectory_loss_backward", grad, student, target, den)


def _setup_context(ctx, inputs, output):
    student, _start, target, backend = inputs
    _loss, den = output
    ctx.mark_non_differentiable(den)
    ctx.n = len(student)
    ctx.backend = backend
    ctx.save_for_backward(*student, *target, den)


def _backward(ctx, grad_loss, _grad_den):
    n = ctx.n
    saved = ctx.saved_tensors
    student, target, den = list(saved[:n]), list(saved[n : 2 * n]), saved[2 * n]
    none = [None] * n  # start / target: expert snapshots, constants
    if grad_loss is None:
        return list(none), list(none), list(none), None
    grads = torch.ops.pydistill.trajectory_loss_backward(grad_loss, student, target, den, ctx.backend)
    return list(grads), list(none), list(none), None


_trajectory_loss_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------- eager fast path
class _EagerTrajectoryLoss(torch.autograd.Function):
    """Same forward/backward as ``pydistill::trajectory_loss`` (+ its registered autograd), in eager mode."""

    @staticmethod
    def forward(ctx, backend: str, n: int, *tensors):
        s, a, t = list(tensors[:n]), list(tensors[n : 2 * n]), list(tensors[2 * n :])
        loss, den = _fwd_impl(backend, s, a, t)
        ctx.set_materialize_grads(False)  # no zero tensor for the unused den gradient
        ctx.mark_non_differentiable(den)
        ctx.n, ctx.backend = n, backend
        ctx.save_for_backward(*s, *t, den)
        return loss, den

    @staticmethod
    def backward(ctx, grad_loss, _grad_den):
        n = ctx.n
        saved = ctx.saved_tensors
        student, target, den = list(saved[:n]), list(saved[n : 2 * n]), saved[2 * n]
        if grad_loss is None or not any(ctx.needs_input_grad[2 : 2 + n]):
            return (None,) * (2 + 3 * n)
        if torch.is_grad_enabled():  # create_graph=True: the registered op (same double-backward behaviour)
            grads = torch.ops.pydistill.trajectory_loss_backward(grad_loss, student, target, den, ctx.backend)
        else:
            grads = _bwd_impl(ctx.backend, grad_loss, student, target, den)
        return (None, None, *grads) + (None,) * (2 * n)


# ------------------------------------------------------------------------------------------------- public
def trajectory_loss(
    student: TensorOrList,
    start: TensorOrList,
    target: TensorOrList,
    backend: str = "auto",
    *,
    check: bool = False,
) -> torch.Tensor:
    """MTT loss ``sum||student - target||^2 / sum||start - target||^2`` as a 0-dim tensor.

    Args:
        student: student parameters after the synthetic steps: a tensor of any shape (e.g. the flat
            parameter vector) or a list of tensors.
        start: expert parameters the student started from (same structure/shapes); constant, no gradient.
        target: expert parameters M epochs later (same structure/shapes); constant, no gradient.
        backend: "auto", "reference", "cpp", "cuda" or "triton" (see ``pydistill.backends()``).
        check: when True, raise ``ValueError`` if the denominator is 0 or not finite (synchronises).

    Returns:
        0-dim tensor in the input dtype (sums accumulated in fp32, fp64 for fp64). Backward gives
        ``grad * 2 * (student - target) / den`` to ``student`` in one fused pass.
    """
    s, a, t = _validate(student, start, target)
    if not isinstance(backend, str) or backend not in _backend.BACKENDS:
        raise ValueError(f"backend must be one of {_backend.BACKENDS}, got {backend!r}")
    if not torch.compiler.is_compiling():
        backend = _resolve(backend, s[0].device)  # clear errors up front; the op resolves again otherwise
    if _backend.plain_eager(s + a + t):
        loss, den = _EagerTrajectoryLoss.apply(backend, len(s), *s, *a, *t)
    else:
        loss, den = torch.ops.pydistill.trajectory_loss(s, a, t, backend)
    if check:
        d = float(den.detach())
        if d == 0.0 or not math.isfinite(d):
            raise ValueError(
                f"trajectory_loss: the denominator sum ||start - target||^2 is {d}; start and target must "
                "differ and be finite (the loss would be inf/nan)"
            )
    return loss
