"""Build pydistill and its compiled part ``pydistill._C``.

Switches (pytorch_scatter style):
  FORCE_CUDA=1       build the CUDA sources even if no GPU is visible (needs nvcc).
  FORCE_ONLY_CPU=1   build only the C++ CPU sources.
  TORCH_CUDA_ARCH_LIST  default "8.0;9.0+PTX" (A100, H100/H200, PTX for newer).
  MAX_JOBS           parallel compile jobs (torch's extension builder honours it).
  PYDISTILL_NO_LOCAL_VERSION=1  plain version (no +pt..cu.. tag), e.g. for an sdist.
The C++ CPU sources are always built. CUDA sources are built when torch was built
with CUDA and nvcc is found (CUDA_HOME), or when FORCE_CUDA=1.

The version carries the torch and CUDA it was built against, as the scatter/sparse extension
libraries do: 0.1.0+pt214cu130 (torch 2.14, CUDA 13.0), 0.1.0+pt214cpu (C++ CPU part only).
pydistill/_build_info.py records the exact torch version; importing pydistill beside another torch
raises an ImportError naming both (see pydistill/_backend.py).
"""

import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
BASE_VERSION = "0.1.0"


def _with_cuda() -> bool:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    force_cuda = os.getenv("FORCE_CUDA", "0") == "1"
    only_cpu = os.getenv("FORCE_ONLY_CPU", "0") == "1"
    return (not only_cpu) and (force_cuda or (torch.version.cuda is not None and CUDA_HOME is not None))


def _local_version(with_cuda: bool) -> str:
    """``+pt<major><minor>cu<cuda without dot>`` or ``+pt<major><minor>cpu``, from the torch building the wheel."""
    import torch

    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    cuda = f"cu{torch.version.cuda.replace('.', '')}" if with_cuda and torch.version.cuda else "cpu"
    return f"pt{major}{minor}{cuda}"


def _build_info_text(version: str, with_cuda: bool) -> str:
    """pydistill/_build_info.py: the torch this build's _C is compiled against (checked at import)."""
    import torch

    return (
        '"""Written by setup.py when it builds pydistill._C: the torch that build is compiled against."""\n'
        f"VERSION = {version!r}\nTORCH_VERSION = {torch.__version__!r}\n"
        f"CUDA_VERSION = {(torch.version.cuda if with_cuda else None)!r}\n"
    )


def _extensions(with_cuda: bool):
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    define_macros = []
    extra = {"cxx": ["-O3", "-std=c++20", "-fopenmp"]}
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros.append(("WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "-std=c++20", "-lineinfo"]
        ext_cls = CUDAExtension
    else:
        ext_cls = CppExtension
    return [
        ext_cls(
            "pydistill._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
        )
    ]


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    class BuildExtensionWithInfo(BuildExtension):
        """Builds _C and writes pydistill/_build_info.py beside it (in the tree, and in build_lib for a wheel)."""

        def run(self):
            text = _build_info_text(VERSION, _WITH_CUDA)
            dirs = [os.path.join(ROOT, "pydistill")]
            if not self.inplace:
                dirs.append(os.path.join(self.build_lib, "pydistill"))
            for d in dirs:
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, "_build_info.py"), "w") as f:
                    f.write(text)
            super().run()

    return BuildExtensionWithInfo.with_options(no_python_abi_suffix=True, use_ninja=True)


_WITH_CUDA = _with_cuda()
VERSION = (
    BASE_VERSION if os.getenv("PYDISTILL_NO_LOCAL_VERSION") == "1" else f"{BASE_VERSION}+{_local_version(_WITH_CUDA)}"
)

setup(
    name="pydistill",
    version=VERSION,
    description="Dataset distillation on fused kernels: DD, DC/DSA, DM, MTT, SSD-KD, MGD3",
    long_description=open(os.path.join(ROOT, "README.md")).read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pydistill", "pydistill.*"]) + ["pydistill.kernels"],
    package_dir={"pydistill.kernels": "kernels"},
    ext_modules=_extensions(_WITH_CUDA),
    cmdclass={"build_ext": _build_ext()},
    install_requires=["torch>=2.6", "numpy", "scikit-learn", "safetensors", "tqdm", "matplotlib"],
    extras_require={
        "diffusion": ["diffusers>=0.30"],
        "test": ["pytest", "hypothesis", "tensorboard"],
        "timm": ["timm"],  # timm:<name> evaluation networks
        "tensorboard": ["tensorboard"],  # --logger tensorboard
        # Comparison rows of benchmarks/ (kornia: diff_augment, torchrl: sum_tree; each skipped when missing).
        # torchrl's C++ part is built against one torch release and its tensordict dependency asks for a recent
        # torch, so next to a pinned torch install torchrl with `pip install --no-deps torchrl tensordict`
        # (plus their pure-Python dependencies); otherwise pip may replace your torch.
        "bench": ["kornia", "torchrl"],
    },
    entry_points={"console_scripts": ["pydistill=pydistill.cli:main"]},
    zip_safe=False,
)
