"""Probe why a TORCH_CHECK failure in a CPU kernel crashes on some machines: build tiny extensions that throw,
with and without -fopenmp / C++20, and call them in subprocesses."""

import os
import subprocess
import sys
import tempfile

SRC = r"""
#include <torch/library.h>
#include <ATen/ATen.h>
at::Tensor boom(const at::Tensor& x) { TORCH_CHECK(x.dim() == 99, "boom: expected 99 dims, got ", x.dim()); return x; }
TORCH_LIBRARY_FRAGMENT(NS, m) { m.def("boom(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(NS, CPU, m) { m.impl("boom", &boom); }
"""
if len(sys.argv) > 1:
    import torch

    torch.ops.load_library(sys.argv[1])
    try:
        getattr(torch.ops, sys.argv[2]).boom(torch.zeros(2))
    except RuntimeError as e:
        print("raised cleanly:", str(e).splitlines()[0])
    sys.exit(0)
from torch.utils.cpp_extension import load  # noqa: E402

d = tempfile.mkdtemp()
for i, (std, omp) in enumerate([("c++17", False), ("c++20", False), ("c++20", True), ("c++17", True)]):
    ns = f"probe{i}"
    src = os.path.join(d, f"{ns}.cpp")
    open(src, "w").write(SRC.replace("NS", ns))
    flags = ["-O3", f"-std={std}"] + (["-fopenmp"] if omp else [])
    try:
        path = load(
            ns,
            [src],
            extra_cflags=flags,
            extra_ldflags=(["-fopenmp"] if omp else []),
            is_python_module=False,
            build_directory=tempfile.mkdtemp(),
            verbose=False,
        )
    except Exception as e:  # noqa: BLE001
        print(std, "omp" if omp else "", "BUILD FAILED", type(e).__name__, str(e)[:200])
        continue
    r = subprocess.run([sys.executable, __file__, path, ns], capture_output=True, text=True)
    print(f"{std} {'-fopenmp' if omp else ''}: rc={r.returncode} {r.stdout.strip()[:100]}")
