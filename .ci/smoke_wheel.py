"""Smoke test of an installed pydistill wheel, run by .ci/run from a folder outside the repository with the fresh
virtual environment's python: the wheel's package is the one imported, its _C loads, one op runs forward and
backward and equals the PyTorch reference."""

import sys
from pathlib import Path

import torch

import pydistill
from pydistill.ops import match_loss

venv = Path(sys.prefix).resolve()
where = Path(pydistill.__file__).resolve()
assert venv in where.parents, f"imported {where}, not the wheel installed in {venv}"
b = pydistill.backends()
assert b["cpp"], f"the wheel's compiled part did not load: {b}"
print("pydistill", pydistill.__version__, "from", where.parent, "backends:", b)
g = torch.Generator().manual_seed(0)
real = [torch.randn(5, 3, 3, 3, generator=g), torch.randn(4, 7, generator=g)]
grads = {}
for backend in ("cpp", "reference"):
    syn = [
        torch.randn(t.shape, generator=torch.Generator().manual_seed(i)).requires_grad_() for i, t in enumerate(real)
    ]
    loss = match_loss(syn, real, backend=backend)
    loss.backward()
    grads[backend] = (loss.detach(), [s.grad for s in syn])
torch.testing.assert_close(grads["cpp"][0], grads["reference"][0])
for a, r in zip(grads["cpp"][1], grads["reference"][1]):
    torch.testing.assert_close(a, r)
print(f"match_loss cpp == reference: {float(grads['cpp'][0]):.6f}, forward and backward")
