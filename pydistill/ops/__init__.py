"""Fused ops of pydistill (public API).

=====================  ==========================================================
``match_loss``         DC gradient-matching distance over lists of gradients
``trajectory_loss``    MTT normalized parameter-matching loss
``diff_augment``       Differentiable Siamese Augmentation (DSA) on NCHW batches
``SumTree``            priority sampling for replay buffers
=====================  ==========================================================

Every op takes ``backend="auto"`` ("reference", "cpp", "cuda", "triton"); see ``pydistill.backends()``.
"""
import importlib

_EXPORTS = {
    "match_loss": "match_loss",
    "match_loss_reference": "match_loss",
    "trajectory_loss": "trajectory_loss",
    "trajectory_loss_reference": "trajectory_loss",
    "diff_augment": "diff_augment",
    "diff_augment_reference": "diff_augment",
    "DSAParams": "diff_augment",
    "sample_dsa_params": "diff_augment",
    "SumTree": "sum_tree",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pydistill.ops' has no attribute {name!r}")
    module = importlib.import_module(f"pydistill.ops.{_EXPORTS[name]}")
    return getattr(module, name)
