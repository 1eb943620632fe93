"""Compare launch settings of the triton kernels on a GPU (columns per block, warps).

    python -m benchmarks.tune_triton [-o OUT/tune.json] [--rows 16384 --vocab 152064]

Times ``pact_loss(backend="triton")`` forward + backward (variant ``pact``,
bfloat16, and ``full_vocab`` at a quarter of the rows) for each setting, by
setting :mod:`pact_kernels.backends.triton_launch`'s ``SAFETY_SET_BLOCK_V``,
``FULL_VOCAB_BLOCK_V`` and ``NUM_WARPS`` in process (the same knobs as the
``PACT_TRITON_*`` environment variables). The defaults there were chosen
without a GPU (no register spills at sm_90, checks/compile_check.py);
this tells a GPU session whether another setting is faster. Each setting
applies to both kernels (the pact rows measure the one-stream kernel, the
full_vocab rows the two-stream one).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from pact_kernels import pact_loss
from pact_kernels.backends import triton_launch as triton_backend

from .test_bench_gpu import BenchInputs

SETTINGS = [(32768, 32), (16384, 32), (8192, 32), (16384, 16), (8192, 16), (4096, 8)]


def time_ms(fn, repeats: int = 7) -> float:
    """Median milliseconds of ``fn()`` on the CUDA stream (after two warm-up calls)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--vocab", type=int, default=152064)
    parser.add_argument("-o", "--out", default="tune.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune_triton: no CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    results = []
    for variant, rows in (("pact", args.rows), ("full_vocab", args.rows // 4)):
        x = BenchInputs(rows, args.vocab, 50, torch.bfloat16, device)
        ref_full = x.ref_full
        if variant == "full_vocab":
            ref_full = torch.randn(rows, args.vocab, device=device, dtype=torch.bfloat16)

        def step():
            x.logits.grad = None
            pact_loss(x.logits, x.labels, ref_full, x.ref_post, x.safety_ids, x.safety_weights, x.answer_pos,
                      variant=variant, backend="triton").loss.backward()

        for block, warps in SETTINGS:
            triton_backend.SAFETY_SET_BLOCK_V = triton_backend.FULL_VOCAB_BLOCK_V = block
            triton_backend.NUM_WARPS = warps
            try:
                ms = time_ms(step)
            except Exception as error:  # noqa: BLE001 - a setting that fails to compile or launch is reported
                ms, note = None, f"{type(error).__name__}: {str(error)[:120]}"
            else:
                note = ""
            record = dict(variant=variant, rows=rows, vocab=args.vocab, dtype="bfloat16", block_v=block,
                          num_warps=warps, ms=ms, note=note)
            results.append(record)
            print(json.dumps(record), flush=True)
        del x, ref_full
        torch.cuda.empty_cache()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
