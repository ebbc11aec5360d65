"""MTT: dataset distillation by matching training trajectories (Cazenavette et al., CVPR 2022).

Experts (``train_experts``): networks trained with plain SGD on the real data; their flat parameters
theta*_t are saved before training (t = 0) and after every epoch t = 1..E.

One distillation iteration (paper notation):

    pick a random expert and t ~ U{0, ..., max_start_epoch - 1};  theta_hat_0 = theta*_t
    for n in 0 .. N-1:                                       # N = syn_steps
        b_n   = mini-batch of S (batch_syn images, a fresh shuffle when exhausted), A_n = DSA draw per sample
        theta_hat_{n+1} = theta_hat_n - alpha * grad_theta l(A_n(b_n); theta_hat_n)
    L = ||theta_hat_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2       # ops.trajectory_loss
    S     <- SGD_momentum(S, dL/dS)            (lr_img, momentum 0.5)
    alpha <- positive learnable lr, see below  (lr_lr,  momentum 0.5)

Learnable lr: alpha = exp(log_alpha) (always > 0; the original could turn negative / explode).
``lr_lr`` is given in the original's units (a step on alpha itself); the optimiser on log_alpha uses
``lr_lr / alpha_0**2`` so that its first step equals the original update, alpha_0 the initial lr.

Memory (``Config.unroll``): ``"plain"`` or the exact constant-memory ``"recompute"`` (see :mod:`.unroll`).

Modules: :mod:`.experts` (expert trajectories: training, storage, the ``pydistill experts`` command),
:mod:`.unroll` (the student unroll, plain or constant-memory exact) and :mod:`.method` (the distillation loop).
"""

from __future__ import annotations

from pydistill.methods.mtt.experts import EXPERT_FORMAT, ExpertBuffer, register_cli, train_experts
from pydistill.methods.mtt.method import MTT, Config
from pydistill.methods.mtt.unroll import unroll_student

__all__ = ["Config", "MTT", "ExpertBuffer", "train_experts", "register_cli", "EXPERT_FORMAT", "unroll_student"]
