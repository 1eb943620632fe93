"""The fused linear head on a GPU: time and peak memory next to Liger-Kernel's
``LigerFusedLinearCrossEntropyLoss`` (its correctness: ``checks/gpu_fused_linear.py``).

    python -m benchmarks.gpu_fused_linear -o OUT            # CUDA: rows 16384, H 4096, V 152064, bf16
    python -m benchmarks.gpu_fused_linear --device cpu --small -o OUT   # CPU smoke run (TRITON_INTERPRET=1)

Every case from ``hidden [rows, H]`` and a trainable ``weight [V, H]``
(full fine-tuning: gradients to both), forward + backward: ``liger flce``
   (CE only, when ``liger_kernel`` imports), ``ce fused``, ``pact fused``
   (triton; ``pact fused cuda`` when built), ``pact unfused`` (``hidden @ weight.T``
   then ``pact_loss(..., inplace_grad=True)``). Time: median of CUDA-synchronised
   rounds after a warm-up; peak: ``max_memory_allocated`` above the inputs
   (gradients included). Goal: ``pact fused`` ≤ 1.2× Liger's time at no more than its memory.

Writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from pact.atomic_files import write_text_atomic
from .fused_linear import make_inputs
from .peak_memory import peak_bytes

FULL_SHAPE = dict(rows=16384, width=4096, vocab=152064, dtype="bfloat16")
SMALL_SHAPE = dict(rows=32, width=16, vocab=300, dtype="float32")
K = 50


def inputs(rows, width, vocab, dtype, device, seed=0):
    """:func:`benchmarks.fused_linear.make_inputs` with a trainable head (K = 50)."""
    return make_inputs(rows, width, vocab, K, dtype, device, train_head=True, seed=seed)


def backends_here(device) -> list:
    """The fused backends to run on ``device``: triton, and cuda when ``pact_kernels._cuda`` is built."""
    names = ["triton"]
    if device.type == "cuda":
        from pact_kernels.backends import cuda_extension as cuda_backend

        if cuda_backend.is_built():
            names.append("cuda")
    return names


def liger_flce():
    """``LigerFusedLinearCrossEntropyLoss()``, or None when liger_kernel does not import."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(ignore_index=-100)


def cases(device) -> dict:
    """Name -> ``step(x)`` doing one forward + backward."""
    from pact_kernels import fused_linear_cross_entropy, fused_linear_pact_loss, pact_loss

    def refs(x):
        return x["ref_full"], x["ref_post"], x["ids"], x["weights"], x["answer_pos"]

    out = {}
    liger = liger_flce() if device.type == "cuda" else None
    if liger is not None:
        out["liger flce"] = lambda x: liger(x["weight"], x["hidden"], x["labels"])
    out["ce fused"] = lambda x: fused_linear_cross_entropy(x["hidden"], x["weight"], x["labels"],
                                                            backend="triton").loss
    for backend in backends_here(device):
        suffix = "" if backend == "triton" else f" {backend}"
        out[f"pact fused{suffix}"] = (lambda b: lambda x: fused_linear_pact_loss(
            x["hidden"], x["weight"], x["labels"], *refs(x), backend=b).loss)(backend)
    out["pact unfused"] = lambda x: pact_loss(x["hidden"] @ x["weight"].T, x["labels"], *refs(x), backend="triton",
                                              inplace_grad=True).loss
    return out


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(shape: dict, device, rounds: int) -> list:
    x = inputs(shape["rows"], shape["width"], shape["vocab"], getattr(torch, shape["dtype"]), device)
    results = []
    for name, fn in cases(device).items():
        def step():
            x["hidden"].grad = x["weight"].grad = None
            fn(x).backward()

        step()  # warm-up (compilation, autotuning)
        synchronize(device)
        x["hidden"].grad = x["weight"].grad = None
        peak = peak_bytes(step, device)
        times = []
        for _ in range(rounds):
            x["hidden"].grad = x["weight"].grad = None
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times.append(time.perf_counter() - start)
        results.append(dict(case=name, ms=1e3 * statistics.median(times), peak_bytes=peak, **shape))
        print(f"{name}: {results[-1]['ms']:.2f} ms, peak {peak / 2**20:.0f} MiB", flush=True)
    return results


def markdown(results: list, device_name: str) -> str:
    shape = results[0]
    lines = [f"{device_name}; rows {shape['rows']}, H {shape['width']}, V {shape['vocab']}, {shape['dtype']}, "
             f"K {K}, trainable head, forward + backward", "",
             "| case | ms | peak MiB above inputs |", "|---|---|---|"]
    lines += [f"| {r['case']} | {r['ms']:.2f} | {r['peak_bytes'] / 2**20:.0f} |" for r in results]
    by = {r["case"]: r for r in results}
    if "liger flce" in by and "pact fused" in by:
        t = by["pact fused"]["ms"] / by["liger flce"]["ms"]
        m = by["pact fused"]["peak_bytes"] / by["liger flce"]["peak_bytes"]
        lines += ["", f"pact fused / Liger FLCE: time {t:.2f}x (goal <= 1.2: {'MET' if t <= 1.2 else 'NOT MET'}), "
                  f"peak {m:.2f}x (goal <= 1: {'MET' if m <= 1.0 else 'NOT MET'})"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="a tiny shape (CPU smoke run)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("-o", "--out", default="benchmarks/results/gpu_fused_linear")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shape = SMALL_SHAPE if args.small else FULL_SHAPE
    results = bench(shape, device, 2 if args.small else args.rounds)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (interpreted triton)"
    text = markdown(results, name)
    out = Path(args.out)
    write_text_atomic(out.with_suffix(".json"), json.dumps(dict(results=results), indent=2) + "\n")
    write_text_atomic(out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
