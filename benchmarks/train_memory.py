"""Peak memory of the driver's training steps, fused head (``fused_linear: true``) vs ``[rows, V]`` logits.

    .venv/bin/python -m benchmarks.train_memory [--vocab 49152 --hidden 256 --layers 2 --steps 4]

Each case runs ``pact/train.py`` (the arguments of :func:`benchmarks.train_step.train_args`:
one process, ZeRO 0, float32, LoRA on all projections, micro-batch
``--micro-batch``, up to 256 tokens) in a fresh process started with peak_memory.py's allocator
settings, on a byte-level Llama whose output head has ``--vocab`` rows (the
tokenizer's 259 tokens plus unused rows, as a padded vocabulary). The peak is
the RSS high-water mark from the start of the first micro-batch to the end of
the run, above the RSS at that start (model, optimizer, data already loaded):
the memory the steps themselves take. The step time is the median CPU time of
steps 2..N (one thread). Writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .cpu_timing import machine_line, write_results
from .peak_memory import CPU_MALLOC_ENV, REPO, _rss_field
from .train_step import make_tokens, train_args

CASES = [("sft", "false"), ("sft", "true"), ("pact", "false"), ("pact", "true")]


def child(args: list) -> None:
    """Run the driver in this process, the high-water mark reset when the first micro-batch starts."""
    import pact.training.loop as loop
    from pact.training.entry import main

    inner = loop.micro_batch_loss
    state = {}

    def first_reset(*a, **kw):
        if not state:
            Path("/proc/self/clear_refs").write_text("5")
            state["base"] = _rss_field("VmRSS")
        return inner(*a, **kw)

    loop.micro_batch_loss = first_reset
    assert main(args) == 0
    print(json.dumps({"peak_bytes": _rss_field("VmHWM") - state["base"]}))


def save_model(out: Path, vocab: int, hidden: int, layers: int) -> Path:
    from pact.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=0, hidden=hidden, layers=layers)
    model.resize_token_embeddings(vocab, mean_resizing=False)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run_case(root: Path, model: Path, tokens: Path, steps: int, method: str, fused: str, micro_batch: int) -> dict:
    out = root / f"{method}-{fused}"
    cmd = [sys.executable, "-m", "benchmarks.train_memory", "--child", "--",
           *train_args(out, model, tokens, steps, f"method={method}", f"fused_linear={fused}",
                       f"micro_batch_size={micro_batch}")]
    env = dict(os.environ, **CPU_MALLOC_ENV, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), method=method, fused_linear=fused == "true",
                losses=[r["loss"] for r in log], step_cpu_seconds=statistics.median(r["cpu_seconds"] for r in log[1:]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=2, help="micro_batch_size (rows grow with it)")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("-o", "--out", default="benchmarks/results/train_memory")
    args = parser.parse_args(argv)
    if args.child:
        return child(args.rest)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = save_model(root / "model", args.vocab, args.hidden, args.layers)
        tokens = root / "tokens.json"
        make_tokens(tokens, args.vocab, args.k)
        results = [run_case(root, model, tokens, args.steps, method, fused, args.micro_batch)
                   for method, fused in CASES]
    lines = [
        f"{machine_line()}; byte-level Llama, hidden "
        f"{args.hidden}, {args.layers} layers, head V = {args.vocab}, micro-batch {args.micro_batch}, up to 256 tokens, K = {args.k}, "
        f"float32, LoRA, {args.steps} steps; peak: RSS above the first step's start, fresh process per case",
        "",
        "| method | fused_linear | steps' peak MiB | vs unfused | step CPU s (one thread) | losses equal |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        base = next(x for x in results if x["method"] == r["method"] and not x["fused_linear"])
        same = max(abs(a - b) for a, b in zip(r["losses"], base["losses"])) < 1e-5
        lines.append(f"| {r['method']} | {str(r['fused_linear']).lower()} | {r['peak_bytes'] / 2**20:.1f} | "
                     f"{r['peak_bytes'] / base['peak_bytes']:.3f} | {r['step_cpu_seconds']:.2f} | {'yes' if same else 'NO'} |")
    write_results(args.out, results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
