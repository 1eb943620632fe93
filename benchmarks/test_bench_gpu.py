"""GPU benchmark: naive vs torch vs triton vs cuda ``pact_loss``, Liger's cross-entropy, the copy floor.

    python -m pytest benchmarks/test_bench_gpu.py --benchmark-only          # on a CUDA machine
    python -m benchmarks.run_gpu_bench -o benchmarks/results/gpu            # + JSON and markdown table

Grid: rows in {4096, 16384} × V in {32000, 128256, 152064}, K = 50,
bfloat16 and float32, variant ``pact``; each backend forward (under no_grad)
and forward + backward, ``triton`` and ``cuda`` (the csrc/ extension, when
built) also with ``inplace_grad``. On CUDA also
Liger-Kernel's cross-entropy alone (when ``liger_kernel`` imports: the cost of
plain cross-entropy) and a device copy of the logits (the bandwidth floor: one
read and one write of z). Each case stores its peak memory (allocator
high-water mark above the inputs, :func:`benchmarks.peak_memory.peak_bytes`)
in ``extra_info``.

Environment: ``PACT_BENCH_DEVICE`` (``cuda``, the default; ``cpu`` runs a tiny
grid with the triton kernels interpreted, a smoke test of this file),
``PACT_BENCH_ROWS``, ``PACT_BENCH_VOCABS``, ``PACT_BENCH_DTYPES`` (comma lists)
narrow the grid.
"""
from __future__ import annotations

import os

DEVICE = os.environ.get("PACT_BENCH_DEVICE", "cuda")
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton_kernels is imported

import pytest  # noqa: E402
import torch  # noqa: E402

from .peak_memory import peak_bytes  # noqa: E402

K = 50
FULL_GRID = dict(rows=(4096, 16384), vocabs=(32000, 128256, 152064), dtypes=("bfloat16", "float32"))
SMOKE_GRID = dict(rows=(8,), vocabs=(1000,), dtypes=("bfloat16", "float32"))
# (case, mode): the backends of pact_loss, then the comparison lines.
CASES = (
    ("naive", "forward"), ("naive", "forward_backward"),
    ("torch", "forward"), ("torch", "forward_backward"),
    ("triton", "forward"), ("triton", "forward_backward"),
    ("triton_inplace", "forward_backward"),
    ("cuda", "forward"), ("cuda", "forward_backward"),
    ("cuda_inplace", "forward_backward"),
    ("liger_ce", "forward_backward"),
    ("copy", "floor"),
)
# Cases whose call overwrites the logits (their gradient goes into that buffer).
OVERWRITES_LOGITS = ("triton_inplace", "cuda_inplace", "liger_ce")
# Cases of the csrc/ extension (backend="cuda"): skipped, saying so, when it is not built.
CUDA_EXTENSION_CASES = ("cuda", "cuda_inplace")


def _env_list(name: str, default, cast):
    value = os.environ.get(name)
    return tuple(cast(v) for v in value.split(",")) if value else default


def grid():
    """``[(rows, vocab, dtype, case, mode)]``, shape-major so that inputs are made once per shape."""
    base = SMOKE_GRID if DEVICE == "cpu" else FULL_GRID
    rows = _env_list("PACT_BENCH_ROWS", base["rows"], int)
    vocabs = _env_list("PACT_BENCH_VOCABS", base["vocabs"], int)
    dtypes = _env_list("PACT_BENCH_DTYPES", base["dtypes"], str)
    return [(r, v, d, c, m) for d in dtypes for r in rows for v in vocabs for c, m in CASES]


class BenchInputs:
    """One shape's random PACT batch on the device, made in place from a seed.

    ``logits [rows, V]`` (dtype, requires grad), ``labels [rows]`` int64 (every
    7th row -100), ``ref_full``/``ref_post`` ``[rows, K]`` (dtype),
    ``safety_ids [K]`` int64, ``safety_weights [K]`` float32, ``answer_pos [rows]``
    int64. :meth:`restore_logits` rewrites the logits from their seed (no second copy is kept).
    """

    def __init__(self, rows: int, vocab: int, k: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
        self.key = (rows, vocab, dtype)
        self.seed = seed
        self.device = device
        g = torch.Generator(device=device).manual_seed(seed + 1)
        self.logits = torch.empty(rows, vocab, dtype=dtype, device=device)
        self.restore_logits()
        self.logits.requires_grad_()
        self.labels = torch.randint(0, vocab, (rows,), generator=g, device=device)
        self.labels[::7] = -100
        self.safety_ids = torch.randperm(vocab, generator=g, device=device)[:k]
        self.safety_weights = torch.rand(k, generator=g, device=device) + 0.05
        self.ref_full = (2 * torch.randn(rows, k, generator=g, device=device)).to(dtype)
        self.ref_post = (2 * torch.randn(rows, k, generator=g, device=device)).to(dtype)
        self.answer_pos = torch.randint(0, 32, (rows,), generator=g, device=device)

    def restore_logits(self) -> None:
        """Rewrite the logits with their seeded N(0, 2²) values (after an in-place gradient)."""
        g = torch.Generator(device=self.device).manual_seed(self.seed)
        with torch.no_grad():
            self.logits.normal_(0.0, 2.0, generator=g)

    def args(self):
        return (self.logits, self.labels, self.ref_full, self.ref_post, self.safety_ids, self.safety_weights,
                self.answer_pos)

    @property
    def logits_bytes(self) -> int:
        return self.logits.numel() * self.logits.element_size()


_CURRENT: dict = {}


def inputs_for(rows: int, vocab: int, dtype: torch.dtype) -> BenchInputs:
    """The shape's inputs, freeing the previous shape's first (one shape on the device at a time)."""
    key = (rows, vocab, dtype)
    if _CURRENT.get("key") != key:
        _CURRENT.clear()
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        _CURRENT.update(key=key, inputs=BenchInputs(rows, vocab, K, dtype, torch.device(DEVICE)))
    return _CURRENT["inputs"]


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def liger_cross_entropy():
    """Liger-Kernel's ``LigerCrossEntropyLoss`` instance, or None when it does not import (or off CUDA)."""
    if DEVICE != "cuda":
        return None
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except Exception:  # noqa: BLE001 - any import failure means "not available here"
        return None
    return LigerCrossEntropyLoss(ignore_index=-100)


def make_step(case: str, mode: str, x: BenchInputs):
    """The callable one round times (it ends with a device synchronisation)."""
    from pact_kernels import pact_loss

    if case == "copy":
        out = torch.empty_like(x.logits)

        def step():
            with torch.no_grad():
                out.copy_(x.logits)
            synchronize()
        return step
    if case == "liger_ce":
        ce = liger_cross_entropy()

        def step():
            x.logits.grad = None
            ce(x.logits, x.labels).backward()
            synchronize()
        return step
    backend = case.removesuffix("_inplace")
    inplace = case.endswith("_inplace")
    if mode == "forward":
        def step():
            with torch.no_grad():
                pact_loss(*x.args(), backend=backend).loss.item()
            synchronize()
        return step

    def step():
        x.logits.grad = None
        pact_loss(*x.args(), backend=backend, inplace_grad=inplace).loss.backward()
        synchronize()
    return step


def rounds_for(case: str) -> tuple:
    """(rounds, warm-up rounds): fewer for the slow PyTorch backends; one of each on the CPU smoke grid."""
    if DEVICE == "cpu":
        return 1, 1
    return (3, 1) if case in ("naive", "torch") else (7, 2)


@pytest.mark.parametrize("rows,vocab,dtype,case,mode", grid())
def test_pact_loss_gpu(benchmark, rows, vocab, dtype, case, mode):
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device (set PACT_BENCH_DEVICE=cpu for the smoke grid)")
    if case == "liger_ce" and liger_cross_entropy() is None:
        pytest.skip("liger_kernel is not importable here (or not on CUDA)")
    if case in CUDA_EXTENSION_CASES:
        from pact_kernels.backends import cuda_extension as cuda_backend

        if DEVICE != "cuda" or not cuda_backend.is_built():
            pytest.skip("cuda backend: pact_kernels._cuda is not built here (or not on CUDA); "
                        f"build it with {cuda_backend.BUILD_COMMAND}")
    x = inputs_for(rows, vocab, getattr(torch, dtype))
    x.logits.grad = None
    step = make_step(case, mode, x)
    def setup():  # untimed, before each round; must return None for pytest-benchmark
        if case in OVERWRITES_LOGITS:
            x.restore_logits()
        synchronize()

    rounds, warmup = rounds_for(case)
    benchmark.group = f"rows={rows} V={vocab} K={K} {dtype}"
    benchmark.name = f"{case} {mode}"
    try:
        benchmark.pedantic(step, setup=setup, rounds=rounds, warmup_rounds=warmup, iterations=1)
        setup()
        x.logits.grad = None
        peak = peak_bytes(step, torch.device(DEVICE))
    except torch.OutOfMemoryError:
        x.logits.grad = None
        pytest.skip(f"{case} {mode} ran out of device memory")
    finally:
        x.logits.grad = None
        if case in OVERWRITES_LOGITS:
            x.restore_logits()
    # A fresh gradient buffer of the logits' size is part of the result, not working memory.
    grad_bytes = x.logits_bytes if (mode == "forward_backward" and case not in OVERWRITES_LOGITS) else 0
    benchmark.extra_info.update(
        case=case, mode=mode, rows=rows, vocab=vocab, k=K, dtype=dtype, device=device_name(),
        logits_bytes=x.logits_bytes, peak_bytes=peak, grad_bytes=grad_bytes, beyond_grad_bytes=peak - grad_bytes,
    )


def device_name() -> str:
    if DEVICE == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu (triton interpreted)"
