"""Probe: do TORCH_CHECK failures inside the compiled CPU/CUDA ops raise cleanly (no crash)?"""
import sys

import torch

import pydistill  # noqa: F401

dev = sys.argv[1]
tree = torch.zeros(32, device=dev)  # float32: wrong dtype on purpose
u = torch.rand(3, dtype=torch.float64, device=dev)
try:
    torch.ops.pydistill.sum_tree_sample(tree, u)
    print(dev, "sum_tree_sample: NO ERROR RAISED")
except RuntimeError as e:
    print(dev, "sum_tree_sample raised:", str(e).splitlines()[0][:100])
try:
    a = [torch.rand(3, 4, device=dev)]
    b = [torch.rand(3, 5, device=dev)]
    torch.ops.pydistill.trajectory_loss_fwd(a, b, b)
    print(dev, "trajectory_loss_fwd: NO ERROR RAISED")
except RuntimeError as e:
    print(dev, "trajectory_loss_fwd raised:", str(e).splitlines()[0][:100])
