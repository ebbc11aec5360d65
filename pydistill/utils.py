"""Small shared helpers: atomic file writes, seeding, RNG state capture/restore, devices, memory."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import random
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_save",
    "save_checked",
    "state_digest",
    "load_checked",
    "CorruptCheckpointError",
    "enable_determinism",
    "atomic_target",
    "seed_everything",
    "get_rng_state",
    "set_rng_state",
    "resolve_device",
    "make_generator",
    "peak_memory_mb",
    "to_jsonable",
]


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    A crash before the rename leaves the old file (if any) untouched and no partial file at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` done atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class CorruptCheckpointError(ValueError):
    """A checkpoint written by :func:`save_checked` is truncated, corrupt, or not such a file."""


_DIGEST_KEY = "sha256"


def _feed(h, obj) -> None:
    """Feed a canonical, type-tagged encoding of ``obj`` into the hash ``h`` (tensors by dtype, shape, bytes)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"A{a.dtype.str}{a.shape}:".encode() + a.tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k in sorted(obj, key=repr):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, bool) or obj is None:
        h.update(f"B{obj!r};".encode())
    elif isinstance(obj, (int, np.integer)):
        h.update(f"I{int(obj)};".encode())
    elif isinstance(obj, (float, np.floating)):
        h.update(f"F{float(obj).hex()};".encode())
    elif isinstance(obj, str):
        b = obj.encode("utf-8", "surrogatepass")
        h.update(f"S{len(b)}:".encode() + b)
    elif isinstance(obj, (bytes, bytearray)):
        h.update(f"Y{len(obj)}:".encode() + bytes(obj))
    else:  # devices, dtypes, small objects: their repr
        r = repr(obj).encode()
        h.update(f"R{type(obj).__qualname__}{len(r)}:".encode() + r)


def state_digest(obj: Any) -> str:
    """SHA-256 (hex) of a nested checkpoint object: dicts, lists, tuples, tensors, arrays and scalars."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def save_checked(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save`` of the dict ``obj`` plus a ``"sha256"`` entry (:func:`state_digest` of the rest), atomically.

    The file stays a plain ``torch.load``-able dict; :func:`load_checked` verifies the digest.
    """
    if not isinstance(obj, dict):
        raise TypeError(f"obj must be a dict, got {type(obj).__name__}")
    if _DIGEST_KEY in obj:
        raise ValueError(f"obj must not have a {_DIGEST_KEY!r} key (it is added by save_checked)")
    atomic_save({**obj, _DIGEST_KEY: state_digest(obj)}, path)


def load_checked(path: str | os.PathLike, map_location="cpu", weights_only: bool = False) -> dict:
    """Load a file written by :func:`save_checked` and verify its digest; returns the dict without ``"sha256"``.

    Raises :class:`CorruptCheckpointError` naming the file when it is truncated, altered or lacks the digest,
    FileNotFoundError when it does not exist. ``weights_only=False`` unpickles arbitrary objects: load only
    files you wrote.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as exc:  # noqa: BLE001 - torch raises various errors on a damaged zip / pickle
        raise CorruptCheckpointError(f"{path} is truncated or corrupt (torch.load failed: {exc}); delete it to "
                                     "start over") from exc
    if not isinstance(obj, dict) or _DIGEST_KEY not in obj:
        raise CorruptCheckpointError(f"{path} has no {_DIGEST_KEY!r} integrity entry (not written by "
                                     "pydistill.utils.save_checked); it cannot be verified. Delete it to start over")
    obj = dict(obj)
    expected = obj.pop(_DIGEST_KEY)
    actual = state_digest(obj)
    if actual != expected:
        raise CorruptCheckpointError(f"{path} is corrupt: digest of its contents is {actual}, the file records "
                                     f"{expected}; delete it to start over")
    return obj


def enable_determinism(num_threads: int | None = 1) -> None:
    """Make runs bit-reproducible where PyTorch allows it.

    ``torch.use_deterministic_algorithms(True)`` (ops without a deterministic kernel then raise), cuDNN
    deterministic and not benchmarking, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (when not set; effective when set
    before the first cuBLAS call), and ``num_threads`` intra-op CPU threads (None: keep the current count;
    the default 1 gives the same CPU results on machines with different core counts).
    """
    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
        torch.set_num_threads(num_threads)
        with contextlib.suppress(RuntimeError):  # only settable before the first inter-op parallel work
            torch.set_num_interop_threads(1)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """The global RNG states of Python, NumPy and torch (CPU + CUDA), as plain picklable objects."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore states captured by :func:`get_rng_state`."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None -> ``cuda`` when available, else ``cpu``; anything else is checked and returned."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} requested but CUDA is not available on this machine")
    return dev


def make_generator(device: str | torch.device, seed: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def peak_memory_mb(device: str | torch.device) -> float:
    """Peak memory in MiB: CUDA max allocated on a GPU device, else the process's max RSS."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, tuples, paths, tensors, NumPy scalars, devices and dtypes to JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if callable(obj) and hasattr(obj, "__qualname__"):  # e.g. a network factory as Config.model: stable across runs
        return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    return repr(obj)


def dumps(obj: Any) -> str:
    """Deterministic JSON for ``obj`` (via :func:`to_jsonable`), keys sorted."""
    return json.dumps(to_jsonable(obj), sort_keys=True, indent=1)
