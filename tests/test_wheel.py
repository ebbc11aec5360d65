"""Wheels: the local version tag names torch and CUDA, the build records its torch, a torch mismatch at import is a
clear error naming both versions; a built wheel ($PYDISTILL_WHEEL, set by .ci/run) holds _C and the Triton kernels."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import pydistill
from pydistill._backend import check_torch_version

REPO = Path(__file__).resolve().parent.parent
PKG_PARENT = Path(pydistill.__file__).resolve().parent.parent  # the tree or site-packages the tests import from
_MAJOR_MINOR = "".join(torch.__version__.split("+")[0].split(".")[:2])


def _setup_version(**env) -> str:
    out = subprocess.run(
        [sys.executable, "setup.py", "--version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not (REPO / "setup.py").is_file(), reason="needs the source tree")
def test_local_version_names_torch_and_cuda():
    assert _setup_version(FORCE_ONLY_CPU="1", FORCE_CUDA="0") == f"0.1.0+pt{_MAJOR_MINOR}cpu"
    if torch.version.cuda:
        cu = torch.version.cuda.replace(".", "")
        assert _setup_version(FORCE_CUDA="1", FORCE_ONLY_CPU="0") == f"0.1.0+pt{_MAJOR_MINOR}cu{cu}"  # e.g. +pt214cu130
    assert _setup_version(FORCE_ONLY_CPU="1", PYDISTILL_NO_LOCAL_VERSION="1") == "0.1.0"


def test_build_records_the_torch_it_was_built_against():
    info = pytest.importorskip("pydistill._build_info", reason="a source tree never built by setup.py")
    assert info.TORCH_VERSION == torch.__version__  # this install's _C loaded beside this torch
    assert pydistill.__version__ == info.VERSION and info.VERSION.startswith(f"0.1.0+pt{_MAJOR_MINOR}")
    assert (info.CUDA_VERSION is not None) == bool(torch.ops.pydistill.compiled_with_cuda())


def test_check_torch_version():
    check_torch_version("2.14.1+cu130", None, "2.14.1", None)  # a CPU-only _C loads beside any build of 2.14.1
    check_torch_version("2.14.1+cu130", "13.0", "2.14.1+cu130", "13.0")
    with pytest.raises(ImportError, match=r"built against torch 2\.14\.1.*but torch 2\.15\.0 is installed"):
        check_torch_version("2.14.1", None, "2.15.0", None)
    with pytest.raises(ImportError, match=r"CUDA 13\.0.*CUDA 12\.8"):
        check_torch_version("2.14.1+cu130", "13.0", "2.14.1+cu128", "12.8")


def test_import_beside_another_torch_fails_clearly(tmp_path):
    pytest.importorskip("pydistill._build_info", reason="a source tree never built by setup.py")
    code = "import torch; torch.__version__ = '1.0.0'; import pydistill"
    env = {**os.environ, "PYTHONPATH": str(PKG_PARENT)}
    env.pop("PYDISTILL_SKIP_TORCH_CHECK", None)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode != 0
    assert "ImportError" in out.stderr and f"built against torch {torch.__version__}" in out.stderr
    assert "torch 1.0.0" in out.stderr and "undefined symbol" not in out.stderr


@pytest.mark.skipif(not os.environ.get("PYDISTILL_WHEEL"), reason="set PYDISTILL_WHEEL to a built wheel")
def test_built_wheel_contents():
    wheel = Path(os.environ["PYDISTILL_WHEEL"])
    assert f"+pt{_MAJOR_MINOR}" in wheel.name.replace("%2B", "+")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "pydistill/_C.so" in names and "pydistill/_build_info.py" in names
    kernels = {n for n in names if n.startswith("pydistill/kernels/") and n.endswith(".py")}
    source_kernels = {f"pydistill/kernels/{p.name}" for p in (REPO / "kernels").glob("*.py")}
    assert source_kernels and source_kernels <= kernels
