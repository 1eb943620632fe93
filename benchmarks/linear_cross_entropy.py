"""Plain cross-entropy through the output head: ours against torch's ``linear_cross_entropy``, on the CPU.

    .venv/bin/python -m benchmarks.linear_cross_entropy [--rows 2048 --hidden 576 --vocab 49152] [-o OUT]

Cases, each a forward + backward from ``hidden [rows, H]`` (requires grad) and
``weight [V, H]`` (float32, every 7th row unlabelled), the head frozen (LoRA)
or trainable:

- ``unfused``: ``F.cross_entropy(hidden @ weight.T, labels)``;
- ``pact_kernels``: :func:`pact_kernels.fused_linear_cross_entropy` (torch backend, default chunk);
- ``torch chunked``: ``F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())``
  (torch ≥ 2.13; its chunked path, defaults chosen by torch);
- ``torch reference``: ``F.linear_cross_entropy(..., options=None)`` (logits materialised).

Peak memory: RSS high-water mark above the inputs, a fresh process per case
(:func:`benchmarks.peak_memory.peak_bytes`). Time: CPU seconds of one thread
(``time.process_time``), median of ``--repeats`` calls after a warm-up, the
cases interleaved call by call. The losses must agree to 1e-4 (relative).
Writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse

import torch

from .cpu_timing import machine_line, time_cases, write_results
from .peak_memory import peak_bytes, run_fresh_process

CASES = ("unfused", "pact_kernels", "torch chunked", "torch reference")


def make_inputs(rows: int, width: int, vocab: int, train_head: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, width, generator=g).requires_grad_()
    weight = (torch.randn(vocab, width, generator=g) / width**0.5).requires_grad_(train_head)
    labels = torch.randint(0, vocab, (rows,), generator=g)
    labels[::7] = -100
    return dict(hidden=hidden, weight=weight, labels=labels)


def step(case: str, x: dict) -> float:
    """One forward + backward of ``case``; returns the loss."""
    from pact_kernels import fused_linear_cross_entropy

    F = torch.nn.functional
    for t in (x["hidden"], x["weight"]):
        t.grad = None
    h, w, y = x["hidden"], x["weight"], x["labels"]
    if case == "unfused":
        loss = F.cross_entropy(h @ w.T, y)
    elif case == "pact_kernels":
        loss = fused_linear_cross_entropy(h, w, y, backend="torch").loss
    elif case == "torch chunked":
        loss = F.linear_cross_entropy(h, w, y, options=torch.nn.LinearCrossEntropyOptions())
    elif case == "torch reference":
        loss = F.linear_cross_entropy(h, w, y, options=None)
    else:
        raise ValueError(f"case={case!r}: use one of {', '.join(CASES)}")
    loss.backward()
    return float(loss.detach())


def measure_memory(case: str, args, train_head: bool) -> int:
    """Peak bytes above the inputs of one call, in a fresh process (this module's ``--child``)."""
    return int(run_fresh_process("benchmarks.linear_cross_entropy", "--child", case, "--rows", str(args.rows),
                                 "--hidden", str(args.hidden), "--vocab", str(args.vocab),
                                 *(["--train-head"] if train_head else [])))


def child(case: str, args) -> None:
    x = make_inputs(args.rows, args.hidden, args.vocab, args.train_head)
    step(case, x)  # warm-up: lazy imports, first-touch allocations
    for t in (x["hidden"], x["weight"]):
        t.grad = None
    print(peak_bytes(lambda: step(case, x), torch.device("cpu")))


def median_seconds(args, train_head: bool) -> dict:
    """Median CPU seconds per case (:func:`benchmarks.cpu_timing.time_cases`); every loss equal to unfused's."""
    x = make_inputs(args.rows, args.hidden, args.vocab, train_head)
    return time_cases(step, CASES, x, args.repeats, agree={case: "unfused" for case in CASES[1:]})


def table(results: list, args) -> str:
    lines = [
        f"{machine_line()}; rows {args.rows}, "
        f"H {args.hidden}, V {args.vocab}, float32, forward + backward; peak: RSS above the inputs, fresh process "
        f"per case; time: CPU seconds of one thread, median of {args.repeats}, cases interleaved",
        "",
        "| head | case | peak MiB | s | s / pact_kernels |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        ours = next(o["seconds"] for o in results if o["train_head"] == r["train_head"] and o["case"] == "pact_kernels")
        lines.append(f"| {'trainable' if r['train_head'] else 'frozen (LoRA)'} | {r['case']} | "
                     f"{r['peak_bytes'] / 2**20:.1f} | {r['seconds']:.2f} | {r['seconds'] / ours:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-head", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("-o", "--out", default="benchmarks/results/linear_cross_entropy")
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args)
    results = []
    for train_head in (False, True):
        secs = median_seconds(args, train_head)
        for case in CASES:
            results.append(dict(case=case, train_head=train_head, seconds=secs[case],
                                peak_bytes=measure_memory(case, args, train_head)))
    write_results(args.out, dict(vars(args), results=results), table(results, args))


if __name__ == "__main__":
    main()
