"""``pact identify``: find the safety tokens of an aligned model against its base (SPEC §1)."""
from __future__ import annotations

import argparse
import sys
import time

from ..identify.presets import IDENTIFY_PRESETS, PRESET_COLUMNS, WEIGHT_DTYPE_NAMES
from .common import add_model_args, add_prompt_args, add_runtime_args, add_trust_remote_code_arg, resolve_device

HELP = "identify the safety tokens of an aligned model against its base model (paper §2.1)"


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("identify", help=HELP, description=HELP)
    add_model_args(p, "--safe", "the aligned (chat) model M_safe")
    add_model_args(p, "--base", "its base model M_base (same vocabulary; the tokenizer of --safe is used)",
                   gguf_flag="--base-gguf-file")
    add_trust_remote_code_arg(p)
    add_prompt_args(p, required=False)
    p.set_defaults(prompt_column=None)        # None: the preset's, else "prompt"
    p.add_argument("--preset", choices=sorted(IDENTIFY_PRESETS), default=None,
                   help="authors: the authors' compute_safety_tokens_pact.py (--responses FILE with columns "
                        "input/output, --limit 512, -k 50, --select authors, --no-eos, --base-format plain "
                        "--no-base-bos, --strip, --max-resp-len 64, --average prompt, --std-min-abs-d 1e-9, "
                        "--norm-eps 1e-6, --weights-dtype bfloat16); options given explicitly win")
    p.add_argument("-k", "--k", type=int, default=None, help="size of the safety-token set (default 50)")
    p.add_argument("--select", choices=["paper", "authors"], default=None,
                   help="paper: top-K by d(v), w = d; authors: top-K by mean aligned probability, "
                        "standardised d clipped at 0 (default paper)")
    p.add_argument("--responses", default="generate", metavar="generate|FILE|SOURCE",
                   help="generate: the aligned model answers greedily (default); FILE: a local file of "
                        "(prompt, response) pairs (columns --prompt-column and --response-column); or a named "
                        "source that carries refusals (uncensorbench)")
    p.add_argument("--response-column", default=None, help="response column of a --responses FILE "
                   "(default response)")
    p.add_argument("--eos", action=argparse.BooleanOptionalAction, default=None,
                   help="append the end-of-sequence token to each given answer (default; --no-eos: not)")
    p.add_argument("--strip", action=argparse.BooleanOptionalAction, default=None,
                   help="strip whitespace around prompts and given answers (default: no)")
    p.add_argument("--base-format", choices=["chat", "plain"], default=None,
                   help="chat: the base model sees the same chat-template tokens; plain: 'User: ...\\n\\n"
                        "Assistant: ' (default chat)")
    p.add_argument("--base-bos", action=argparse.BooleanOptionalAction, default=None,
                   help="with --base-format plain: the prefix gets the tokenizer's BOS (default; --no-base-bos: "
                        "tokenised without special tokens)")
    p.add_argument("--average", choices=["token", "prompt"], default=None,
                   help="token: every answer step counts once (default); prompt: mean per prompt, then over prompts")
    p.add_argument("--max-resp-len", type=int, default=None, metavar="N", help="keep the first N answer tokens")
    p.add_argument("--std-min-abs-d", type=float, default=None, metavar="X",
                   help="--select authors: the authors' filter: tokens with d(v) = 0 leave S, only those with "
                        "|d(v)| > X are standardised, the others keep d(v) (default: standardise all of S)")
    p.add_argument("--norm-eps", type=float, default=None, metavar="EPS",
                   help="--select authors: add EPS to the std and the L2 norm (default 0)")
    p.add_argument("--weights-dtype", choices=WEIGHT_DTYPE_NAMES, default=None,
                   help="round the weights through this dtype (default float64: no rounding)")
    add_runtime_args(p)
    p.add_argument("-o", "--output", required=True, help="where to write tokens.json")
    p.add_argument("--save-responses", default=None, metavar="FILE",
                   help="also write the (prompt, response) pairs used, as JSONL (reusable with --responses)")
    p.set_defaults(func=run)
    return p


#: The options' values without a preset (None in the parser, so that a preset can tell what was given).
DEFAULTS = dict(k=50, selection="paper", prompt_column="prompt", response_column="response", append_eos=True,
                strip=False, base_format="chat", base_bos=True, average="token", max_resp_len=None, std_min_abs_d=None,
                norm_eps=0.0, weights_dtype="float64", limit=None)
#: Option attribute -> identify keyword (or DEFAULTS key).
_ARG_KEYS = dict(k="k", select="selection", prompt_column="prompt_column", response_column="response_column",
                 eos="append_eos", strip="strip", base_format="base_format", base_bos="base_bos", average="average",
                 max_resp_len="max_resp_len", std_min_abs_d="std_min_abs_d", norm_eps="norm_eps",
                 weights_dtype="weights_dtype", limit="limit")


def resolve_options(args) -> dict:
    """The run's options: the defaults, then the preset's, then the options given on the command line."""
    opts = dict(DEFAULTS)
    if args.preset:
        preset = dict(IDENTIFY_PRESETS[args.preset])
        preset.pop("responses")
        opts.update(preset, **PRESET_COLUMNS.get(args.preset, {}))
    for attr, key in _ARG_KEYS.items():
        value = getattr(args, attr)
        if value is not None:
            opts[key] = value
    if opts["selection"] == "paper":          # a preset's authors-rule settings do not apply to --select paper
        for attr in ("std_min_abs_d", "norm_eps"):
            if getattr(args, attr) is None:
                opts[attr] = DEFAULTS[attr]
    return opts


def _prompts_and_mode(args, opts):
    from ..data import get_source
    from ..data.sources import LocalFileSource, PromptSourceError

    if args.responses == "generate":
        if args.preset:
            raise PromptSourceError(f"--preset {args.preset} reads given (prompt, response) pairs: pass "
                                    f"--responses FILE (columns {opts['prompt_column']}, {opts['response_column']})")
        if not args.prompts:
            raise PromptSourceError("--prompts is required with --responses generate")
        return get_source(args.prompts, column=opts["prompt_column"], limit=opts["limit"]), "generate"
    if args.prompts:
        raise PromptSourceError("--responses FILE|SOURCE brings its own prompts: drop --prompts")
    src = get_source(args.responses, column=opts["prompt_column"], limit=opts["limit"],
                     response_column=opts["response_column"])
    if isinstance(src, LocalFileSource):
        src.blank_responses = True  # identification skips an answer that is empty after stripping
        if src.response_column is None:
            src.response_column = opts["response_column"]
    if not src.has_responses:
        raise PromptSourceError(f"{args.responses}: not every prompt has a response")
    return src, "given"


def run(args: argparse.Namespace) -> int:
    from ..models import load_model, load_tokenizer, resolve_model_ref
    from ..identify import identify

    progress = not args.no_progress
    t0 = time.time()
    _check_output(args.output)  # before any work: a bad -o fails before identification
    opts = resolve_options(args)
    if not opts["base_bos"] and opts["base_format"] != "plain":
        raise ValueError("--no-base-bos applies to --base-format plain (a chat template decides its own BOS)")
    source, mode = _prompts_and_mode(args, opts)
    n = source.size
    device = resolve_device(args.device)
    safe_ref = resolve_model_ref(args.safe, args.gguf_file)
    base_ref = resolve_model_ref(args.base, args.base_gguf_file)
    print(f"[identify] prompts {source.describe()} ({n}), responses: {mode}; loading {safe_ref} and {base_ref} "
          f"({args.dtype}, {device})", file=sys.stderr)
    trust = args.trust_remote_code
    tokenizer = load_tokenizer(safe_ref, trust_remote_code=trust)
    safe = load_model(safe_ref, dtype=args.dtype, device=device, trust_remote_code=trust)
    base = load_model(base_ref, dtype=args.dtype, device=device, trust_remote_code=trust)
    kw = {key: opts[key] for key in ("k", "selection", "base_format", "max_resp_len", "average", "append_eos",
                                     "base_bos", "strip", "std_min_abs_d", "norm_eps", "weights_dtype")}
    res = identify(safe, base, tokenizer, source, responses=mode, max_new_tokens=args.max_new_tokens,
                   batch_size=args.batch_size, safe_name=str(safe_ref), base_name=str(base_ref),
                   prompts_name=source.describe(), progress=progress, **kw)
    if args.preset:
        res.tokens.extra["preset"] = args.preset
    st = res.tokens
    path = st.save(args.output)
    if args.save_responses:
        _save_responses(args.save_responses, res, tokenizer)
    if len(st) < opts["k"]:
        print(f"[identify] only {len(st)} tokens passed the selection (asked for k={opts['k']})", file=sys.stderr)
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
    from ..atomic_files import write_jsonl_atomic

    write_jsonl_atomic(path, ({"prompt": prompt, "response": tokenizer.decode(ids, skip_special_tokens=True),
                               "response_ids": ids} for prompt, ids in zip(res.prompts, res.responses)))
