"""Build pydistill and its compiled part ``pydistill._C``.

Switches (pytorch_scatter style):
  FORCE_CUDA=1       build the CUDA sources even if no GPU is visible (needs nvcc).
  FORCE_ONLY_CPU=1   build only the C++ CPU sources.
  TORCH_CUDA_ARCH_LIST  default "8.0;9.0+PTX" (A100, H100/H200, PTX for newer).
  MAX_JOBS           parallel compile jobs (torch's extension builder honours it).
The C++ CPU sources are always built. CUDA sources are built when torch was built
with CUDA and nvcc is found (CUDA_HOME), or when FORCE_CUDA=1.
"""
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    force_cuda = os.getenv("FORCE_CUDA", "0") == "1"
    only_cpu = os.getenv("FORCE_ONLY_CPU", "0") == "1"
    with_cuda = (not only_cpu) and (force_cuda or (torch.version.cuda is not None and CUDA_HOME is not None))
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

    return BuildExtension.with_options(no_python_abi_suffix=True, use_ninja=True)


setup(
    name="pydistill",
    version="0.1.0",
    description="Dataset distillation on fused kernels: DD, DC/DSA, DM, MTT, SSD-KD, MGD3",
    long_description=open(os.path.join(ROOT, "README.md")).read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pydistill", "pydistill.*"]) + ["pydistill.kernels"],
    package_dir={"pydistill.kernels": "kernels"},
    ext_modules=_extensions(),
    cmdclass={"build_ext": _build_ext()},
    install_requires=["torch>=2.6", "numpy", "scikit-learn", "safetensors", "tqdm", "matplotlib"],
    extras_require={
        "diffusion": ["diffusers>=0.30"],
        "test": ["pytest", "hypothesis"],
        # Comparison rows of benchmarks/ (kornia: diff_augment, torchrl: sum_tree; each skipped when missing).
        # torchrl's C++ part is built against one torch release and its tensordict dependency asks for a recent
        # torch, so next to a pinned torch install torchrl with `pip install --no-deps torchrl tensordict`
        # (plus their pure-Python dependencies); otherwise pip may replace your torch.
        "bench": ["kornia", "torchrl"],
    },
    entry_points={"console_scripts": ["pydistill=pydistill.cli:main"]},
    zip_safe=False,
)
