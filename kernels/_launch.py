"""Launch helpers shared by the multi-tensor Triton launchers (match_loss, trajectory_loss)."""

from __future__ import annotations

import contextlib

import torch


def on_device(device: torch.device):
    """Make ``device`` current for a launch (Triton launches on the current CUDA device, so tensors on cuda:1
    while cuda:0 is current need it); a no-op off CUDA."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def stream_id(device: torch.device) -> int:
    """The current stream's handle on ``device`` (0 off CUDA): part of the launchers' cache keys, since a cached
    table or scratch buffer is only used in the order of the stream it was first made on."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
