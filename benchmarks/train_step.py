"""Training step time of ``pact`` vs ``sft`` on one small model, reference online and from ``ref_cache=DIR``.

    .venv/bin/python -m benchmarks.train_step [--hidden 256 --layers 4 --steps 20]

Each method runs ``pact/train.py`` in a fresh process on the same data and
seed (one process, ZeRO 0, float32, LoRA r 8 on all projections); the step
time is the median of the per-step CPU times (process time, all threads) in
``train_log.jsonl`` after two warm-up steps: on a shared machine the wall
times swing with the other load, the CPU times much less (one thread each,
``OMP_NUM_THREADS=1``, so idle threads do not spin). The cache is filled
before the first step, so its one-time cost shows only in the process time. Writes ``benchmarks/results/train_step.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .cpu_timing import machine_line, write_results

REPO = Path(__file__).resolve().parent.parent


def make_tokens(path: Path, vocab: int, k: int) -> None:
    """A random safety set of ``k`` ids over ``vocab`` rows, stamped with the tiny tokenizer (as `pact identify` does)."""
    from pact.identify import SafetyTokens
    from pact.tiny import tiny_tokenizer

    ids = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))[:k].tolist()
    SafetyTokens(safe_model="bench", base_model="bench", vocab_size=vocab, k=k, selection="paper", ids=ids,
                 strings=[str(i) for i in ids], weights=[1.0 / (j + 1) for j in range(k)],
                 scores=[1.0 / (j + 1) for j in range(k)], mean_safe_prob=[0.01] * k, prompts="bench",
                 num_prompts=1, num_steps=1).stamp(tiny_tokenizer()).save(path)


def train_args(out: Path, model: Path, tokens: Path, steps: int, *overrides: str) -> list:
    """The arguments of ``pact/train.py`` for one benchmark run (one process, ZeRO 0, LoRA on all projections)."""
    return ["--config", str(REPO / "configs" / "tiny.yaml"), f"model={model}", f"safety_tokens={tokens}",
            f"output_dir={out}", "deepspeed=null", f"max_steps={steps}", "num_samples=50", "harmful_fraction=0.1",
            "save_every=0", "lora_target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]",
            *overrides]


def run(name: str, root: Path, model: Path, tokens: Path, steps: int, *overrides: str) -> dict:
    out = root / name
    cmd = [sys.executable, str(REPO / "pact" / "train.py"), *train_args(out, model, tokens, steps, *overrides)]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1"))
    wall = time.perf_counter() - start
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {"name": name, "step_seconds": statistics.median(r["seconds"] for r in log[2:]),
            "step_cpu_seconds": statistics.median(r["cpu_seconds"] for r in log[2:]),
            "steps": len(log), "process_seconds": wall}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("-o", "--out", default="benchmarks/results/train_step")
    args = parser.parse_args(argv)
    from pact.tiny import save_tiny

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = save_tiny(root / "model", hidden=args.hidden, layers=args.layers)
        tokens = root / "tokens.json"
        make_tokens(tokens, 259, args.k)
        results = [
            run("sft", root, model, tokens, args.steps, "method=sft"),
            run("pact (reference online)", root, model, tokens, args.steps, "method=pact"),
            run("pact (ref_cache)", root, model, tokens, args.steps, "method=pact", f"ref_cache={root / 'cache'}"),
        ]
    sft = results[0]["step_cpu_seconds"]
    lines = [
        f"{machine_line()}; byte-level Llama, "
        f"hidden {args.hidden}, {args.layers} layers, micro-batch 2, up to 256 tokens, K = {args.k}, float32, "
        f"fused_linear true (the driver's default), one thread, median of steps 3..{args.steps}",
        "",
        "| method | step CPU s | vs sft | step wall s | process wall s (start-up, cache fill) |",
        "|---|---|---|---|---|",
    ] + [f"| {r['name']} | {r['step_cpu_seconds']:.3f} | {r['step_cpu_seconds'] / sft:.2f} | "
         f"{r['step_seconds']:.3f} | {r['process_seconds']:.1f} |" for r in results]
    write_results(args.out, results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
