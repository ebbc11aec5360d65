"""Small shared helpers: atomic file writes, checked safe loading, run-folder locks, graceful stop signals,
seeding, RNG state capture/restore, devices, memory."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import resource
import signal
import socket
import sys
import tempfile
import threading
import time
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
    "RunLock",
    "FolderLockedError",
    "StopSignal",
    "deferred_stop",
    "stop_requested",
    "raise_if_stop_requested",
    "stop_signals_raise",
    "ensure_writable_dir",
    "ensure_writable_file",
    "nonfinite_names",
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


_TRAILER_TAG = b"pydistill-sha256:"  # zip comment of a file from save_checked: tag + 64 hex digits of the rest
_TRAILER_LEN = len(_TRAILER_TAG) + 64


def _seal(data: bytes) -> bytes:
    """``torch.save`` bytes (a zip whose end record has an empty comment) -> the same zip with the SHA-256 of
    ``data`` as its comment; still a plain ``torch.load``-able file."""
    if len(data) < 22 or data[-22:-18] != b"PK\x05\x06" or data[-2:] != b"\x00\x00":
        raise RuntimeError("torch.save did not write a zip archive with an empty comment; cannot seal it")
    comment = _TRAILER_TAG + hashlib.sha256(data).hexdigest().encode()
    return data[:-2] + len(comment).to_bytes(2, "little") + comment


def _unseal(data: bytes, path) -> bytes | None:
    """The original ``torch.save`` bytes of a sealed file, verified against its SHA-256 (raises
    :class:`CorruptCheckpointError` on a mismatch); None when ``data`` carries no seal (an older file)."""
    n = _TRAILER_LEN
    if len(data) < n + 22 or data[-n:-64] != _TRAILER_TAG or data[-n - 2 : -n] != n.to_bytes(2, "little"):
        if len(data) >= 22 and data[-22:-18] == b"PK\x05\x06" and data[-2:] == b"\x00\x00":
            return None  # an unsealed zip (written before seals existed): its contents digest still applies
        raise CorruptCheckpointError(
            f"{path} is truncated or corrupt (its zip end record / SHA-256 seal is "
            "missing or damaged); delete it to start over"
        )
    original = data[: -n - 2] + b"\x00\x00"
    expected = data[-64:].decode("ascii", "replace")
    actual = hashlib.sha256(original).hexdigest()
    if actual != expected:
        raise CorruptCheckpointError(
            f"{path} is corrupt: SHA-256 of its bytes is {actual}, the file records {expected}; delete it to start over"
        )
    return original


def save_checked(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save`` of the dict ``obj`` plus a ``"sha256"`` entry (:func:`state_digest` of the rest), atomically.

    The zip's comment also records the SHA-256 of the file's bytes, so :func:`load_checked` verifies the file
    before deserialising anything. The file stays a plain ``torch.load``-able dict. ``obj`` must hold only
    tensors, containers and plain scalars/strings (what ``torch.load(weights_only=True)`` reads back).
    """
    if not isinstance(obj, dict):
        raise TypeError(f"obj must be a dict, got {type(obj).__name__}")
    if _DIGEST_KEY in obj:
        raise ValueError(f"obj must not have a {_DIGEST_KEY!r} key (it is added by save_checked)")
    buf = io.BytesIO()
    torch.save({**obj, _DIGEST_KEY: state_digest(obj)}, buf)
    atomic_write_bytes(path, _seal(buf.getvalue()))


def load_checked(path: str | os.PathLike, map_location="cpu", weights_only: bool = True) -> dict:
    """Load a file written by :func:`save_checked`, never executing code from it; returns the dict without
    ``"sha256"``.

    Order: the SHA-256 of the raw bytes is verified first (files from older versions carry none and skip this
    step), then ``torch.load(weights_only=True)`` deserialises (tensors, containers and scalars only: a pickled
    object that would run code is refused), then the digest of the contents is verified. ``weights_only`` is
    accepted for compatibility and ignored: loading is always restricted. Raises :class:`CorruptCheckpointError`
    naming the file when it is truncated, altered, holds objects other than the above or lacks the digest;
    FileNotFoundError when it does not exist.
    """
    del weights_only  # always restricted (kept so older call sites work)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    data = path.read_bytes()
    original = _unseal(data, path)
    try:
        obj = torch.load(
            io.BytesIO(data if original is None else original), map_location=map_location, weights_only=True
        )
    except Exception as exc:  # noqa: BLE001 - torch raises various errors on a damaged zip / refused pickle
        raise CorruptCheckpointError(
            f"{path} is truncated, corrupt or holds objects a checkpoint cannot hold "
            f"(torch.load(weights_only=True) failed: {str(exc)[:300]}); delete it to "
            "start over"
        ) from exc
    if not isinstance(obj, dict) or _DIGEST_KEY not in obj:
        raise CorruptCheckpointError(
            f"{path} has no {_DIGEST_KEY!r} integrity entry (not written by "
            "pydistill.utils.save_checked); it cannot be verified. Delete it to start over"
        )
    obj = dict(obj)
    expected = obj.pop(_DIGEST_KEY)
    actual = state_digest(obj)
    if actual != expected:
        raise CorruptCheckpointError(
            f"{path} is corrupt: digest of its contents is {actual}, the file records "
            f"{expected}; delete it to start over"
        )
    return obj


# ------------------------------------------------------------------------------------------------------------
# run-folder locks
# ------------------------------------------------------------------------------------------------------------
class FolderLockedError(ValueError):
    """Another live process holds the lock of an output folder or file."""


_HELD_LOCKS: dict[str, list] = {}  # real path of the lock file -> [fd, depth] (re-entrant within a process)
_LOCKS_GUARD = threading.Lock()


class RunLock:
    """Exclusive lock on an output folder (``LOCK_NAME`` inside it) or file (``<file>.lock`` beside it).

    An advisory ``fcntl.flock`` on the lock file: the kernel releases it when the owner dies (even by SIGKILL),
    so a lock left by a dead process is taken over without any guessing. The file records the owner's pid,
    host, command and start time, named in the :class:`FolderLockedError` a second run gets. Re-entrant
    within a process. Use as a context manager or with :meth:`acquire` / :meth:`release`.
    """

    LOCK_NAME = ".pydistill.lock"

    def __init__(self, target: str | os.PathLike, *, is_dir: bool = True, command: str = ""):
        target = Path(target)
        self.path = (target / self.LOCK_NAME) if is_dir else target.with_name(target.name + ".lock")
        self.target = target
        self.command = command or " ".join(sys.argv)

    def _owner(self) -> str:
        try:
            info = json.loads(self.path.read_text())
            return (
                f"pid {info.get('pid')} on host {info.get('host')!r} (started {info.get('started')}, "
                f"command: {info.get('command')})"
            )
        except (OSError, ValueError):
            return "another process (its lock file is unreadable)"

    def acquire(self) -> "RunLock":
        import fcntl

        key = os.path.realpath(self.path)
        with _LOCKS_GUARD:
            if key in _HELD_LOCKS:
                _HELD_LOCKS[key][1] += 1
                return self
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(10):  # the lock file may be replaced between open and flock by a releasing owner
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    raise FolderLockedError(
                        f"{self.target} is in use by {self._owner()}; wait for that run to "
                        "finish or choose another output path"
                    ) from None
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            else:  # pragma: no cover - a pathological race
                raise FolderLockedError(f"could not lock {self.path}: it keeps being replaced")
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": self.command,
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            }
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(info) + "\n").encode())
            _HELD_LOCKS[key] = [fd, 1]
        return self

    def release(self) -> None:
        key = os.path.realpath(self.path)
        with _LOCKS_GUARD:
            entry = _HELD_LOCKS.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _HELD_LOCKS[key]
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # unlink while still locked: a waiter that opened it re-checks the inode
            os.close(entry[0])

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _check_writable(directory: Path, what: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".pydistill-write-test.", dir=directory)
    except OSError as exc:
        raise ValueError(f"{what}: cannot write in {str(directory)!r} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def ensure_writable_dir(path, what: str = "--out") -> Path:
    """Create the folder ``path`` if needed and check a file can be written in it, before any work.

    Raises ValueError naming ``what`` for an empty path, a path naming an existing file, or an unwritable
    folder."""
    if path is None or not str(path).strip():
        raise ValueError(f"{what} must name a folder, got {str(path)!r}")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what}={str(p)!r} is an existing file; it must name a folder (new or existing)")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{what}: cannot create folder {str(p)!r} ({exc.strerror or exc})") from None
    _check_writable(p, what)
    return p


def ensure_writable_file(path, what: str = "--out") -> Path:
    """Check that the file ``path`` can be (re)written: not empty, not a folder, its folder writable.
    Creates the parent folder if needed. Raises ValueError naming ``what``."""
    if path is None or not str(path).strip():
        raise ValueError(f"{what} must name a file, got {str(path)!r}")
    p = Path(path)
    if p.is_dir() or str(path).endswith(os.sep):
        raise ValueError(f"{what}={str(p)!r} is a folder; it must name a file to write")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{what}: cannot create folder {str(p.parent)!r} ({exc.strerror or exc})") from None
    _check_writable(p.parent, what)
    return p


# ------------------------------------------------------------------------------------------------------------
# graceful stop on SIGINT / SIGTERM
# ------------------------------------------------------------------------------------------------------------
class StopSignal(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the work; ``exit_code`` is 128 + the signal number (130, 143). ``message``:
    one line saying what was saved and how to resume."""

    def __init__(self, signum: int, message: str = ""):
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        self.message = message or f"interrupted by {signal.Signals(self.signum).name}"
        super().__init__(self.message)


_STOP = {"signum": None, "depth": 0}
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _deferring_handler(signum, frame):
    if _STOP["signum"] is not None:  # a second signal: stop now
        raise StopSignal(
            signum, f"{signal.Signals(signum).name} received twice: stopped at once (the last checkpoint is kept)"
        )
    _STOP["signum"] = signum
    with contextlib.suppress(Exception):
        print(
            f"\n{signal.Signals(signum).name}: stopping after the current step and saving a checkpoint "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )


def _raising_handler(signum, frame):
    raise StopSignal(signum)


@contextlib.contextmanager
def deferred_stop():
    """Inside, the first SIGINT/SIGTERM only sets a flag (:func:`stop_requested`) that the loop polls after
    each step, so it can finish the step, checkpoint and raise :class:`StopSignal`; a second signal raises at
    once. Also usable as a decorator. Outside the main thread it does nothing (Python delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
    if _STOP["depth"] == 0:
        _STOP["signum"] = None
    _STOP["depth"] += 1
    for s in _STOP_SIGNALS:
        signal.signal(s, _deferring_handler)
    try:
        yield
    finally:
        _STOP["depth"] -= 1
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        if _STOP["depth"] == 0:
            _STOP["signum"] = None


@contextlib.contextmanager
def stop_signals_raise():
    """Inside, SIGTERM (like SIGINT) raises :class:`StopSignal` at once (exit code 143 instead of a silent
    death), for work that keeps its own per-item records (evaluation networks, experts). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
    for s in _STOP_SIGNALS:
        signal.signal(s, _raising_handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def stop_requested() -> int | None:
    """The signal number received inside :func:`deferred_stop`, or None."""
    return _STOP["signum"]


def raise_if_stop_requested(save=None, message: str = "") -> None:
    """When a stop was requested: call ``save()`` (write the checkpoint), then raise :class:`StopSignal` with
    ``message`` (one line: where the work is kept, how to resume)."""
    signum = _STOP["signum"]
    if signum is None:
        return
    if save is not None:
        save()
    raise StopSignal(signum, f"{signal.Signals(signum).name}: {message}" if message else "")


def nonfinite_names(named: dict) -> list[str]:
    """Names of the floating tensors / floats in ``named`` that hold NaN or inf (one host sync per device)."""
    bad, by_device = [], {}
    for name, v in named.items():
        if isinstance(v, torch.Tensor):
            if v.is_floating_point() and v.numel():
                by_device.setdefault(v.device, []).append((name, v))
        elif isinstance(v, float) and not math.isfinite(v):
            bad.append(name)
    for items in by_device.values():
        with torch.no_grad():
            ok = torch.stack([torch.isfinite(v).all() for _, v in items]).cpu().tolist()
        bad += [name for (name, _), good in zip(items, ok) if not good]
    return bad


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
