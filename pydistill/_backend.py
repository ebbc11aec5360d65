"""Which compiled backends this install has, and the backend choice per call.

Backends: ``"reference"`` (plain PyTorch, runs anywhere), ``"cpp"`` (pydistill._C CPU kernels),
``"cuda"`` (pydistill._C CUDA kernels), ``"triton"`` (kernels/ Triton kernels; on the CPU only under
``TRITON_INTERPRET=1``). ``"auto"`` picks the fastest available for the tensors' device.
"""

from __future__ import annotations

import os
import warnings

import torch

BACKENDS = ("auto", "reference", "cpp", "cuda", "triton")


def check_torch_version(built: str, built_cuda: str | None, running: str, running_cuda: str | None) -> None:
    """ImportError naming both versions when pydistill._C was built against another torch release (or, for a CUDA
    build, another CUDA) than the one imported: its C++ ABI would not match (undefined symbols at best)."""
    if os.environ.get("PYDISTILL_SKIP_TORCH_CHECK") == "1":
        return
    if built.split("+")[0] != running.split("+")[0] or (built_cuda is not None and built_cuda != running_cuda):
        raise ImportError(
            f"pydistill's compiled part was built against torch {built}"
            f"{'' if built_cuda is None else f' (CUDA {built_cuda})'}, but torch {running}"
            f"{'' if running_cuda is None else f' (CUDA {running_cuda})'} is installed. Install the pydistill wheel "
            f"built for your torch (its version tag +pt<major><minor>cu<cuda> names it), or build one: "
            "pip install --no-build-isolation . (README: 'Build wheels for your torch/CUDA'). "
            "PYDISTILL_SKIP_TORCH_CHECK=1 skips this check at your own risk."
        )


try:  # recorded by setup.py at build time; absent in a source tree never built
    from pydistill._build_info import CUDA_VERSION as _BUILT_CUDA
    from pydistill._build_info import TORCH_VERSION as _BUILT_TORCH
except ImportError:  # pragma: no cover - depends on the install
    _BUILT_TORCH = _BUILT_CUDA = None
if _BUILT_TORCH is not None:
    check_torch_version(_BUILT_TORCH, _BUILT_CUDA, torch.__version__, torch.version.cuda)

_C_ERROR: str | None = None
try:
    from pydistill import _C  # noqa: F401  (registers torch.ops.pydistill.*)
except ImportError as exc:  # pragma: no cover - depends on the install
    _C = None
    _C_ERROR = str(exc)


def has_compiled() -> bool:
    """True when the compiled extension ``pydistill._C`` is importable."""
    return _C is not None


_COMPILED_WITH_CUDA = _C is not None and bool(torch.ops.pydistill.compiled_with_cuda())


def compiled_with_cuda() -> bool:
    """True when pydistill._C holds the CUDA kernels (a plain constant: safe under torch.compile)."""
    return _COMPILED_WITH_CUDA


def triton_interpret() -> bool:
    """True when TRITON_INTERPRET=1 was set before pydistill was imported (Triton on the CPU)."""
    return _TRITON_INTERPRET


try:
    import triton  # noqa: F401

    _HAS_TRITON = True
except ImportError:  # pragma: no cover
    _HAS_TRITON = False
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Overrides "auto" for every op (read once at import; e.g. PYDISTILL_BACKEND=reference to compare).
_ENV_BACKEND = os.environ.get("PYDISTILL_BACKEND", "")


def has_triton() -> bool:
    return _HAS_TRITON


_CUDA_AVAILABLE: bool | None = None


def _cuda_available() -> bool:
    """torch.cuda.is_available(), asked once (lazily, so importing pydistill never initialises CUDA)."""
    global _CUDA_AVAILABLE
    if _CUDA_AVAILABLE is None:
        _CUDA_AVAILABLE = torch.cuda.is_available()
    return _CUDA_AVAILABLE


def backends() -> dict[str, bool]:
    """Which backends can run here: ``{"reference", "cpp", "cuda", "triton"} -> bool``."""
    cuda_ok = _cuda_available()
    return {
        "reference": True,
        "cpp": has_compiled(),
        "cuda": compiled_with_cuda() and cuda_ok,
        "triton": has_triton() and (cuda_ok or triton_interpret()),
    }


def plain_eager(tensors) -> bool:
    """True when nothing intercepts an op call (no torch.compile tracing, torch function / dispatch modes,
    functorch transforms or tensor subclasses). The ops then run an autograd.Function with exactly the custom
    op's forward/backward, skipping the custom op's per-call wrapper cost (pytree, default filling, redispatches);
    otherwise they go through ``torch.ops.pydistill.*`` so compile, opcheck and transforms see the registered op."""
    if (
        torch.compiler.is_compiling()
        or torch._C._is_torch_function_mode_enabled()
        or torch._C._len_torch_dispatch_stack()
        or torch._C._are_functorch_transforms_active()
    ):
        return False
    return all(type(t) is torch.Tensor or type(t) is torch.nn.Parameter for t in tensors)


def check_fake_lists(op: str, lists, dtypes) -> None:
    """Shape/dtype/device checks of a fake kernel (``torch._check``, as extension-cpp's fake kernels do).

    ``lists``: ``[(name, list of tensors), ...]``; the first list must be non-empty, every list as long as the
    first, each tensor of the shape of the first list's tensor at its position, all of one dtype out of
    ``dtypes`` and on one device. Raises with ``op`` and the argument named.
    """
    first_name, first = lists[0]
    torch._check(len(first) > 0, lambda: f"{op}: {first_name} must be a non-empty list of tensors")
    dtype, device = first[0].dtype, first[0].device
    torch._check(dtype in dtypes, lambda: f"{op}: {first_name}[0] must have a dtype in {dtypes}, got {dtype}")
    for name, tensors in lists:
        torch._check(
            len(tensors) == len(first),
            lambda name=name, tensors=tensors: (
                f"{op}: {name} must hold {len(first)} tensors (as many as {first_name}), got {len(tensors)}"
            ),
        )
        for i, (t, ref) in enumerate(zip(tensors, first)):
            torch._check(
                t.dim() == ref.dim(),
                lambda name=name, i=i, t=t, ref=ref: (
                    f"{op}: {name}[{i}] must have "
                    f"the shape of {first_name}[{i}] {tuple(ref.shape)}, got {tuple(t.shape)}"
                ),
            )
            for d in range(ref.dim()):
                torch._check(
                    t.shape[d] == ref.shape[d],
                    lambda name=name, i=i, t=t, ref=ref: (
                        f"{op}: {name}[{i}] "
                        f"must have the shape of {first_name}[{i}] {tuple(ref.shape)}, got {tuple(t.shape)}"
                    ),
                )
            torch._check(
                t.dtype == dtype,
                lambda name=name, i=i, t=t: f"{op}: {name}[{i}] must have dtype {dtype}, got {t.dtype}",
            )
            torch._check(
                t.device == device, lambda name=name, i=i, t=t: f"{op}: {name}[{i}] must be on {device}, got {t.device}"
            )


def require_compiled(what: str) -> None:
    """Raise a clear error when the compiled part is missing."""
    if not has_compiled():
        raise RuntimeError(
            f"{what} needs the compiled extension pydistill._C, which failed to import ({_C_ERROR}). "
            "Reinstall with `pip install --no-build-isolation -e .` (CUDA_HOME=/usr/local/cuda for the CUDA "
            "kernels), or pass backend='reference'."
        )


def resolve(backend: str, device: torch.device, *, available: tuple[str, ...], arg: str = "backend") -> str:
    """Turn ``backend`` (possibly ``"auto"``) into a concrete backend an op can run on ``device``.

    ``available`` lists the backends the op implements, in order of preference for "auto".
    """
    if backend not in BACKENDS:
        raise ValueError(f"{arg} must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto" and _ENV_BACKEND:
        backend = _ENV_BACKEND
    have = backends()
    if backend == "auto":
        for cand in available:
            if cand == "reference":
                return cand
            if not have.get(cand, False):
                continue
            if cand == "cpp" and device.type == "cpu":
                return cand
            if cand in ("cuda", "triton") and device.type == "cuda":
                return cand
        return "reference"
    if backend not in available:
        raise ValueError(f"{arg}={backend!r} is not implemented for this op; choose from {available}")
    if backend == "cpp":
        require_compiled("backend='cpp'")
        if device.type != "cpu":
            raise ValueError(f"{arg}='cpp' runs on CPU tensors, got tensors on {device}")
    elif backend == "cuda":
        if not compiled_with_cuda():
            require_compiled("backend='cuda'")
            raise RuntimeError("backend='cuda': pydistill._C was built without CUDA (FORCE_ONLY_CPU or no nvcc)")
        if device.type != "cuda":
            raise ValueError(f"{arg}='cuda' needs CUDA tensors, got tensors on {device}")
    elif backend == "triton":
        if not has_triton():
            raise RuntimeError("backend='triton': triton is not installed")
        if device.type == "cpu" and not triton_interpret():
            raise ValueError(f"{arg}='triton' on CPU tensors needs TRITON_INTERPRET=1 set before import")
    return backend


if _C is None and os.environ.get("PYDISTILL_QUIET") != "1":  # pragma: no cover
    warnings.warn(f"pydistill._C not found ({_C_ERROR}); using the PyTorch reference ops only", stacklevel=2)
