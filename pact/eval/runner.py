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
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .answers import is_correct, prediction
from .generations import (
    describe_key_change,
    generate_resumable,
    generation_key,
    key_digest,
    load_policy,
    make_generator,
    run_generation_key,
)
from .io import write_json_atomic, write_jsonl_atomic
from .judges import Judge, get_judge
from .metrics import harmful_summary, overrefusal_summary, task_summary
from .suites import EvalItem, Suite, load_suite
from .verdicts import judge_file, judge_key, judge_records, judge_settings, refusal_judge, refusal_records

__all__ = [
    "describe_key_change",
    "find_run_config",
    "generate_resumable",
    "generation_key",
    "judge_key",
    "judge_settings",
    "judge_records",
    "judge_file",
    "key_digest",
    "load_policy",
    "make_generator",
    "refusal_judge",
    "refusal_records",
    "run_eval",
    "score_records",
]


def suite_digest(items: Sequence[EvalItem]) -> str:
    """SHA-256 of a suite's evaluated prompts and labels, in order (``prompts_sha256`` in metrics.json)."""
    return key_digest([[it.prompt, it.label] for it in items])


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
    generator, release = _lazy_generator(model, gguf_file, adapter, dtype, device, trust_remote_code, model_obj,
                                         tokenizer_obj, max_new_tokens, batch_size, log)

    # 0. every suite's items first: a missing data set fails before any model is loaded
    suite_items = {s.name: load_suite(s, size=sizes.get(s.name, limit), file=files.get(s.name)) for s in suites}

    # 1. what makes the answers, by content (the tokenizer only: the model is loaded when something is missing)
    key = run_generation_key(model, gguf_file, adapter, dtype, max_new_tokens, model_obj, tokenizer_obj,
                             trust_remote_code)

    # 2. generations, suite by suite
    gens = _generate_suites(suites, suite_items, out, generator, key=key, info=info, overwrite=overwrite,
                            batch_size=batch_size, progress=progress, log=log)
    # free the policy before a judge model comes in
    release()
    if model_obj is None and str(device).startswith("cuda"):
        torch.cuda.empty_cache()

    # 3. judge the harmful suites and the refusals of the over-refusal suites, score the task suites
    results, used_judge = _judge_and_score(suites, gens, out, judge, judge_options, progress)
    for s in suites:  # which prompts each number is over
        results[s.name].update(suite=s.name, prompts_sha256=suite_digest(suite_items[s.name]))

    run_cfg = find_run_config(adapter)
    metrics = {
        "name": out.name,
        "model": str(model),
        "adapter": str(adapter) if adapter else None,
        "method": method or (run_cfg or {}).get("method") or ("initial" if not adapter else None),
        "task": task or (run_cfg or {}).get("task"),
        "judge": used_judge.label if used_judge is not None else None,
        "judge_settings": judge_settings(used_judge) if used_judge is not None else None,
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


def _lazy_generator(model, gguf_file, adapter, dtype, device, trust_remote_code, model_obj, tokenizer_obj,
                    max_new_tokens: int, batch_size: int,
                    log: Callable[[str], None]) -> tuple[Callable[[list[str]], list[dict]], Callable[[], None]]:
    """(generate, release): ``generate(prompts)`` loads the policy on its first call (a suite whose answers are
    all on disk never loads it) unless ``model_obj`` was given; ``release()`` drops it."""
    state: dict[str, Any] = {"gen": None, "model": model_obj, "tok": tokenizer_obj}

    def generator(prompts: list[str]) -> list[dict]:
        if state["gen"] is None:
            if state["model"] is None:
                log(f"[eval] loading {model}" + (f" + adapter {adapter}" if adapter else ""))
                state["model"], state["tok"] = load_policy(model, gguf_file=gguf_file, adapter=adapter, dtype=dtype,
                                                           device=device, trust_remote_code=trust_remote_code)
            state["gen"] = make_generator(state["model"], state["tok"], max_new_tokens, batch_size)
        return state["gen"](prompts)

    return generator, state.clear


def _generate_suites(suites: Sequence[Suite], suite_items: dict[str, list[EvalItem]], out: Path,
                     generator: Callable[[list[str]], list[dict]], *, key: dict, info: dict, overwrite: bool,
                     batch_size: int, progress: bool, log: Callable[[str], None]) -> dict[str, list[dict]]:
    """Every suite's generations (``<suite>/generations.jsonl``, resumed); ``overwrite`` first deletes the suite's
    generations, verdicts and scores."""
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
    return gens


def _judge_and_score(suites: Sequence[Suite], gens: dict[str, list[dict]], out: Path, judge: Judge | str,
                     judge_options: dict | None, progress: bool) -> tuple[dict[str, dict], Judge | None]:
    """({suite: result}, the judge or None): the harmful suites judged, the over-refusal suites' refusals judged,
    the task suites scored (``verdicts.jsonl`` / ``scored.jsonl`` of each)."""
    results: dict[str, dict] = {}
    harmful = [s for s in suites if s.kind == "harmful"]
    benign = [s for s in suites if s.kind == "overrefusal"]
    judge_obj = None
    if harmful or benign:
        judge_obj = judge if isinstance(judge, Judge) else get_judge(judge, progress=progress, **(judge_options or {}))
        for s in harmful:
            judged = judge_records(gens[s.name], judge_obj, out_path=out / s.name / "verdicts.jsonl",
                                   progress=progress, desc=f"judge {s.name}")
            results[s.name] = {"kind": "harmful", "column": s.column, "judge": judge_obj.label,
                               "judge_settings": judge_settings(judge_obj), **harmful_summary(judged)}
        judge_obj.close()
        refusals_judge = refusal_judge(judge_obj)
        for s in benign:
            judged = refusal_records(gens[s.name], refusals_judge, out_path=out / s.name / "verdicts.jsonl",
                                     progress=progress, desc=f"judge refusals {s.name}")
            results[s.name] = {"kind": "overrefusal", "column": s.column, "judge": refusals_judge.label,
                               "judge_settings": judge_settings(refusals_judge), **overrefusal_summary(judged)}
    for s in suites:
        if s.kind == "task":
            scored = score_records(gens[s.name], s.source)
            write_jsonl_atomic(out / s.name / "scored.jsonl", scored)
            results[s.name] = {"kind": "task", "column": s.column, **task_summary(scored)}
    return results, judge_obj
