"""Verdicts on answers, resumable: ``verdicts.jsonl`` of the harmful and over-refusal suites, ``pact judge``.

A verdict is reused for the same (prompt, response) by the same judge with
the same settings (:func:`judge_key`), so another ``--judge`` re-judges
without regenerating.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from .degenerate import DegenerateRule
from .generations import key_digest
from .io import JsonlAppender, read_jsonl, write_jsonl_atomic
from .judges import Judge, KeywordJudge, get_judge
from .metrics import harmful_summary

__all__ = ["judge_file", "judge_key", "judge_records", "judge_settings", "refusal_judge", "refusal_records"]


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
    return key_digest(judge_settings(judge))


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
