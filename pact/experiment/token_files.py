"""The safety-token files of a grid: the top K of the identified set (the K sweep), and its Figure 2 listing."""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic_files import write_json_atomic
from .keys import read_json

__all__ = ["figure2", "top_k"]


def top_k(tokens: Path, k: int, out: Path) -> None:
    """``out``: the first ``k`` tokens of ``tokens`` (ordered by d(v); with the paper's selection, whose weights
    are d(v) itself, the set ``pact identify -k K`` picks), written when its content differs."""
    t = json.loads(Path(tokens).read_text())
    if t.get("selection", "paper") != "paper":
        raise ValueError(f"K sweep: {tokens} was identified with selection={t.get('selection')!r}, whose weights "
                         "depend on K; identify each K with pact identify -k K and give the files instead")
    if k > len(t["ids"]):
        raise ValueError(f"K = {k} > the {len(t['ids'])} tokens of {tokens}; identify more (safety_tokens.identify.k)")
    sub = dict(t, k=k, **{key: t[key][:k] for key in ("ids", "strings", "weights", "scores", "mean_safe_prob")
                          if isinstance(t.get(key), list)})
    if not out.is_file() or read_json(out) != json.loads(json.dumps(sub)):
        write_json_atomic(out, sub)


def figure2(tokens_file: Path, top: int = 10) -> str:
    """The safety tokens as the paper's Figure 2 lists them: rank, token, id, D(v), mean p_safe."""
    t = json.loads(Path(tokens_file).read_text())
    lines = [f"Safety tokens of M_safe vs M_base (Figure 2 style, top {top} of K = {len(t['ids'])}):",
             f"{'rank':>4}  {'token':<16} {'id':>6}  {'D(v)':>8}  {'mean p_safe':>11}"]
    for i, (tid, sv, sc, mp) in enumerate(zip(t["ids"], t["strings"], t["scores"], t["mean_safe_prob"])):
        if i >= top:
            break
        lines.append(f"{i + 1:>4}  {json.dumps(sv)[:16]:<16} {tid:>6}  {sc:>8.4f}  {mp:>11.4f}")
    return "\n".join(lines)
