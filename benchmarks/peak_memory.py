"""Peak memory of one call, on CUDA (allocator statistics) or on the CPU (RSS high-water mark).

CPU measurements need a process started with glibc's dynamic mmap threshold
switched off, so that every large tensor is its own mapping and freeing it
returns the pages: :func:`measure_in_subprocess` starts such a process.

    python -m benchmarks.peak_memory --backend torch --rows 2048 --vocab 32000
prints one JSON line with the peak bytes above the inputs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
# Every allocation above 64 KiB is mmap'ed and unmapped on free.
CPU_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "1"}


def _rss_field(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{name} not in /proc/self/status")


def peak_bytes(fn, device: torch.device) -> int:
    """Bytes of memory at the peak of ``fn()`` above what was in use before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _rss_field("VmRSS")
    fn()
    return _rss_field("VmHWM") - base


def make_inputs(rows: int, vocab: int, k: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Random PACT inputs: logits ``[rows, V]`` (requires grad), refs ``[rows, K]``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits = (2 * torch.randn(rows, vocab, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    return (logits, *loss_inputs(rows, vocab, k, dtype, device, g))


def loss_inputs(rows: int, vocab: int, k: int, dtype: torch.dtype, device: torch.device, g: torch.Generator):
    """The loss inputs besides the logits, drawn from ``g``: ``labels [rows]`` (every 7th -100),
    ``ref_full``, ``ref_post`` ``[rows, K]``, ``ids [K]``, ``weights [K]``, ``answer_pos [rows]``."""
    labels = torch.randint(0, vocab, (rows,), generator=g).to(device)
    labels[:: 7] = -100
    ids = torch.randperm(vocab, generator=g)[:k].to(device)
    weights = torch.rand(k, generator=g).to(device)
    ref_full = (2 * torch.randn(rows, k, generator=g)).to(device=device, dtype=dtype)
    ref_post = (2 * torch.randn(rows, k, generator=g)).to(device=device, dtype=dtype)
    answer_pos = torch.randint(0, 32, (rows,), generator=g).to(device)
    return labels, ref_full, ref_post, ids, weights, answer_pos


def forward_backward(backend: str, inputs, variant: str = "pact", inplace_grad: bool = False):
    """One ``pact_loss`` forward and backward; returns the loss value."""
    from pact_kernels import pact_loss

    logits = inputs[0]
    logits.grad = None
    out = pact_loss(*inputs, variant=variant, backend=backend, inplace_grad=inplace_grad)
    out.loss.backward()
    return float(out.loss.detach())


def run_fresh_process(module: str, *argv: str) -> str:
    """The last line ``python -m module *argv`` prints, run in a fresh CPU process (:data:`CPU_MALLOC_ENV`) from
    the repository root; CalledProcessError when it fails."""
    out = subprocess.run([sys.executable, "-m", module, *argv], env=dict(os.environ, **CPU_MALLOC_ENV), cwd=REPO,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def measure_in_subprocess(backend: str, rows: int, vocab: int, k: int = 50, dtype: str = "float32",
                          variant: str = "pact", inplace_grad: bool = False) -> dict:
    """Run this module in a fresh CPU process and return its JSON result."""
    return json.loads(run_fresh_process("benchmarks.peak_memory", "--backend", backend, "--rows", str(rows),
                                        "--vocab", str(vocab), "--k", str(k), "--dtype", dtype, "--variant", variant,
                                        *(["--inplace-grad"] if inplace_grad else [])))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--variant", default="pact")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--inplace-grad", action="store_true", help="write the gradient into the logits buffer")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    inputs = make_inputs(args.rows, args.vocab, args.k, dtype, device)
    run = lambda: forward_backward(args.backend, inputs, args.variant, args.inplace_grad)  # noqa: E731
    run()  # warm-up: lazy imports, first-touch allocations
    inputs[0].grad = None
    peak = peak_bytes(run, device)
    logits_bytes = inputs[0].numel() * inputs[0].element_size()
    print(json.dumps({
        "backend": args.backend, "rows": args.rows, "vocab": args.vocab, "k": args.k, "dtype": args.dtype,
        "variant": args.variant, "device": str(device), "inplace_grad": args.inplace_grad, "peak_bytes": peak, "logits_bytes": logits_bytes,
    }))


if __name__ == "__main__":
    main()
