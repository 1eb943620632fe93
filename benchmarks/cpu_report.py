"""Peak memory and time of pact_loss on the CPU, as JSON and a markdown table.

    .venv/bin/python -m benchmarks.cpu_report [--rows 2048 --vocab 32000] [-o benchmarks/results/cpu]

Each case runs in a fresh process (peak_memory.py). Peak memory is the RSS
high-water mark of one forward + backward above what the inputs already use:
it includes the gradient buffer the loss returns. "Beyond grad" subtracts that
buffer (the working memory of the loss itself).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from .cpu_timing import write_results
from .peak_memory import forward_backward, make_inputs, measure_in_subprocess

CASES = [("naive", False), ("torch", False), ("torch", True)]


def time_case(backend: str, inplace: bool, rows: int, vocab: int, k: int, dtype: str, repeats: int = 3) -> float:
    """Median seconds of one forward + backward."""
    inputs = make_inputs(rows, vocab, k, getattr(torch, dtype), torch.device("cpu"))
    fresh = inputs[0].detach().clone()
    times = []
    for _ in range(repeats + 1):
        if inplace:  # the in-place gradient overwrites the logits: restore them first
            inputs[0].data.copy_(fresh)
        start = time.perf_counter()
        forward_backward(backend, inputs, inplace_grad=inplace)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("-o", "--out", default="benchmarks/results/cpu")
    args = parser.parse_args(argv)
    results = []
    for backend, inplace in CASES:
        mem = measure_in_subprocess(backend, args.rows, args.vocab, args.k, args.dtype, inplace_grad=inplace)
        seconds = time_case(backend, inplace, args.rows, args.vocab, args.k, args.dtype)
        grad_bytes = 0 if inplace else mem["logits_bytes"]
        results.append(dict(mem, inplace_grad=inplace, seconds=seconds, beyond_grad_bytes=mem["peak_bytes"] - grad_bytes))
    naive = results[0]
    lines = [
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"rows={args.rows}, V={args.vocab}, K={args.k}, {args.dtype}, variant pact, forward + backward",
        "",
        "| backend | peak MiB | vs naive | beyond grad MiB | time s |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        name = r["backend"] + (" (inplace_grad)" if r["inplace_grad"] else "")
        lines.append(
            f"| {name} | {r['peak_bytes'] / 2**20:.1f} | {r['peak_bytes'] / naive['peak_bytes']:.3f} | "
            f"{r['beyond_grad_bytes'] / 2**20:.1f} | {r['seconds']:.2f} |"
        )
    write_results(args.out, results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
