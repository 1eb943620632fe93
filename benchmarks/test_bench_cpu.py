"""CPU benchmark: naive vs torch backend of pact_loss, time (pytest-benchmark) and peak memory.

    .venv/bin/python -m pytest benchmarks/test_bench_cpu.py --benchmark-only

Peak memory is measured in a fresh process per case (see peak_memory.py) and
stored in each result's ``extra_info``; ``python -m benchmarks.cpu_report``
writes the table that docs/benchmarks.md carries.
"""
from __future__ import annotations

import pytest
import torch

from .peak_memory import forward_backward, make_inputs, measure_in_subprocess

ROWS, VOCAB, K = 2048, 32000, 50
torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("backend", ["naive", "torch"])
@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
def test_pact_loss_cpu(benchmark, backend, dtype, mode):
    inputs = make_inputs(ROWS, VOCAB, K, getattr(torch, dtype), torch.device("cpu"))
    if mode == "forward":
        from pact_kernels import pact_loss

        def step():
            with torch.no_grad():
                return pact_loss(*inputs, backend=backend).loss
    else:
        def step():
            return forward_backward(backend, inputs)

    benchmark.group = f"pact_loss {mode} rows={ROWS} V={VOCAB} K={K} {dtype}"
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
    if mode == "forward_backward":
        mem = measure_in_subprocess(backend, ROWS, VOCAB, K, dtype)
        benchmark.extra_info.update(peak_mib=mem["peak_bytes"] / 2**20, logits_mib=mem["logits_bytes"] / 2**20)
