"""Fused linear head vs ``hidden @ weight.T`` then the loss: peak memory and time on the CPU.

    .venv/bin/python -m benchmarks.fused_linear [--rows 4096 --hidden 576 --vocab 49152] [-o benchmarks/results/fused_linear]

Cases, each a forward + backward from ``hidden [rows, H]`` and ``weight [V, H]``
(float32, K = 50, every 7th row unlabelled):

- ``pact unfused``: ``logits = hidden @ weight.T``, then ``pact_loss(..., backend="torch",
  inplace_grad=True)`` (the driver's ``fused_linear: false`` path);
- ``pact fused``: :func:`pact_kernels.fused_linear_pact_loss` (torch backend, default chunk);
- ``ce unfused``: ``F.cross_entropy(hidden @ weight.T, labels)``; ``ce fused``:
  :func:`pact_kernels.fused_linear_cross_entropy`;

each with the head frozen (LoRA: gradient to hidden only) and trainable
(full fine-tuning: gradients to hidden and weight). Peak memory: RSS
high-water mark above the inputs, in a fresh process per case (peak_memory.py),
so it includes the gradients the call returns (``d hidden``, and ``d weight``,
the size of the weight, when the head trains). Time: CPU time
(``time.process_time``) of one thread (``torch.set_num_threads(1)``), the
median of ``--repeats`` calls after a warm-up, the cases interleaved call by
call in one process: on a shared machine wall time swings with the other
load, one thread's CPU time much less. Writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json

import torch

from .cpu_timing import machine_line, time_cases, write_results
from .peak_memory import loss_inputs, peak_bytes, run_fresh_process

CASES = ("pact unfused", "pact fused", "ce unfused", "ce fused")


def make_inputs(rows: int, width: int, vocab: int, k: int, dtype: torch.dtype, device, train_head: bool, seed=0):
    """``hidden [rows, H]`` (requires grad), ``weight [V, H]`` (requires grad when ``train_head``), labels,
    refs ``[rows, K]``, ids, weights, answer positions."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, width, generator=g).to(device=device, dtype=dtype).requires_grad_()
    weight = (torch.randn(vocab, width, generator=g) / width**0.5).to(device=device, dtype=dtype)
    weight.requires_grad_(train_head)
    labels, ref_full, ref_post, ids, weights, answer_pos = loss_inputs(rows, vocab, k, dtype, device, g)
    return dict(hidden=hidden, weight=weight, labels=labels, ref_full=ref_full, ref_post=ref_post, ids=ids,
                weights=weights, answer_pos=answer_pos)


def step(case: str, x: dict, backend: str = "torch") -> float:
    """One forward + backward of ``case`` on inputs ``x``; returns the loss."""
    from pact_kernels import fused_linear_cross_entropy, fused_linear_pact_loss, pact_loss

    for t in (x["hidden"], x["weight"]):
        t.grad = None
    h, w = x["hidden"], x["weight"]
    refs = (x["ref_full"], x["ref_post"], x["ids"], x["weights"], x["answer_pos"])
    if case == "pact unfused":
        loss = pact_loss(h @ w.T, x["labels"], *refs, backend=backend, inplace_grad=True).loss
    elif case == "pact fused":
        loss = fused_linear_pact_loss(h, w, x["labels"], *refs, backend=backend).loss
    elif case == "ce unfused":
        loss = torch.nn.functional.cross_entropy(h @ w.T, x["labels"])
    elif case == "ce fused":
        loss = fused_linear_cross_entropy(h, w, x["labels"], backend=backend).loss
    else:
        raise ValueError(f"case={case!r}: use one of {', '.join(CASES)}")
    loss.backward()
    return float(loss.detach())


def measure_memory(case: str, rows: int, width: int, vocab: int, train_head: bool) -> dict:
    """Peak bytes above the inputs of one call, in a fresh CPU process (this module's ``--child``)."""
    return json.loads(run_fresh_process("benchmarks.fused_linear", "--child", case, "--rows", str(rows),
                                        "--hidden", str(width), "--vocab", str(vocab),
                                        *(["--train-head"] if train_head else [])))


def child(case: str, rows: int, width: int, vocab: int, train_head: bool) -> None:
    x = make_inputs(rows, width, vocab, 50, torch.float32, torch.device("cpu"), train_head)
    step(case, x)  # warm-up: lazy imports, first-touch allocations
    for t in (x["hidden"], x["weight"]):
        t.grad = None
    peak = peak_bytes(lambda: step(case, x), torch.device("cpu"))
    grads = sum(t.numel() * t.element_size() for t in (x["hidden"], x["weight"]) if t.requires_grad)
    print(json.dumps({"case": case, "train_head": train_head, "peak_bytes": peak, "grad_bytes": grads}))


def median_seconds(rows: int, width: int, vocab: int, train_head: bool, repeats: int) -> dict:
    """Median CPU seconds per case (:func:`benchmarks.cpu_timing.time_cases`); fused and unfused losses equal."""
    x = make_inputs(rows, width, vocab, 50, torch.float32, torch.device("cpu"), train_head)
    return time_cases(step, CASES, x, repeats, agree={f"{kind} fused": f"{kind} unfused" for kind in ("pact", "ce")})


def table(results: list, args) -> str:
    lines = [
        f"{machine_line()}; rows {args.rows}, "
        f"H {args.hidden}, V {args.vocab}, K 50, float32, forward + backward; peak: RSS above the inputs, fresh "
        f"process per case; time: CPU seconds of one thread, median of {args.repeats}, cases interleaved",
        "",
        "| loss | head | unfused peak MiB | fused peak MiB | fused / unfused peak | the same beyond the returned "
        "gradients | unfused s | fused s | fused / unfused time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['loss']} | {'trainable' if r['train_head'] else 'frozen (LoRA)'} | "
            f"{r['unfused_peak'] / 2**20:.1f} | {r['fused_peak'] / 2**20:.1f} | "
            f"{r['fused_peak'] / r['unfused_peak']:.3f} | "
            f"{(r['fused_peak'] - r['grad_bytes']) / (r['unfused_peak'] - r['grad_bytes']):.3f} | "
            f"{r['unfused_s']:.2f} | {r['fused_s']:.2f} | "
            f"{r['fused_s'] / r['unfused_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--heads", choices=["both", "frozen", "trainable"], default="both")
    parser.add_argument("--train-head", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("-o", "--out", default="benchmarks/results/fused_linear")
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.rows, args.hidden, args.vocab, args.train_head)
    results = []
    heads = {"both": (False, True), "frozen": (False,), "trainable": (True,)}[args.heads]
    for train_head in heads:
        mem = {case: measure_memory(case, args.rows, args.hidden, args.vocab, train_head) for case in CASES}
        secs = median_seconds(args.rows, args.hidden, args.vocab, train_head, args.repeats)
        for kind in ("pact", "ce"):
            results.append(dict(loss=kind, train_head=train_head, unfused_peak=mem[f"{kind} unfused"]["peak_bytes"],
                                fused_peak=mem[f"{kind} fused"]["peak_bytes"], grad_bytes=mem[f"{kind} fused"]["grad_bytes"],
                                unfused_s=secs[f"{kind} unfused"], fused_s=secs[f"{kind} fused"]))
    write_results(args.out, dict(vars(args), results=results), table(results, args))


if __name__ == "__main__":
    main()
