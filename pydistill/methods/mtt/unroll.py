"""The MTT student unroll theta_hat_{n+1} = theta_hat_n - alpha * grad l(A_n(b_n); theta_hat_n), n < N.

Memory (``unroll``):
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

import torch
import torch.nn.functional as F

from pydistill.functional import functional_forward

__all__ = ["UNROLLS", "unroll_student"]

UNROLLS = ("plain", "recompute")


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
    if unroll not in UNROLLS:
        raise ValueError(f"unroll must be one of {UNROLLS}, got {unroll!r}")
    if aug_params is None:
        aug_params = [None] * len(indices)
    plan = _Plan(net, labels, indices, strategy, aug_params)
    if unroll == "recompute":
        return _RecomputeUnroll.apply(images, lr, w0, plan)
    w = w0.detach().clone().requires_grad_(True)
    for n in range(len(indices)):
        w = w - lr * plan.grad(w, images, n, create_graph=True)
    return w
