"""Build hook for the optional CUDA extension in ``csrc/``.

All metadata lives in ``pyproject.toml``. This file only adds the
``pact_kernels._cuda`` extension, and only when asked to
(``PACT_BUILD_CUDA=1``) on a machine with a CUDA build of torch and ``nvcc``.
Everywhere else (CPU-only torch, no GPU, no nvcc, no torch at build time) it
builds the pure-Python package and nothing else.
"""
import glob
import os
import shutil

from setuptools import setup


def _cuda_extension():
    if os.environ.get("PACT_BUILD_CUDA", "0") != "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    except ImportError:
        print("pact: PACT_BUILD_CUDA=1 but torch is not importable at build time; skipping the CUDA extension")
        return [], {}
    if torch.version.cuda is None or shutil.which("nvcc") is None:
        print("pact: PACT_BUILD_CUDA=1 but torch has no CUDA or nvcc is missing; skipping the CUDA extension")
        return [], {}
    sources = sorted(glob.glob("csrc/*.cu") + glob.glob("csrc/*.cpp"))
    if not sources:
        print("pact: no sources in csrc/; skipping the CUDA extension")
        return [], {}
    ext = CUDAExtension(
        name="pact_kernels._cuda",
        sources=sources,
        include_dirs=[os.path.abspath("csrc")],
        # The flags tests/kernels/test_cuda_sources.py compiles the kernels with (there with warnings as errors).
        extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "--use_fast_math", "-std=c++17"]},
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _cuda_extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
