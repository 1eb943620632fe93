"""Every backend, variant and dtype against the float64 oracle, on the device.

    python -m checks.gpu_correctness -o OUT/correctness.json             # CUDA
    TRITON_INTERPRET=1 python -m checks.gpu_correctness --device cpu --small -o /tmp/c.json

For each backend (``naive`` in the input's precision, ``torch``, ``triton``,
``triton`` with ``inplace_grad``, and ``cuda`` with and without it when
``pact_kernels._cuda`` is built), variant, dtype (float32, bfloat16,
float16) and reference width (``[rows, K]``, ``[rows, V]``): loss and
gradient relative errors against the naive backend on float64 copies (SPEC:
< 1e-5 for float32, < 1e-2 for half precision). On CUDA it then checks the
64-bit row offsets: at rows = 16384, V = 152064 (past 2**31 elements), the
triton gradient's last rows against the oracle on those rows alone. Then
the precision matrix of ``tests/kernels/test_precision.py`` on the device
(``pact_loss`` and the fused head, bf16 autocast over float32 weights, bf16
weights, float32 hidden rows on a bf16 head, fp16 with a 2**16 loss scale;
triton, and cuda when built), each backward under
``torch.cuda.set_sync_debug_mode("error")`` (no host synchronisation), and
K = 600 (16384-column steps) with column-strided bf16 logits.
Exits 1 when any case fails; one JSON record per case goes to ``-o``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pact_kernels import VARIANTS, PACTConfig, pact_loss_from_config
from tests.kernels.inputs import random_batch, rel_err

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
CASES = (("naive", False), ("torch", False), ("triton", False), ("triton", True))
CUDA_CASES = (("cuda", False), ("cuda", True))  # the csrc/ extension, when built and on a CUDA device


def cuda_backend_ready(device: str) -> bool:
    """True when the ``cuda`` backend can run here; else prints why its cases are left out."""
    from pact_kernels.backends import cuda_extension as cuda_backend

    if device != "cuda":
        print("gpu_correctness: cuda backend skipped: it runs on CUDA devices only", flush=True)
        return False
    if not cuda_backend.is_built():
        print("gpu_correctness: cuda backend skipped: pact_kernels._cuda is not built "
              f"({cuda_backend.BUILD_COMMAND})", flush=True)
        return False
    return True


def run_backend(batch: dict, cfg: PACTConfig, backend: str, inplace: bool, device: str):
    """pact_loss + backward on a device copy of ``batch``: (output, gradient [rows, V])."""
    args = {name: t.to(device) for name, t in batch.items()}
    logits = args.pop("logits").clone().requires_grad_()  # a fresh copy: inplace_grad overwrites it
    out = pact_loss_from_config(logits, *args.values(), cfg, backend=backend, inplace_grad=inplace)
    out.loss.backward()
    return out, logits.grad


def check_case(batch, cfg, backend, inplace, device, want, want_grad) -> dict:
    dtype = batch["logits"].dtype
    start = time.perf_counter()
    out, grad = run_backend(batch, cfg, backend, inplace, device)
    record = {
        "backend": backend + ("+inplace" if inplace else ""), "variant": cfg.variant, "dtype": str(dtype).split(".")[-1],
        "ref_width": "V" if batch["ref_full"].shape[1] == batch["logits"].shape[1] else "K",
        "loss_err": rel_err(out.loss.cpu(), want.loss), "kl_err": rel_err(out.kl.cpu(), want.kl),
        "grad_err": rel_err(grad.cpu(), want_grad), "gate_err": float((out.gate.cpu() - want.gate).abs().max()),
        "seconds": time.perf_counter() - start,
    }
    tol = TOL[dtype]
    record["ok"] = record["loss_err"] < tol and record["kl_err"] < tol and record["grad_err"] < tol and record["gate_err"] < 1e-5
    return record


def oracle(batch, cfg, device):
    """The naive backend on float64 copies (on ``device``), gradient on the CPU."""
    f64 = {name: (t.double() if t.is_floating_point() else t) for name, t in batch.items()}
    out, grad = run_backend(f64, cfg, "naive", False, device)
    return out, grad.cpu()


def small_grid_checks(device: str, rows: int, vocab: int, k: int, log, cases=CASES) -> list:
    records = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for variant in VARIANTS:
            for width in (("v",) if variant == "full_vocab" else ("k", "v")):
                batch = random_batch(rows=rows, vocab=vocab, k=k, dtype=dtype, ref_width=width, seed=len(records))
                batch["labels"][1] = batch["safety_ids"][0]  # a target inside S
                cfg = PACTConfig(variant=variant)
                want, want_grad = oracle(batch, cfg, device)
                for backend, inplace in cases:
                    record = check_case(batch, cfg, backend, inplace, device, want, want_grad)
                    records.append(record)
                    log(record)
    return records


def offsets_check(device: str, rows: int, vocab: int, k: int, tail: int, log, backend: str = "triton") -> list:
    """``backend`` at ``rows × vocab`` (bf16): its last ``tail`` gradient rows and per-row terms vs the oracle."""
    g = torch.Generator(device=device).manual_seed(0)
    logits = (2 * torch.randn(rows, vocab, generator=g, device=device)).to(torch.bfloat16)
    labels = torch.randint(0, vocab, (rows,), generator=g, device=device)
    labels[::7] = -100
    ids = torch.randperm(vocab, generator=g, device=device)[:k]
    weights = torch.rand(k, generator=g, device=device) + 0.05
    ref_full = (2 * torch.randn(rows, k, generator=g, device=device)).to(torch.bfloat16)
    ref_post = (2 * torch.randn(rows, k, generator=g, device=device)).to(torch.bfloat16)
    pos = torch.randint(0, 32, (rows,), generator=g, device=device)
    cfg = PACTConfig()
    records = []
    for inplace in (False, True):
        z = logits.clone().requires_grad_()
        out = pact_loss_from_config(z, labels, ref_full, ref_post, ids, weights, pos, cfg, backend=backend,
                                    inplace_grad=inplace)
        out.loss.backward()
        n = int(out.num_rows)
        last = slice(rows - tail, rows)
        sub = dict(logits=logits[last].double().cpu(), labels=labels[last].cpu(), ref_full=ref_full[last].double().cpu(),
                   ref_post=ref_post[last].double().cpu(), safety_ids=ids.cpu(), safety_weights=weights.double().cpu(),
                   answer_pos=pos[last].cpu())
        want, want_grad = oracle(sub, cfg, "cpu")
        n_sub = int(want.num_rows)
        record = {
            "backend": backend + ("+inplace" if inplace else ""), "variant": "pact", "dtype": "bfloat16",
            "shape": [rows, vocab], "rows_checked": f"last {tail}",
            "grad_err": rel_err(z.grad[last].cpu(), want_grad * n_sub / n),
            "ce_rows_err": rel_err(out.ce_rows[last].cpu(), want.ce_rows),
            "kl_rows_err": rel_err(out.kl_rows[last].cpu(), want.kl_rows),
        }
        record["ok"] = record["grad_err"] < 1e-2 and record["ce_rows_err"] < 1e-5 and record["kl_rows_err"] < 1e-5
        records.append(record)
        log(record)
        del z, out
    return records


def precision_checks(device: str, log, backends=("triton",)) -> list:
    """The CPU suite's precision matrix (tests/kernels/test_precision.py) on ``device``, backward without a sync."""
    from tests.kernels import test_precision as matrix

    records = []
    for backend in backends:
        for api in ("pact_loss", "fused_linear_pact_loss"):
            for mode, (h_dtype, w_dtype, amp, _, _) in matrix.MODES.items():
                if api == "pact_loss" and h_dtype != w_dtype and amp is None:
                    continue
                record = {"check": "precision", "backend": backend, "api": api, "mode": mode}
                try:
                    cell = matrix.run_cell(api, mode, backend, device=device, no_sync_backward=device == "cuda")
                    record.update(errors=matrix.check_cell(api, mode, *cell), ok=True)
                except (AssertionError, RuntimeError) as error:
                    record.update(error=str(error)[:300], ok=False)
                records.append(record)
                log(record)
    return records


def large_k_strided_check(device: str, log) -> list:
    """triton at K = 600 (K_PAD 1024, 16384-column steps) on column-strided bf16 logits, V = 50257."""
    batch = random_batch(rows=4, vocab=50257, k=600, dtype=torch.bfloat16, seed=99)
    cfg = PACTConfig()
    want, want_grad = oracle(batch, cfg, "cpu")
    wide = torch.zeros(50257, 4, dtype=torch.bfloat16, device=device).t()  # column stride 4
    wide.copy_(batch["logits"])
    out, grad = run_backend(dict(batch, logits=wide), cfg, "triton", False, device)
    record = {"check": "large_k_strided", "backend": "triton", "k": 600, "dtype": "bfloat16",
              "loss_err": rel_err(out.loss.cpu(), want.loss), "grad_err": rel_err(grad.cpu(), want_grad)}
    record["ok"] = record["loss_err"] < 1e-2 and record["grad_err"] < 1e-2
    log(record)
    return [record]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny shapes, no 64-bit offset check (CPU smoke run)")
    parser.add_argument("-o", "--out", default="correctness.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_correctness: no CUDA device", file=sys.stderr)
        return 2

    def log(record):
        print(("ok  " if record["ok"] else "FAIL") + " " + json.dumps(record), flush=True)

    with_cuda = cuda_backend_ready(args.device)
    cases = CASES + (CUDA_CASES if with_cuda else ())
    if args.small:
        records = small_grid_checks(args.device, rows=6, vocab=300, k=7, log=log, cases=cases)
    else:
        records = small_grid_checks(args.device, rows=64, vocab=50257, k=50, log=log, cases=cases)
        records += offsets_check(args.device, rows=16384, vocab=152064, k=50, tail=4, log=log)
        if with_cuda:
            records += offsets_check(args.device, rows=16384, vocab=152064, k=50, tail=4, log=log, backend="cuda")
    records += precision_checks(args.device, log, ("triton", "cuda") if with_cuda else ("triton",))
    if not args.small:
        records += large_k_strided_check(args.device, log)
    failed = [r for r in records if not r["ok"]]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
                                          "failed": len(failed), "cases": records}, indent=2) + "\n")
    print(f"gpu_correctness: {len(records) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
