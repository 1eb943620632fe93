"""Generations keyed by content: what made an answer, and the resumable per-suite ``generations.jsonl``.

Each line's ``made_with`` records the weights digest, the adapter's content
digest, the tokenizer's digest and chat template, the dtype and the decoding
settings (greedy, ``max_new_tokens``); ``generation_key`` is its SHA-256. A
line is reused only when its key, its prompt and its label are this run's;
every other line is moved to ``<suite>/stale/`` (the log names what differs)
and generated again. The file is appended batch by batch and flushed, so an
interrupted run picks up where it stopped.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import sys
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from ..digests import json_digest
from .io import JsonlAppender, read_jsonl, write_jsonl_atomic
from .suites import EvalItem

__all__ = ["KEY_NAMES", "describe_key_change", "generate_resumable", "generation_key", "key_digest", "load_policy",
           "make_generator", "run_generation_key"]


def key_digest(key) -> str:
    """SHA-256 of a key record: JSON with sorted keys, ``", "``/``": "`` separators, non-ASCII kept as is, and
    nothing JSON cannot write (:func:`pact.fingerprint.json_digest`)."""
    return json_digest(key, compact=False, ensure_ascii=False, default=None)


def generation_key(*, weights: str, adapter: str | None, tokenizer: str, chat_template: str | None, dtype: str,
                   max_new_tokens: int) -> dict:
    """What made a generation (module doc); :func:`key_digest` of it is the line's ``generation_key``."""
    return {"weights": weights, "adapter": adapter, "tokenizer": tokenizer,
            "chat_template": hashlib.sha256(chat_template.encode()).hexdigest() if chat_template else None,
            "dtype": dtype, "decoding": "greedy", "max_new_tokens": int(max_new_tokens)}


KEY_NAMES = {"weights": "model weights", "adapter": "adapter content", "tokenizer": "tokenizer",
             "chat_template": "chat template", "dtype": "dtype", "decoding": "decoding",
             "max_new_tokens": "max_new_tokens"}


def describe_key_change(old: dict | None, new: dict) -> str:
    """``adapter content (1a2b3c4d5e6f → 7a8b9c0d1e2f), dtype (float32 → bfloat16)``: what differs between keys."""
    if not isinstance(old, dict):
        return "no record of what made them"
    out = []
    for k, name in KEY_NAMES.items():
        a, b = old.get(k), new.get(k)
        if a != b:
            short = (lambda v: v[:12] if isinstance(v, str) and len(v) == 64 else v)
            out.append(f"{name} ({short(a)} → {short(b)})")
    return ", ".join(out) or "another record"


def _existing_generations(path: Path, items: Sequence[EvalItem], key: dict,
                          log: Callable[[str], None]) -> list[dict]:
    """Lines of an earlier run that this run may reuse: same ``generation_key``, prompt and label at the index.

    Every other line (other key, another prompt or label at its index, a
    duplicate index) is moved to ``stale/`` beside the file and the log says
    why; lines for indices beyond ``items`` (a run with a larger size) stay.
    A partial last line left by an interrupted write is removed.
    """
    path = Path(path)
    recs = read_jsonl(path)
    digest = key_digest(key)
    by_index = {it.index: it for it in items}
    kept, keep_file, stale, seen = [], [], [], set()
    reasons: dict[str, int] = {}
    for r in recs:
        idx = r.get("index")
        it = by_index.get(idx)
        why = None
        if r.get("generation_key") != digest or key_digest(r.get("made_with") or {}) != digest:
            why = describe_key_change(r.get("made_with"), key)
        elif idx in seen:
            why = "a second line for one prompt"
        elif it is not None and (r.get("prompt") != it.prompt or r.get("label") != it.label):
            why = "another prompt or label at their index (the suite's data changed)"
        if why:
            stale.append(r)
            reasons[why] = reasons.get(why, 0) + 1
            continue
        seen.add(idx)
        keep_file.append(r)
        if it is not None:
            kept.append(r)
    partial = path.exists() and path.stat().st_size and not path.read_text(encoding="utf-8").endswith("\n")
    if stale:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        aside = path.parent / "stale" / f"{path.stem}-{stamp}.jsonl"
        aside.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(aside, stale)
        for why, n in reasons.items():
            log(f"[eval] {path}: {n} line(s) not reused ({why}); moved to {aside}, generating again")
    if stale or partial:
        write_jsonl_atomic(path, keep_file)
    return kept


def generate_resumable(path: str | Path, items: Sequence[EvalItem], generate: Callable[[list[str]], list[dict]],
                       *, key: dict, suite: str, batch_size: int = 8, progress: bool = True,
                       info: dict | None = None, log: Callable[[str], None] | None = None) -> list[dict]:
    """Answer every item, appending one JSON line per prompt to ``path``; reuse what is there when its key matches.

    Args:
        items: the suite's prompts.
        generate: ``f(prompts) -> [{"response": str, "num_tokens": int, "finish": "eos"|"length"}]``
            for one batch (the model is loaded lazily by the caller's closure,
            so a finished file never loads it).
        key: :func:`generation_key` of this run (stored per line as ``made_with``).
        info: fields written on every line for people (``model``, ``adapter`` path, ``max_new_tokens``).
    Returns:
        the records in suite order.
    """
    path = Path(path)
    log = log or (lambda m: print(m, file=sys.stderr))
    done = _existing_generations(path, items, key, log)
    have = {r["index"] for r in done}
    todo = [it for it in items if it.index not in have]
    digest = key_digest(key)
    if todo:
        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"generate {suite}", unit="prompt",
                   disable=not progress, file=sys.stderr)
        with JsonlAppender(path) as out:
            for s in range(0, len(todo), batch_size):
                batch = todo[s:s + batch_size]
                gens = generate([it.prompt for it in batch])
                if len(gens) != len(batch):
                    raise RuntimeError(f"generator returned {len(gens)} answers for {len(batch)} prompts")
                for it, g in zip(batch, gens):
                    rec = {"suite": suite, "index": it.index, "prompt": it.prompt, **g, **(info or {}),
                           "generation_key": digest, "made_with": key}
                    if it.label is not None:
                        rec["label"] = it.label
                    if it.meta:
                        rec["meta"] = it.meta
                    out.write(rec)
                    done.append(rec)
                out.flush()
                bar.update(len(batch))
        bar.close()
    return sorted(done, key=lambda r: r["index"])


def make_generator(model, tokenizer, max_new_tokens: int, batch_size: int) -> Callable[[list[str]], list[dict]]:
    """A function from prompts to greedy chat answers: ``{"response", "num_tokens", "finish"}`` per prompt."""
    from ..identify.generation import encode_chat_prompt, end_of_turn_ids, generate_greedy

    eos = end_of_turn_ids(model, tokenizer)

    def gen(prompts: list[str]) -> list[dict]:
        enc = [encode_chat_prompt(tokenizer, p) for p in prompts]
        answers = generate_greedy(model, tokenizer, enc, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  eos_ids=eos, progress=False)
        return [{"response": tokenizer.decode(a, skip_special_tokens=True), "num_tokens": len(a),
                 "finish": "eos" if a and a[-1] in eos else "length"} for a in answers]

    return gen


def load_policy(model: str, *, gguf_file: str | None = None, adapter: str | None = None, dtype: str = "float32",
                device: str = "cpu", trust_remote_code: bool = False):
    """The model to evaluate (hub name / path / GGUF / ``pkg:``), with a PEFT adapter merged in when given."""
    from ..models import ModelLoadError, load_model, load_tokenizer, resolve_model_ref

    ref = resolve_model_ref(model, gguf_file)
    tok = load_tokenizer(ref, trust_remote_code=trust_remote_code)
    m = load_model(ref, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if adapter:
        if not Path(adapter).exists():
            raise FileNotFoundError(f"adapter directory not found: {adapter}")
        try:
            from peft import PeftModel
        except ImportError as e:
            raise ModelLoadError("--adapter needs the peft package (pip install 'pact[train]')") from e
        from ..fingerprint import check_adapter_base

        check_adapter_base(adapter, model, gguf_file, m.config)
        try:
            m = PeftModel.from_pretrained(m, adapter).merge_and_unload()
        except (RuntimeError, ValueError, KeyError) as e:  # shapes or module names of another architecture
            raise ModelLoadError(f"the adapter in {adapter} does not fit --model {model} ({str(e).splitlines()[0]}"
                                 "); pass the base model it was trained on") from e
        m.eval()
        m.requires_grad_(False)
    return m, tok


def run_generation_key(model, gguf_file, adapter, dtype, max_new_tokens, model_obj, tokenizer_obj,
                       trust_remote_code: bool = False) -> dict:
    """:func:`generation_key` of this run: digests of the weights (or the given model's values), the adapter's
    files and the tokenizer (loaded here when not given), the dtype and the decoding settings."""
    from ..fingerprint import adapter_digest, module_digest, tokenization_digest, weights_digest

    if model_obj is not None:
        weights = module_digest(model_obj)
        dtype = str(next(model_obj.parameters()).dtype).removeprefix("torch.")
        tok = tokenizer_obj
    else:
        from ..models import load_tokenizer, resolve_model_ref

        weights = weights_digest(model, gguf_file)
        tok = tokenizer_obj or load_tokenizer(resolve_model_ref(model, gguf_file), trust_remote_code=trust_remote_code)
    if adapter and not Path(adapter).exists():
        raise FileNotFoundError(f"adapter directory not found: {adapter}")
    return generation_key(weights=weights, adapter=adapter_digest(adapter) if adapter else None,
                          tokenizer=tokenization_digest(tok), chat_template=getattr(tok, "chat_template", None),
                          dtype=str(dtype), max_new_tokens=max_new_tokens)
