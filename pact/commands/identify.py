"""``pact identify``: find the safety tokens of an aligned model against its base (SPEC §1)."""
from __future__ import annotations

import argparse
import sys
import time

from .common import add_model_args, add_prompt_args, add_runtime_args, resolve_device

HELP = "identify the safety tokens of an aligned model against its base model (paper §2.1)"


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("identify", help=HELP, description=HELP)
    add_model_args(p, "--safe", "the aligned (chat) model M_safe")
    add_model_args(p, "--base", "its base model M_base (same vocabulary; the tokenizer of --safe is used)",
                   gguf_flag="--base-gguf-file")
    add_prompt_args(p, required=False)
    p.add_argument("-k", "--k", type=int, default=50, help="size of the safety-token set (default 50)")
    p.add_argument("--select", choices=["paper", "authors"], default="paper",
                   help="paper: top-K by d(v), w = d; authors: top-K by mean aligned probability, "
                        "standardised d clipped at 0 (default paper)")
    p.add_argument("--responses", default="generate", metavar="generate|FILE|SOURCE",
                   help="generate: the aligned model answers greedily (default); FILE: a local file of "
                        "(prompt, response) pairs (columns --prompt-column and --response-column); or a named "
                        "source that carries refusals (uncensorbench)")
    p.add_argument("--response-column", default="response", help="response column of a --responses FILE")
    p.add_argument("--base-format", choices=["chat", "plain"], default="chat",
                   help="chat: the base model sees the same chat-template tokens; plain: 'User: ...\\n\\n"
                        "Assistant: ' (default chat)")
    p.add_argument("--average", choices=["token", "prompt"], default="token",
                   help="token: every answer step counts once (default); prompt: mean per prompt, then over prompts")
    p.add_argument("--max-resp-len", type=int, default=None, metavar="N", help="keep the first N answer tokens")
    add_runtime_args(p)
    p.add_argument("-o", "--output", required=True, help="where to write tokens.json")
    p.add_argument("--save-responses", default=None, metavar="FILE",
                   help="also write the (prompt, response) pairs used, as JSONL (reusable with --responses)")
    p.set_defaults(func=run)
    return p


def _prompts_and_mode(args):
    from ..data import get_source
    from ..data.sources import LocalFileSource, PromptSourceError

    if args.responses == "generate":
        if not args.prompts:
            raise PromptSourceError("--prompts is required with --responses generate")
        return get_source(args.prompts, column=args.prompt_column, limit=args.limit), "generate"
    if args.prompts:
        raise PromptSourceError("--responses FILE|SOURCE brings its own prompts: drop --prompts")
    src = get_source(args.responses, column=args.prompt_column, limit=args.limit,
                     response_column=args.response_column)
    if isinstance(src, LocalFileSource) and src.response_column is None:
        src.response_column = args.response_column
    if not src.has_responses:
        raise PromptSourceError(f"{args.responses}: not every prompt has a response")
    return src, "given"


def run(args: argparse.Namespace) -> int:
    from ..models import load_model, load_tokenizer, resolve_model_ref
    from ..safety_tokens import identify

    progress = not args.no_progress
    t0 = time.time()
    _check_output(args.output)  # before any work: a bad -o used to fail after identification
    source, mode = _prompts_and_mode(args)
    n = source.size
    device = resolve_device(args.device)
    safe_ref = resolve_model_ref(args.safe, args.gguf_file)
    base_ref = resolve_model_ref(args.base, args.base_gguf_file)
    print(f"[identify] prompts {source.describe()} ({n}), responses: {mode}; loading {safe_ref} and {base_ref} "
          f"({args.dtype}, {device})", file=sys.stderr)
    tokenizer = load_tokenizer(safe_ref)
    safe = load_model(safe_ref, dtype=args.dtype, device=device)
    base = load_model(base_ref, dtype=args.dtype, device=device)
    res = identify(safe, base, tokenizer, source, k=args.k, selection=args.select, responses=mode,
                   base_format=args.base_format, max_new_tokens=args.max_new_tokens,
                   max_resp_len=args.max_resp_len, batch_size=args.batch_size, average=args.average,
                   safe_name=str(safe_ref), base_name=str(base_ref), prompts_name=source.describe(),
                   progress=progress)
    st = res.tokens
    path = st.save(args.output)
    if args.save_responses:
        _save_responses(args.save_responses, res, tokenizer)
    if len(st) < args.k:
        print(f"[identify] only {len(st)} tokens have d(v) > 0 (asked for k={args.k})", file=sys.stderr)
    print(f"[identify] {res.num_prompts} prompts, {res.num_steps} answer steps"
          + (f", {res.skipped} empty answers skipped" if res.skipped else "")
          + f", {time.time() - t0:.1f} s; wrote {len(st)} tokens ({st.selection}) to {path}")
    width = max(len(repr(s)) for s in st.strings[:10])
    print(f"{'rank':>4}  {'id':>6}  {'token':<{width}}  {'d(v)':>10}  {'p_safe':>8}  {'weight':>8}")
    for r, (i, s, d, p, w) in enumerate(zip(st.ids, st.strings, st.scores, st.mean_safe_prob, st.weights), 1):
        if r > 10:
            break
        print(f"{r:>4}  {i:>6}  {s!r:<{width}}  {d:>10.5f}  {p:>8.5f}  {w:>8.5f}")
    return 0


def _check_output(output: str) -> None:
    """``-o`` names a file that can be written: not a directory, not under a file."""
    from pathlib import Path

    out = Path(output)
    if out.is_dir():
        raise ValueError(f"-o {output} is a directory; pass a file path such as {out / 'tokens.json'}")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"-o {output} is under {parent}, which is a file; pass another path")


def _save_responses(path, res, tokenizer) -> None:
    import json
    from pathlib import Path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for prompt, ids in zip(res.prompts, res.responses):
            f.write(json.dumps({"prompt": prompt, "response": tokenizer.decode(ids, skip_special_tokens=True),
                                "response_ids": ids}, ensure_ascii=False) + "\n")
