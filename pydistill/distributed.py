"""Multi-process runs on ``torch.distributed`` (launched with ``torchrun``); every helper is a no-op in one process.

Launch: ``torchrun --nproc_per_node N -m pydistill distill ...``. :func:`init` reads ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) from the environment and starts the process group: NCCL
when the rank drives a GPU, gloo on the CPU.

How the work is split (results equal a one-process run with the same seed, see each method):

- class-sharded methods (DC/DSA/DM): rank r computes the classes c with ``c % world == r`` with per-(iteration,
  class) random generators (:func:`derive_seed`), then the image gradients are summed (:func:`all_reduce_`);
- MTT: expert segments s with ``s % world == r``, gradients summed then divided by the number of segments;
- experts and evaluation networks: job i runs on rank ``i % world`` and results are gathered
  (:func:`all_gather_object`);
- files are written by rank 0 only (:func:`is_main`, :func:`main_first`), after a barrier where it matters.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from typing import Any, Iterable, Sequence, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "init",
    "destroy",
    "is_initialized",
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "is_main",
    "env_world_size",
    "owner",
    "owns",
    "shard",
    "shard_indices",
    "derive_seed",
    "derived_generator",
    "all_reduce_",
    "all_reduce_grads_",
    "broadcast_",
    "all_gather_object",
    "broadcast_object",
    "barrier",
    "main_first",
    "device_for_rank",
]

T = TypeVar("T")


# --------------------------------------------------------------------------------------------- process group
def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"environment variable WORLD_SIZE must be an integer, got {text!r}") from None
    if n < 1:
        raise ValueError(f"environment variable WORLD_SIZE must be >= 1, got {n}")
    return n


def _env_int(name: str, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None:
        if default is None:
            raise ValueError(f"environment variable {name} is required when WORLD_SIZE > 1 (launch with torchrun)")
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


def init(backend: str | None = None, *, device: str | torch.device | None = None, timeout_s: float = 1800.0) -> bool:
    """Start the process group from torchrun's environment; returns True when running with > 1 process.

    backend: None -> "nccl" when ``device`` (default: CUDA when available) is a GPU, else "gloo".
    With ``WORLD_SIZE`` unset or 1 nothing happens (returns False). Calling it twice is harmless.
    On a GPU rank the current CUDA device becomes ``LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    world = env_world_size()
    if world == 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world:
        raise ValueError(f"environment variable RANK must be in [0, WORLD_SIZE={world}), got {rank}")
    if device is None or str(device) == "auto":
        use_cuda = torch.cuda.is_available()
    else:
        use_cuda = torch.device(device).type == "cuda"
    if backend is None:
        backend = "nccl" if use_cuda else "gloo"
    if backend not in ("nccl", "gloo", "mpi", "ucc"):
        raise ValueError(f"backend must be 'nccl', 'gloo', 'mpi', 'ucc' or None, got {backend!r}")
    kwargs = {}
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
        torch.cuda.set_device(local_rank)
        if backend == "nccl":
            kwargs["device_id"] = torch.device("cuda", local_rank)
    dist.init_process_group(
        backend=backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=float(timeout_s)), **kwargs
    )
    return True


def destroy() -> None:
    """Tear the process group down (no-op when none)."""
    if is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_initialized() else 1


def get_local_rank() -> int:
    """The rank on this machine (``LOCAL_RANK``; 0 when not distributed)."""
    return _env_int("LOCAL_RANK", get_rank()) if is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and prints."""
    return get_rank() == 0


def device_for_rank(device: str | torch.device | None = "auto") -> torch.device:
    """The device this rank should use: ``cuda:LOCAL_RANK`` for "auto"/"cuda" on a GPU rank, else ``device``."""
    from pydistill.utils import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None and is_initialized():
        return torch.device("cuda", get_local_rank())
    return dev


# --------------------------------------------------------------------------------------------- sharding
def _check_layout(rank, world):
    rank = get_rank() if rank is None else rank
    world = get_world_size() if world is None else world
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world_size must be a positive int, got {world!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"rank must be an int in [0, world_size={world}), got {rank!r}")
    return rank, world


def owner(i: int, world_size: int | None = None) -> int:
    """The rank that runs item ``i``: ``i % world_size``."""
    _, world = _check_layout(0, world_size)
    if isinstance(i, bool) or not isinstance(i, int) or i < 0:
        raise ValueError(f"i must be an int >= 0, got {i!r}")
    return i % world


def owns(i: int, rank: int | None = None, world_size: int | None = None) -> bool:
    """True when ``rank`` (default: this one) runs item ``i``."""
    rank, world = _check_layout(rank, world_size)
    return owner(i, world) == rank


def shard_indices(n: int, rank: int | None = None, world_size: int | None = None) -> list[int]:
    """The indices in ``range(n)`` this rank runs: ``rank, rank + world, ...`` (round robin)."""
    rank, world = _check_layout(rank, world_size)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    return list(range(rank, n, world))


def shard(items: Sequence[T] | Iterable[T], rank: int | None = None, world_size: int | None = None) -> list[T]:
    """Items i with ``i % world_size == rank`` (classes, experts, evaluation models, segments)."""
    rank, world = _check_layout(rank, world_size)
    return [x for i, x in enumerate(items) if i % world == rank]


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed determined by ``seed`` and ``keys`` only (e.g. iteration, outer step, class).

    Used for randomness that must not depend on how work is laid out over ranks: every rank derives the
    same stream for the same (seed, keys), whichever rank runs it.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    h = hashlib.blake2b(digest_size=8)
    h.update(str(int(seed)).encode())
    for k in keys:
        if isinstance(k, bool) or not isinstance(k, (int, str)):
            raise TypeError(f"keys must be ints or strings, got {k!r}")
        h.update(b"|" + str(k).encode())
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)


def derived_generator(device, seed: int, *keys: int | str) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derive_seed` ``(seed, *keys)``."""
    return torch.Generator(device=torch.device(device)).manual_seed(derive_seed(seed, *keys))


# --------------------------------------------------------------------------------------------- collectives
def _tensors(tensors) -> list[torch.Tensor]:
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    out = list(tensors)
    for i, t in enumerate(out):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors[{i}] must be a torch.Tensor, got {type(t).__name__}")
    return out


def _comm_view(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A tensor the backend can reduce in place (NCCL needs CUDA, gloo CPU); and whether to copy back."""
    backend = dist.get_backend()
    if backend == "nccl" and t.device.type != "cuda":
        return t.cuda(), True
    if backend == "gloo" and t.device.type != "cpu":
        return t.cpu(), True
    if not t.is_contiguous():
        return t.contiguous(), True
    return t, False


def all_reduce_(tensors, op: str = "sum") -> list[torch.Tensor]:
    """Reduce each tensor in place across ranks (``op`` "sum" or "mean"); no-op in one process.

    Summing a gradient that is zero on every rank but one is exact (bit-identical to one process).
    """
    if op not in ("sum", "mean"):
        raise ValueError(f"op must be 'sum' or 'mean', got {op!r}")
    ts = _tensors(tensors)
    if not is_initialized():
        return ts
    world = get_world_size()
    for t in ts:
        buf, copy_back = _comm_view(t.detach())
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        if op == "mean":
            buf.div_(world)
        if copy_back:
            t.detach().copy_(buf)
    return ts


def all_reduce_grads_(params, op: str = "sum") -> None:
    """All-reduce ``p.grad`` of each parameter (a missing grad counts as zeros and is created)."""
    ps = _tensors(params)
    if not is_initialized():
        return
    for p in ps:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_([p.grad for p in ps], op=op)


def broadcast_(tensors, src: int = 0) -> list[torch.Tensor]:
    """Overwrite each tensor in place with rank ``src``'s values (e.g. the synthetic set); no-op in one process."""
    ts = _tensors(tensors)
    if not is_initialized():
        return ts
    _check_layout(src, get_world_size())
    for t in ts:
        buf, copy_back = _comm_view(t.detach())
        dist.broadcast(buf, src=src)
        if copy_back:
            t.detach().copy_(buf)
    return ts


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` in one process."""
    if not is_initialized():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank; ``obj`` itself in one process."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. creates a folder or downloads), then the others; a no-op alone."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()
