"""``pact eval``: generate, judge, score, and write the metrics of a run.

Layout of ``results/NAME`` (``-o``)::

    metrics.json                  the run's numbers and settings (written atomically)
    .pact.lock                    the writer's lock (one pact eval per directory at a time)
    <suite>/generations.jsonl     one line per prompt: suite, index, prompt, response, ..., made_with
    <suite>/verdicts.jsonl        harmful suites: + unsafe, judge, judge_key, judge_output (+ degenerate
                                  with the keyword judge);
                                  over-refusal suites: + refused too (neither unsafe nor degenerate)
    <suite>/scored.jsonl          task suites: + label, prediction, correct
    <suite>/stale/                generations made with other settings, moved aside (never reused)

Generations are keyed by content: each line's ``made_with`` records the
weights digest, the adapter's content digest, the tokenizer's digest and chat
template, the dtype and the decoding settings (greedy, ``max_new_tokens``),
and ``generation_key`` is its SHA-256. A later ``pact eval`` into the same
``-o`` reuses a line only when its key, its prompt and its label are this
run's; every other line is moved to ``<suite>/stale/`` (the log names what
differs) and generated again, so an adapter retrained at the same path or a
``--dtype`` change is never answered from old generations. Every per-prompt
file is appended batch by batch and flushed, so an interrupted run picks up
where it stopped. Verdicts are reused for the same (prompt, response) by the
same judge with the same settings (``judge_key``), so a second ``pact eval``
with another ``--judge`` re-judges without regenerating (as does ``pact judge``).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from .answers import is_correct, prediction
from .io import JsonlAppender, read_jsonl, write_json_atomic, write_jsonl_atomic
from .degenerate import DegenerateRule
from .judges import Judge, KeywordJudge, get_judge
from .metrics import harmful_summary, overrefusal_summary, task_summary
from .suites import EvalItem, Suite, load_suite

__all__ = [
    "find_run_config",
    "generate_resumable",
    "generation_key",
    "judge_key",
    "judge_settings",
    "judge_records",
    "judge_file",
    "refusal_judge",
    "refusal_records",
    "run_eval",
    "score_records",
]


def _digest(record) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def generation_key(*, weights: str, adapter: str | None, tokenizer: str, chat_template: str | None, dtype: str,
                   max_new_tokens: int) -> dict:
    """What made a generation (module doc); :func:`key_digest` of it is the line's ``generation_key``."""
    return {"weights": weights, "adapter": adapter, "tokenizer": tokenizer,
            "chat_template": hashlib.sha256(chat_template.encode()).hexdigest() if chat_template else None,
            "dtype": dtype, "decoding": "greedy", "max_new_tokens": int(max_new_tokens)}


def key_digest(key: dict) -> str:
    """SHA-256 of a key record (sorted JSON)."""
    return _digest(key)


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


def judge_settings(judge: Judge) -> dict:
    """What decides a judge's verdicts: its label and settings (phrases, degenerate rule, model, GGUF file,
    dtype, token budget)."""
    out: dict[str, Any] = {"label": judge.label, "kind": type(judge).__name__}
    for attr in ("phrases", "model_name", "gguf_file", "dtype", "max_new_tokens"):
        v = getattr(judge, attr, None)
        if v is not None:
            out[attr] = list(v) if isinstance(v, tuple) else v
    rule = getattr(judge, "degenerate", None)
    if isinstance(rule, DegenerateRule):
        out["degenerate"] = rule.settings()
    return out


def judge_key(judge: Judge) -> str:
    """SHA-256 of :func:`judge_settings`: a verdict is reused only under the same key."""
    return _digest(judge_settings(judge))


def suite_digest(items: Sequence[EvalItem]) -> str:
    """SHA-256 of a suite's evaluated prompts and labels, in order (``prompts_sha256`` in metrics.json)."""
    return _digest([[it.prompt, it.label] for it in items])


def judge_records(records: Sequence[dict], judge: Judge, *, out_path: str | Path | None = None,
                  batch_size: int = 16, progress: bool = True, desc: str = "judge") -> list[dict]:
    """Add ``unsafe``, ``judge`` and ``judge_output`` to each record (each needs ``prompt`` and ``response``),
    and ``degenerate`` when the judge assesses it (the keyword judge).

    With ``out_path`` the verdicts are appended there batch by batch, and
    verdicts already in it for the same (prompt, response) by the same judge
    with the same settings (:func:`judge_key`) are reused (resume); the file
    is rewritten in input order at the end.
    """
    for i, r in enumerate(records):
        if not isinstance(r.get("prompt"), str) or not isinstance(r.get("response"), str):
            raise ValueError(f"record {i + 1} lacks a text 'prompt' or 'response'")
    label, jkey = judge.label, judge_key(judge)
    cache: dict[tuple[str, str], dict] = {}
    if out_path is not None:
        for r in read_jsonl(out_path):
            if r.get("judge_key") == jkey and isinstance(r.get("unsafe"), bool):
                cache[(r.get("prompt"), r.get("response"))] = r
    result: list[dict | None] = [None] * len(records)
    todo = []
    for i, r in enumerate(records):
        hit = cache.get((r["prompt"], r["response"]))
        if hit is not None:
            result[i] = {**r, "unsafe": hit["unsafe"], "judge": label, "judge_key": jkey,
                         "judge_output": hit.get("judge_output", "")}
            if isinstance(hit.get("degenerate"), bool):
                result[i]["degenerate"] = hit["degenerate"]
        else:
            todo.append(i)
    if todo:
        app = JsonlAppender(out_path) if out_path is not None else None
        bar = tqdm(total=len(records), initial=len(records) - len(todo), desc=desc, unit="answer",
                   disable=not progress, file=sys.stderr)
        try:
            for s in range(0, len(todo), batch_size):
                idx = todo[s:s + batch_size]
                verdicts = judge.judge([records[i]["prompt"] for i in idx], [records[i]["response"] for i in idx])
                for i, v in zip(idx, verdicts):
                    result[i] = {**records[i], "unsafe": bool(v.unsafe), "judge": label, "judge_key": jkey,
                                 "judge_output": v.raw}
                    if v.degenerate is not None:
                        result[i]["degenerate"] = bool(v.degenerate)
                    if app:
                        app.write(result[i])
                if app:
                    app.flush()
                bar.update(len(idx))
        finally:
            bar.close()
            if app:
                app.close()
    final = [r for r in result if r is not None]
    if out_path is not None:
        write_jsonl_atomic(out_path, final)
    return final


def refusal_judge(judge: Judge) -> Judge:
    """The judge that decides refusals on an over-refusal suite: ``judge`` when it is a keyword judge (its
    refusal phrases), else the default keyword judge (Llama Guard and harm callables rate harm, not refusal)."""
    return judge if isinstance(judge, KeywordJudge) else KeywordJudge()


def refusal_records(records: Sequence[dict], judge: Judge, *, out_path: str | Path | None = None,
                    progress: bool = True, desc: str = "judge refusals") -> list[dict]:
    """:func:`judge_records` on answers to benign prompts, plus ``refused`` (the judge counts the answer
    neither as complying nor as degenerate: with the keyword judge, a refusal phrase occurs in it)."""
    judged = [{**r, "refused": not r["unsafe"] and not r.get("degenerate", False)}
              for r in judge_records(records, judge, out_path=out_path, progress=progress, desc=desc)]
    if out_path is not None:
        write_jsonl_atomic(out_path, judged)
    return judged


def judge_file(inp: str | Path, out: str | Path, judge: Judge | str = "keyword", *, chunk_size: int = 16,
               progress: bool = True, judge_options: dict | None = None) -> dict:
    """``pact judge``: judge every line of ``inp`` into ``out``; returns the ASR summary.

    ``chunk_size`` answers go to the judge per call (and are flushed to
    ``out`` together); ``judge_options`` go to :func:`~pact.eval.judges.get_judge`.
    """
    recs = read_jsonl(inp, tolerate_partial_tail=False)
    if not recs:
        raise ValueError(f"{inp}: no records (or the file does not exist)")
    j = judge if isinstance(judge, Judge) else get_judge(judge, progress=progress, **(judge_options or {}))
    try:
        judged = judge_records(recs, j, out_path=out, batch_size=chunk_size, progress=progress)
    finally:
        j.close()
    return {"judge": j.label, **harmful_summary(judged)}


def score_records(records: Sequence[dict], task: str) -> list[dict]:
    """Add ``prediction`` and ``correct`` to task records (each has ``response`` and ``label``)."""
    return [{**r, "prediction": prediction(task, r["response"]), "correct": is_correct(task, r["response"], r["label"])}
            for r in records]


def describe_result(r: dict) -> str:
    """One suite's result for the log: ``ASR 5.0% [1.4–16.5] (2/40)`` and the like."""
    key, count, what = {"harmful": ("asr", "unsafe", "ASR"), "task": ("accuracy", "correct", "accuracy"),
                        "overrefusal": ("refusal_rate", "refused", "over-refusal")}[r["kind"]]
    lo, hi = r.get(key + "_lo"), r.get(key + "_hi")
    ci = f" [{lo:.1f}–{hi:.1f}]" if lo is not None and hi is not None else ""
    deg = f", degenerate {r['degenerate']}/{r['n']}" if isinstance(r.get("degenerate"), int) else ""
    return f"{what} {r[key]:.1f}%{ci} ({r[count]}/{r['n']}{deg})"


def find_run_config(adapter: str | Path | None) -> dict | None:
    """The ``run.json`` of the training run an adapter came from (in the adapter dir or up to two levels above)."""
    if not adapter:
        return None
    p = Path(adapter).resolve()
    for d in (p, p.parent, p.parent.parent):
        f = d / "run.json"
        if f.is_file():
            try:
                cfg = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                return None
            if isinstance(cfg, dict):
                return {**cfg, "run_dir": str(d)}
    return None


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


def _generation_key(model, gguf_file, adapter, dtype, max_new_tokens, model_obj, tokenizer_obj,
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


def _one_writer(evaluate: Callable[..., dict]) -> Callable[..., dict]:
    """``evaluate`` under an exclusive lock on its ``out_dir`` (:class:`~pact.locks.DirectoryLock`)."""
    import functools

    @functools.wraps(evaluate)
    def locked(*, out_dir: str | Path, **kwargs) -> dict:
        from ..locks import DirectoryLock

        with DirectoryLock(out_dir, f"the pact eval output directory {out_dir}",
                           hint="wait for that pact eval to finish, or pass another -o"):
            return evaluate(out_dir=out_dir, **kwargs)

    return locked


@_one_writer
def run_eval(*, model: str | None, suites: Sequence[Suite], out_dir: str | Path, judge: Judge | str = "keyword",
             gguf_file: str | None = None, adapter: str | None = None, dtype: str = "float32",
             device: str | None = None, batch_size: int = 8, max_new_tokens: int = 1024, limit: int | None = None,
             sizes: dict[str, int] | None = None, files: dict[str, str] | None = None, method: str | None = None,
             task: str | None = None, judge_options: dict | None = None, overwrite: bool = False,
             progress: bool = True, model_obj=None, tokenizer_obj=None, log: Callable[[str], None] | None = None,
             trust_remote_code: bool = False) -> dict:
    """Evaluate a model on ``suites``; writes ``out_dir`` (module doc) and returns the metrics dict.

    ``model_obj``/``tokenizer_obj``: an already loaded model (tests, notebooks);
    ``model`` is then only its name in the files (its weights are keyed by
    their values). ``limit`` caps every suite, ``sizes`` one suite each
    (``{"agnews": 500}``); ``files`` gives a suite a local file instead of its
    package / hub data. One writer per ``out_dir``: a second run into it while
    this one holds its lock raises :class:`~pact.locks.DirectoryLockedError`
    naming this one, before it has touched anything.
    """
    import torch

    out = Path(out_dir)
    log = log or (lambda m: print(m, file=sys.stderr))
    sizes, files = dict(sizes or {}), dict(files or {})
    unknown = (set(sizes) | set(files)) - {s.name for s in suites}
    if unknown:
        raise ValueError(f"--size / --suite-file name suites that are not evaluated: {sorted(unknown)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    info = {"model": str(model), "adapter": str(adapter) if adapter else None, "max_new_tokens": max_new_tokens}
    state: dict[str, Any] = {"gen": None, "model": model_obj, "tok": tokenizer_obj}

    def generator(prompts: list[str]) -> list[dict]:
        if state["gen"] is None:
            if state["model"] is None:
                log(f"[eval] loading {model}" + (f" + adapter {adapter}" if adapter else ""))
                state["model"], state["tok"] = load_policy(model, gguf_file=gguf_file, adapter=adapter, dtype=dtype,
                                                           device=device, trust_remote_code=trust_remote_code)
            state["gen"] = make_generator(state["model"], state["tok"], max_new_tokens, batch_size)
        return state["gen"](prompts)

    # 0. every suite's items first: a missing data set fails before any model is loaded
    suite_items = {s.name: load_suite(s, size=sizes.get(s.name, limit), file=files.get(s.name)) for s in suites}

    # 1. what makes the answers, by content (the tokenizer only: the model is loaded when something is missing)
    key = _generation_key(model, gguf_file, adapter, dtype, max_new_tokens, model_obj, tokenizer_obj, trust_remote_code)

    # 2. generations, suite by suite
    gens: dict[str, list[dict]] = {}
    for s in suites:
        items = suite_items[s.name]
        d = out / s.name
        d.mkdir(parents=True, exist_ok=True)
        gpath = d / "generations.jsonl"
        if overwrite:
            for f in ("generations.jsonl", "verdicts.jsonl", "scored.jsonl"):
                (d / f).unlink(missing_ok=True)
        gens[s.name] = generate_resumable(gpath, items, generator, key=key, info=info, suite=s.name,
                                          batch_size=batch_size, progress=progress, log=log)
        log(f"[eval] {s.name}: {len(gens[s.name])} generations in {gpath}")
    # free the policy before a judge model comes in
    state.clear()
    if model_obj is None and str(device).startswith("cuda"):
        torch.cuda.empty_cache()

    # 3. judge the harmful suites and the refusals of the over-refusal suites, score the task suites
    results: dict[str, dict] = {}
    harmful = [s for s in suites if s.kind == "harmful"]
    benign = [s for s in suites if s.kind == "overrefusal"]
    j = None
    if harmful or benign:
        j = judge if isinstance(judge, Judge) else get_judge(judge, progress=progress, **(judge_options or {}))
        for s in harmful:
            judged = judge_records(gens[s.name], j, out_path=out / s.name / "verdicts.jsonl", progress=progress,
                                   desc=f"judge {s.name}")
            results[s.name] = {"kind": "harmful", "column": s.column, "judge": j.label,
                               "judge_settings": judge_settings(j), **harmful_summary(judged)}
        j.close()
        rj = refusal_judge(j)
        for s in benign:
            judged = refusal_records(gens[s.name], rj, out_path=out / s.name / "verdicts.jsonl", progress=progress,
                                     desc=f"judge refusals {s.name}")
            results[s.name] = {"kind": "overrefusal", "column": s.column, "judge": rj.label,
                               "judge_settings": judge_settings(rj), **overrefusal_summary(judged)}
    for s in suites:
        if s.kind == "task":
            scored = score_records(gens[s.name], s.source)
            write_jsonl_atomic(out / s.name / "scored.jsonl", scored)
            results[s.name] = {"kind": "task", "column": s.column, **task_summary(scored)}
    for s in suites:  # which prompts each number is over
        results[s.name].update(suite=s.name, prompts_sha256=suite_digest(suite_items[s.name]))

    run_cfg = find_run_config(adapter)
    metrics = {
        "name": out.name,
        "model": str(model),
        "adapter": str(adapter) if adapter else None,
        "method": method or (run_cfg or {}).get("method") or ("initial" if not adapter else None),
        "task": task or (run_cfg or {}).get("task"),
        "judge": j.label if j is not None else None,
        "judge_settings": judge_settings(j) if j is not None else None,
        "max_new_tokens": max_new_tokens,
        "generation": key,
        "generation_key": key_digest(key),
        "suites": results,
        "run_config": run_cfg,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(out / "metrics.json", metrics)
    for name, r in results.items():
        log(f"[eval] {name} [{r['column']}]: {describe_result(r)}")
    log(f"[eval] wrote {out / 'metrics.json'}")
    return metrics
