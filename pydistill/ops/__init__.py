"""Fused ops of pydistill (public API).

=====================  ==========================================================
``match_loss``         DC gradient-matching distance over lists of gradients
``trajectory_loss``    MTT normalized parameter-matching loss
``diff_augment``       Differentiable Siamese Augmentation (DSA) on NCHW batches
``SumTree``            priority sampling for replay buffers
=====================  ==========================================================

Every op takes ``backend="auto"`` ("reference", "cpp", "cuda", "triton"); see ``pydistill.backends()``.
"""

from pydistill.ops.diff_augment import (
    DEFAULT_STRATEGY,
    DSAParams,
    diff_augment,
    diff_augment_reference,
    diff_augment_sequential,
    sample_dsa_params,
)
from pydistill.ops.match_loss import METRICS, match_loss, match_loss_reference
from pydistill.ops.sum_tree import SumTree, importance_weights
from pydistill.ops.trajectory_loss import trajectory_loss, trajectory_loss_reference

# Importing the submodules binds their names on this package; the imports above rebind each name to the function
# of the same name, so ``pydistill.ops.match_loss`` is the op (the module stays in sys.modules).
__all__ = [
    "DEFAULT_STRATEGY",
    "DSAParams",
    "METRICS",
    "SumTree",
    "diff_augment",
    "diff_augment_reference",
    "diff_augment_sequential",
    "importance_weights",
    "match_loss",
    "match_loss_reference",
    "sample_dsa_params",
    "trajectory_loss",
    "trajectory_loss_reference",
]
