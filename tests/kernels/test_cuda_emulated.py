"""The CUDA kernels' algorithm against the oracle, run on the CPU.

No GPU here: ``csrc/host_emulation/emulate.cpp`` compiles the kernels of
``csrc/pact_loss_kernel.cu`` with the host compiler (each block as 64, or
the production 512, ``std::thread``s with barriers for ``__syncthreads`` and warp shuffles) and
this file calls them through ctypes with the inputs
:func:`pact_kernels.backends.cuda_extension.forward_with_grad` would pass. It checks
the kernels' logic (sweeps, aligned and unaligned vector paths, reductions,
dispersion sort and scan, gate, KL, gradient columns, in-place, every
variant, dtype and reference width) — not CUDA code generation, timing, or
the fast-math intrinsics (std::exp/log stand in for __expf/__logf), which a
GPU run checks (benchmarks/gpu_check.sh).
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from pact_kernels import VARIANTS, PACTConfig
from pact_kernels import PACTInputs
from pact_kernels.backends.naive import naive_pact_loss
from pact_kernels.precision import held_gradient_dtype

from .inputs import random_batch, rel_err

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "csrc" / "host_emulation" / "emulate.cpp"
DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def cuda_include_dirs() -> list:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not Path(nvcc).exists():
        pytest.fail("nvcc not found: the emulated kernel test needs the CUDA toolkit's headers", pytrace=False)
    out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    dirs = re.findall(r'-I"?([^"\s]+)', " ".join(re.findall(r"INCLUDES=\"?([^\n]*)", text)))
    return [d for d in dirs if (Path(d) / "cuda_bf16.h").exists()]


def build(tmp_path_factory, threads: int):
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.fail("no host C++ compiler for the emulated kernel test", pytrace=False)
    out = tmp_path_factory.mktemp("emu") / f"emulate{threads}.so"
    cmd = [cxx, "-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", "-Wno-unknown-pragmas", f"-I{ROOT / 'csrc'}",
           f"-DPACT_KERNEL_THREADS={threads}"]
    for d in cuda_include_dirs():
        cmd += ["-isystem", d]
    result = subprocess.run(cmd + ["-o", str(out), str(SOURCE)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"host compile of the emulated kernels failed:\n{' '.join(cmd)}\n{result.stderr}", pytrace=False)
    library = ctypes.CDLL(str(out))
    library.pact_emulate.restype = ctypes.c_int
    return library


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """The kernels with 64-thread blocks (two warps: cross-warp reductions run, quickly)."""
    return build(tmp_path_factory, 64)


@pytest.fixture(scope="module")
def lib512(tmp_path_factory):
    """The kernels with the production block size (512 threads, 16 warps)."""
    return build(tmp_path_factory, 512)


def emulate(lib, b: dict, cfg: PACTConfig, inplace: bool = False, z=None):
    """What cuda_backend.forward_with_grad does, with the kernel run by the emulator."""
    if z is None:
        z = b["logits"].clone()  # a copy: in place, the kernel overwrites it
    rows, vocab = z.shape
    grad_dtype = held_gradient_dtype(z.dtype)  # float32 for float16, as cuda_backend passes
    grad = z if inplace and grad_dtype == z.dtype else torch.empty_like(z, dtype=grad_dtype,
                                                                          memory_format=torch.contiguous_format)
    labels = b["labels"].to(torch.int64).contiguous()
    n = (labels != cfg.ignore_index).sum()
    inv_n = (1.0 / n.clamp_min(1).to(torch.float32)).reshape(1)
    ids = b["safety_ids"].to(torch.int64).contiguous()
    k = ids.numel()
    full = cfg.variant == "full_vocab"
    weights = (torch.ones(k) if cfg.variant == "safety_tokens" or full
               else b["safety_weights"].float()).contiguous()
    r_full = b["ref_full"].contiguous()
    r_post = b["ref_post"].to(r_full.dtype).contiguous() if cfg.uses_gate and not full else r_full
    pos = b["answer_pos"].to(torch.int64).contiguous() if cfg.uses_decay else labels
    ce, kl, gate = (torch.zeros(rows) for _ in range(3))
    hyper = torch.tensor([cfg.lambda_kl, cfg.mass_threshold, cfg.gate_scale, cfg.gate_bias, cfg.gate_temperature,
                          cfg.decay_start, cfg.decay_tau, cfg.kl_temperature], dtype=torch.float32)
    flags = torch.tensor([r_full.shape[1] == vocab, r_post.shape[1] == vocab, cfg.uses_gate and not full,
                          cfg.uses_decay, full], dtype=torch.int32)
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    i64 = ctypes.c_int64
    rc = lib.pact_emulate(
        ptr(z), ptr(grad), i64(z.stride(0)), i64(grad.stride(0)), ptr(labels), ptr(ids), ptr(weights),
        ptr(r_full), i64(r_full.stride(0)), ptr(r_post), i64(r_post.stride(0)), ptr(pos), ptr(inv_n),
        ptr(ce), ptr(kl), ptr(gate), i64(rows), i64(vocab), i64(k), i64(cfg.ignore_index), ptr(hyper), ptr(flags),
        ctypes.c_int(DTYPE_CODE[z.dtype]), ctypes.c_int(DTYPE_CODE[r_full.dtype]),
    )
    assert rc == 0
    loss = (ce.sum() + cfg.lambda_kl * kl.sum()) * inv_n[0]
    return loss, ce, kl, gate, grad


def oracle(b: dict, cfg: PACTConfig):
    f64 = {name: (t.double() if t.is_floating_point() else t) for name, t in b.items()}
    logits = f64.pop("logits").clone().requires_grad_()
    out = naive_pact_loss(logits, PACTInputs(**f64), cfg)
    out.loss.backward()
    return out, logits.grad


def assert_matches(lib, b, cfg, inplace=False):
    dtype = b["logits"].dtype
    want, want_grad = oracle(b, cfg)
    loss, ce, kl, gate, grad = emulate(lib, b, cfg, inplace=inplace)
    tol = TOL[dtype]
    assert rel_err(loss, want.loss) < tol
    assert rel_err(ce, want.ce_rows) < tol
    assert rel_err(kl, want.kl_rows) < max(tol, 1e-5)
    assert float((gate - want.gate).abs().max()) < 1e-5
    assert rel_err(grad, want_grad) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_oracle(lib, variant, dtype):
    # V = 517: odd, so rows start misaligned for the 16-byte vector path (head and tail run)
    for width in (("v",) if variant == "full_vocab" else ("k", "v")):
        b = random_batch(rows=6, vocab=517, k=7, dtype=dtype, ref_width=width, seed=3)
        b["labels"][1] = b["safety_ids"][0]  # a target inside S
        assert_matches(lib, b, PACTConfig(variant=variant))


@pytest.mark.parametrize("variant", ["pact", "full_vocab"])
def test_in_place_and_aligned_rows(lib, variant):
    b = random_batch(rows=5, vocab=1024, k=40, dtype=torch.bfloat16, ref_width="v" if variant == "full_vocab" else "k",
                     seed=5)
    assert_matches(lib, b, PACTConfig(variant=variant), inplace=True)


@pytest.mark.parametrize("variant", ["pact", "full_vocab"])
def test_rows_misaligned_to_the_gradient(lib, variant):
    """Logits rows strided by V + 3 (a view): their alignment differs from the fresh gradient's (scalar sweep 2)."""
    b = random_batch(rows=5, vocab=300, k=9, dtype=torch.bfloat16, ref_width="v" if variant == "full_vocab" else "k",
                     seed=11)
    wide = torch.zeros(5, 303, dtype=torch.bfloat16)
    wide[:, 1:301] = b["logits"]
    cfg = PACTConfig(variant=variant)
    want, want_grad = oracle(b, cfg)
    loss, ce, kl, gate, grad = emulate(lib, b, cfg, z=wide[:, 1:301])
    assert rel_err(loss, want.loss) < 1e-2 and rel_err(grad, want_grad) < 1e-2
    assert rel_err(ce, want.ce_rows) < 1e-5


def test_other_hyper_parameters_and_large_k(lib):
    b = random_batch(rows=4, vocab=1500, k=300, seed=7)  # K > threads: strided K loops, a 512-wide sort
    assert_matches(lib, b, PACTConfig.authors(mass_threshold=0.5, gate_bias=0.1, gate_temperature=1.7, decay_start=2))
    b = random_batch(rows=4, vocab=300, k=5, seed=8, ref_width="v")
    assert_matches(lib, b, PACTConfig(variant="full_vocab", kl_temperature=2.0))


@pytest.mark.parametrize("variant,width,k", [("pact", "k", 7), ("pact", "v", 700), ("full_vocab", "v", 7),
                                             ("safety_weights", "k", 33)])
def test_production_block_size(lib512, variant, width, k):
    b = random_batch(rows=3, vocab=4099, k=k, dtype=torch.bfloat16, ref_width=width, seed=3)
    assert_matches(lib512, b, PACTConfig(variant=variant))
    assert_matches(lib512, b, PACTConfig(variant=variant), inplace=True)


def test_no_labelled_rows_gives_zeros(lib):
    b = random_batch(rows=3, vocab=200, k=4, seed=9)
    b["labels"][:] = -100
    loss, ce, kl, gate, grad = emulate(lib, b, PACTConfig())
    assert float(loss) == 0.0 and not grad.any() and not ce.any() and not kl.any() and not gate.any()


def test_float16_gradient_is_held_in_float32(lib):
    """float16 logits: the kernel writes a float32 gradient, so softmax(z)/n below float16's smallest
    subnormal (2**-24) is kept, not flushed to 0, until backward applies the loss scale."""
    b = random_batch(rows=4, vocab=300, k=7, dtype=torch.float16, seed=13, ignore_every=0, scale=8.0)
    want, want_grad = oracle(b, PACTConfig())
    *_, grad = emulate(lib, b, PACTConfig())
    assert grad.dtype == torch.float32
    tiny = (want_grad.abs() < 2.0**-24) & (want_grad != 0)
    assert tiny.sum() > 20
    assert rel_err(grad[tiny], want_grad[tiny]) < 1e-4
