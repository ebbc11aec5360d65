"""Run a model with an explicit flat parameter vector (used by DD and MTT unrolls).

A model's parameters are addressed as one flat vector ``w`` of length ``P`` (the concatenation of
``model.named_parameters()`` flattened, in that order). ``functional_forward(model, w, x)`` runs the
model with the parameters taken as views of ``w`` through ``torch.func.functional_call``, so gradients
flow to ``w`` (and to ``x``) while the module's own parameters stay untouched.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["num_params", "flat_params", "unflatten_params", "load_flat_params", "functional_forward", "xavier_flat"]


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def num_params(model: nn.Module) -> int:
    """Number of scalars ``P`` in the flat parameter vector of ``model``."""
    _check_model(model)
    return sum(p.numel() for p in model.parameters())


def flat_params(model: nn.Module) -> torch.Tensor:
    """The model's parameters as one detached flat vector [P] (a copy)."""
    _check_model(model)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflatten_params(model: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views of ``flat`` [P] shaped like each named parameter of ``model`` (differentiable)."""
    _check_model(model)
    if not isinstance(flat, torch.Tensor) or flat.dim() != 1:
        raise ValueError(f"flat must be a 1-D tensor of parameters, got {getattr(flat, 'shape', type(flat))}")
    n = num_params(model)
    if flat.numel() != n:
        raise ValueError(f"flat must have {n} elements (the model's parameter count), got {flat.numel()}")
    # one split (backward: one cat) rather than a slice per parameter (backward: a zero-filled [P] gradient each,
    # summed; 3% / 8% of an MTT / DD iteration on one CPU thread, benchmarks/parity/{mtt,dd}_step.py)
    named = list(model.named_parameters())
    pieces = flat.split([p.numel() for _, p in named])
    return {name: piece.view(p.shape) for (name, p), piece in zip(named, pieces)}


@torch.no_grad()
def load_flat_params(model: nn.Module, flat: torch.Tensor) -> nn.Module:
    """Copy the flat vector [P] into the model's parameters in place; returns the model."""
    for name, v in unflatten_params(model, flat).items():
        model.get_parameter(name).copy_(v)
    return model


def functional_forward(model: nn.Module, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` computed with the parameters in ``flat`` [P]; differentiable in ``flat`` and ``x``.

    Buffers (e.g. BatchNorm running statistics) are the module's own, used as in a normal call.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if flat.device != x.device:
        raise ValueError(f"flat and x must be on the same device, got {flat.device} and {x.device}")
    return torch.func.functional_call(model, unflatten_params(model, flat), (x,))


def xavier_flat(model: nn.Module, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh flat parameter vector [P] for ``model`` as in DD's random-init mode: Xavier-normal
    weights (tensors with >= 2 dims), zero biases, norm weights 1 / biases 0; drawn from ``generator``
    (on the generator's device, then moved to the model's, so a CPU generator gives the same vector anywhere)."""
    _check_model(model)
    p0 = next(model.parameters())
    dev = generator.device if generator is not None else p0.device
    parts = []
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            fan_in = p.shape[1] * p[0, 0].numel()
            fan_out = p.shape[0] * p[0, 0].numel()
            std = (2.0 / (fan_in + fan_out)) ** 0.5
            t = torch.randn(p.shape, generator=generator, device=dev, dtype=p0.dtype).to(p0.device) * std
        else:
            is_norm_weight = name.endswith("weight")  # 1-D weights belong to norm layers
            t = torch.ones_like(p.detach()) if is_norm_weight else torch.zeros_like(p.detach())
        parts.append(t.reshape(-1))
    return torch.cat(parts)
