"""The fused linear head against the float64 oracle on the device (its speed: ``benchmarks/gpu_fused_linear.py``).

    python -m checks.gpu_fused_linear -o OUT/fused_linear_correctness.json                 # CUDA
    TRITON_INTERPRET=1 python -m checks.gpu_fused_linear --device cpu --small -o /tmp/f.json  # CPU smoke run

A small shape (tinier with ``--small``), float32 and bf16, every variant:
``fused_linear_pact_loss`` on the triton backend (and cuda when built) vs the
naive loss on float64 logits ``hidden @ weight.T + bias``, soft-cap on: loss
and gradients of hidden, weight, bias (relative error < 1e-5 in float32, < 2e-2 in bf16).
Writes one JSON record per case to ``-o``; exit status 1 when a case fails.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from benchmarks.gpu_fused_linear import backends_here, inputs
from pact.atomic_files import write_text_atomic


def check(device, small: bool = False) -> list:
    """Fused vs the float64 oracle on a small shape (tinier with ``small``); a list of result dicts (``ok`` each)."""
    from pact_kernels import VARIANTS, PACTConfig, fused_linear_pact_loss
    from pact_kernels import PACTInputs
    from pact_kernels.backends.naive import naive_pact_loss

    results = []
    rows, width, vocab = (9, 8, 120) if small else (37, 48, 1000)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        for backend in backends_here(device):
            for variant in VARIANTS:
                x = inputs(rows, width, vocab, dtype, device, seed=VARIANTS.index(variant))
                bias = (0.5 * torch.randn(vocab, generator=torch.Generator().manual_seed(1))).to(device, dtype)
                bias.requires_grad_()
                full = variant == "full_vocab"
                ref_hidden = (torch.randn(rows, width, generator=torch.Generator().manual_seed(2))
                              .to(device, dtype)) if full else None
                cfg = PACTConfig(variant=variant)
                leaves = [t.detach().double().cpu().requires_grad_() for t in (x["hidden"], x["weight"], bias)]
                z = leaves[0] @ leaves[1].T + leaves[2]
                z = 5.0 * torch.tanh(z / 5.0)
                if full:
                    r = ref_hidden.double().cpu() @ leaves[1].detach().T + leaves[2].detach()
                    rf, rp = 5.0 * torch.tanh(r / 5.0), None
                else:
                    rf, rp = x["ref_full"].double().cpu(), x["ref_post"].double().cpu()
                want = naive_pact_loss(z, PACTInputs(x["labels"].cpu(), rf, rp, x["ids"].cpu(),
                                                     x["weights"].double().cpu(), x["answer_pos"].cpu()), cfg)
                want.loss.backward()
                refs = (None, None) if full else (x["ref_full"], x["ref_post"])
                got = fused_linear_pact_loss(x["hidden"], x["weight"], x["labels"], *refs, x["ids"], x["weights"],
                                             x["answer_pos"], bias=bias, softcap=5.0, backend=backend, chunk_rows=4,
                                             ref_hidden=ref_hidden, **cfg.as_kwargs())
                got.loss.backward()
                errs = {"loss": rel_err(got.loss, want.loss)}
                for name, a, b in zip(("hidden", "weight", "bias"), (x["hidden"], x["weight"], bias), leaves):
                    errs[f"d_{name}"] = rel_err(a.grad, b.grad)
                ok = all(v < tol for v in errs.values())
                results.append(dict(backend=backend, variant=variant, dtype=str(dtype).split(".")[-1], ok=ok, **errs))
                print(("ok  " if ok else "FAIL") + f" fused {backend} {variant} {dtype}: " +
                      ", ".join(f"{k} {v:.1e}" for k, v in errs.items()), flush=True)
    return results


def rel_err(a, b) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def rel_err(a, b) -> float:
    """``‖a − b‖ / ‖b‖`` in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="a tiny shape (CPU smoke run)")
    parser.add_argument("-o", "--out", required=True, help="the JSON file of the results")
    args = parser.parse_args(argv)
    results = check(torch.device(args.device), args.small)
    write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
    failed = sum(not r["ok"] for r in results)
    print(f"gpu_fused_linear: {len(results) - failed} of {len(results)} cases within tolerance")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
