"""The ``cuda`` backend's Python side, on any machine.

Where ``pact_kernels._cuda`` is not built, ``backend="cuda"`` must say so
and how to build it; the module must import without the extension and
without the training stack; it refuses what its kernels cannot do. Its
numbers against the oracle are checked on a GPU by
``checks/gpu_correctness.py`` (run by ``benchmarks/gpu_check.sh``).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from pact_kernels import PACTConfig, pact_loss_from_config
from pact_kernels.backends import cuda_extension as cuda_backend

from .inputs import random_batch


def test_not_built_error_names_the_build_command(monkeypatch):
    monkeypatch.setattr(cuda_backend, "_cuda", None)
    b = random_batch()
    with pytest.raises(cuda_backend.CUDABackendNotBuilt, match="not built") as info:
        pact_loss_from_config(*b.values(), PACTConfig(), backend="cuda")
    message = str(info.value)
    assert "PACT_BUILD_CUDA=1 pip install --no-build-isolation -e ." in message
    assert "nvcc" in message and "backend='triton'" in message
    assert isinstance(info.value, RuntimeError)


def test_is_built_matches_the_extension_here():
    """On this machine (CI: CPU torch) the extension is absent; is_built() says what import finds."""
    found = importlib.util.find_spec("pact_kernels._cuda") is not None
    assert cuda_backend.is_built() == found
    if not found:
        with pytest.raises(cuda_backend.CUDABackendNotBuilt, match="PACT_BUILD_CUDA=1"):
            pact_loss_from_config(*random_batch(ref_width="v").values(), PACTConfig(variant="full_vocab"),
                                  backend="cuda")


def test_imports_no_training_stack():
    code = ("import sys, pact_kernels.backends.cuda_extension; "
            "bad = [m for m in ('transformers', 'deepspeed', 'triton') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("dtype,error,pattern", [(torch.float64, TypeError, "float64"),
                                                 (torch.float32, RuntimeError, "CUDA tensors")])
def test_refuses_what_the_kernels_cannot_do(dtype, error, pattern):
    logits = torch.zeros(2, 10, dtype=dtype)
    with pytest.raises(error, match=pattern):
        cuda_backend._check_supported(logits, PACTConfig(), k=3)


def test_refuses_more_safety_tokens_than_shared_memory_holds():
    logits = torch.zeros(2, 10)
    with pytest.raises(ValueError, match="at most K = 1024"):
        cuda_backend._check_supported(logits, PACTConfig(), k=cuda_backend.MAX_K + 1)
    # full_vocab reads no K values: no limit
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        cuda_backend._check_supported(logits, PACTConfig(variant="full_vocab"), k=cuda_backend.MAX_K + 1)


def test_max_k_matches_the_kernel_header():
    from pathlib import Path

    header = (Path(__file__).resolve().parents[2] / "csrc" / "pact_loss.h").read_text()
    assert f"constexpr int kMaxK = {cuda_backend.MAX_K};" in header
