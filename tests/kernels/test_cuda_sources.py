"""CI compile check of the CUDA backend's sources: no GPU needed, nvcc is.

Every ``csrc/*.cu`` compiles with the machine's ``nvcc`` for sm_90, with
every warning an error (nvcc's and the host compiler's ``-Wall -Wextra``),
standalone: the kernel files include no torch header. The torch binding
``csrc/pact_binding.cpp`` is compiled (``-fsyntax-only``: full parsing, type
checking and template instantiation, no code generation) with the host
compiler against the installed torch's headers and the CUDA toolkit's, also
with ``-Wall -Wextra -Werror`` (torch's own headers as system headers).
A CPU wheel of torch ships every header the binding includes except the
generated ``c10/cuda/impl/cuda_cmake_macros.h``; the test writes that one
(one ``#define``, as a CUDA wheel has it) into a temporary folder.

The compilers run in parallel, started once for the module. A missing
``nvcc`` fails the tests: CI machines have it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
CU_SOURCES = sorted(CSRC.glob("*.cu"))
BINDING = CSRC / "pact_binding.cpp"
ARCH = "sm_90"
# The flags setup.py builds with, plus warnings as errors.
NVCC_FLAGS = ["-std=c++17", "-O3", "--use_fast_math", f"-arch={ARCH}", "-Werror", "all-warnings",
              "-Xcompiler", "-Wall,-Wextra,-Werror"]
CXX_WARNINGS = ["-Wall", "-Wextra", "-Werror"]
TIMEOUT_S = 300


def find_nvcc() -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
        candidate = Path(cuda_home) / "bin" / "nvcc"
        nvcc = str(candidate) if candidate.exists() else None
    if nvcc is None:
        pytest.fail("nvcc not found (not on PATH, nor in $CUDA_HOME/bin or /usr/local/cuda/bin): CI compiles the "
                    "CUDA backend's sources in csrc/ with it; install the CUDA toolkit's compiler", pytrace=False)
    return nvcc


def cuda_include_dirs(nvcc: str) -> list:
    """The CUDA toolkit's include folders, as nvcc itself reports them (``--dryrun``)."""
    out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    dirs = re.findall(r'-I"?([^"\s]+)', " ".join(re.findall(r"INCLUDES=\"?([^\n]*)", text)))
    dirs = [d for d in dirs if (Path(d) / "cuda_runtime_api.h").exists()]
    assert dirs, f"nvcc --dryrun named no include folder holding cuda_runtime_api.h:\n{text}"
    return dirs


def host_compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.fail("no host C++ compiler (g++ / c++) for the binding's compile check; nvcc needs one too",
                    pytrace=False)
    return cxx


def binding_command(nvcc: str, shim: Path) -> list:
    torch_include = Path(torch.__file__).parent / "include"
    system = [torch_include, torch_include / "torch" / "csrc" / "api" / "include"]
    if not (torch_include / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        header = shim / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
        header.parent.mkdir(parents=True, exist_ok=True)
        header.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        system.append(shim)
    system += [Path(d) for d in cuda_include_dirs(nvcc)] + [Path(sysconfig.get_paths()["include"])]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = [host_compiler(), "-fsyntax-only", "-std=c++17", *CXX_WARNINGS, f"-I{CSRC}",
           "-DTORCH_EXTENSION_NAME=_cuda", "-DTORCH_API_INCLUDE_EXTENSION_H", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    for d in system:
        cmd += ["-isystem", str(d)]
    return cmd + [str(BINDING)]


@pytest.fixture(scope="module")
def compiles(tmp_path_factory):
    """Start every compile at once: ``{name: (command, Popen)}``; the tests wait on their own."""
    nvcc = find_nvcc()
    out_dir = tmp_path_factory.mktemp("cuda_objects")
    jobs = {}
    for src in CU_SOURCES:
        cmd = [nvcc, *NVCC_FLAGS, f"-I{CSRC}", "-c", str(src), "-o", str(out_dir / (src.stem + ".o"))]
        jobs[src.name] = cmd
    jobs[BINDING.name] = binding_command(nvcc, tmp_path_factory.mktemp("shim"))
    started = {name: (cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT))
               for name, cmd in jobs.items()}
    yield started
    for _, proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def finish(compiles, name: str) -> None:
    cmd, proc = compiles[name]
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"compiling {name} took over {TIMEOUT_S} s:\n{' '.join(cmd)}\n{output}", pytrace=False)
    if proc.returncode != 0 or re.search(r"warning", output, re.IGNORECASE):
        pytest.fail(f"{name} does not compile cleanly (exit {proc.returncode}):\n{' '.join(cmd)}\n{output}",
                    pytrace=False)


def test_csrc_has_the_kernel_and_the_binding():
    assert CU_SOURCES, f"no .cu file in {CSRC}"
    assert BINDING.exists()
    # The kernel files compile without torch: CI builds them with nvcc alone.
    for src in CU_SOURCES:
        assert "torch" not in "".join(re.findall(r"#include\s*[<\"][^>\"]+", src.read_text()))


@pytest.mark.parametrize("name", [src.name for src in CU_SOURCES])
def test_cu_source_compiles_for_sm90_without_warnings(compiles, name):
    finish(compiles, name)


def test_binding_compiles_against_torch_headers_without_warnings(compiles):
    finish(compiles, BINDING.name)


def test_setup_skips_the_extension_cleanly_without_cuda_torch():
    """``PACT_BUILD_CUDA=1``: with CPU torch (CI's) setup.py says it skips the extension and goes on."""
    out = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PACT_BUILD_CUDA": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    cuda_ready = torch.version.cuda is not None and shutil.which("nvcc") is not None
    assert ("skipping the CUDA extension" in out.stdout) != cuda_ready, out.stdout
