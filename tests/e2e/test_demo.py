"""``pact demo --quick`` end to end on SmolLM2.

The test runs the real command (the console entry point, a fresh process) on
the real GGUF model and the real prompt packages, then checks that the report
has every row and column filled with measured numbers and that a rerun skips
every finished stage.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from pact.demo import COLUMNS, ROWS, DemoSettings


def _cell_numbers(cell: str) -> tuple[float, float, float]:
    """``5.0 [1.4–16.5]`` or ``5.0 (1.0–9.0)`` -> (5.0, 1.4, 16.5)."""
    import re

    m = re.fullmatch(r"(\d+\.\d) [\[(](\d+\.\d)–(\d+\.\d)[\])]", cell)
    assert m, cell
    return float(m.group(1)), float(m.group(2)), float(m.group(3))


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "pact", "demo", "--quick", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    rep = json.loads((out / "5-report" / "table.json").read_text())
    assert rep["rows"] == [name for name, _ in ROWS] and rep["columns"] == [c for c, _ in COLUMNS]
    assert len(rep["values"]) == 4 and rep["seeds"] == 1
    for row in rep["values"]:
        assert len(row) == len(COLUMNS)
        assert all(isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 100.0 for v in row)
    # the printed table is the written one, every cell a measured rate inside its 95 % interval
    md = (out / "5-report" / "table.md").read_text()
    for name, _ in ROWS:
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {name} |"))
        cells = [c.strip() for c in line.strip("|").split("|")[1:]]
        assert len(cells) == len(COLUMNS)
        for c in cells:
            v, lo, hi = _cell_numbers(c)
            assert lo <= v <= hi and hi - lo > 0
        assert line in r.stdout
    # each cell is the share of the saved per-prompt records: ASR (HB), over-refusal, task accuracy
    col = {c: i for i, (c, _) in enumerate(COLUMNS)}
    files = {"harmbench": "safety/harmbench/verdicts.jsonl", "overrefusal": "safety/overrefusal/verdicts.jsonl",
             "bbq": "task/bbq/scored.jsonl"}  # pact eval's per-prompt files
    for name, key in [("M_base", "m_base"), ("PACT", "pact")]:
        def share(suite, flag):
            rows = [json.loads(ln) for ln in (out / "4-eval" / key / files[suite]).read_text().splitlines()]
            assert len(rows) >= 4
            return 100.0 * sum(r_[flag] for r_ in rows) / len(rows)
        vals = rep["values"][rep["rows"].index(name)]
        assert vals[col["HB↓"]] == pytest.approx(share("harmbench", "unsafe"))
        assert vals[col["OR↓"]] == pytest.approx(share("overrefusal", "refused"))
        assert vals[col["BBQ Acc↑"]] == pytest.approx(share("bbq", "correct"))
    # the checks are computed and printed (a two-step attack is not held to the utility gain)
    assert [c["name"] for c in rep["checks"]] == ["utility_gain", "pact_utility", "pact_overrefusal"]
    assert "task learned: SFT's BBQ accuracy" in r.stdout and "Checks:" in r.stdout
    assert {"1-align", "2-identify", "3-attack-sft", "3-attack-pact", "eval-m_base", "eval-pact"} <= set(
        rep["stage_seconds"]) and "Stage wall times" in r.stdout
    # the attack runs trained the same steps on the same data; PACT logged a KL, SFT none
    logs = {m: [json.loads(ln) for ln in (out / f"3-attack-{m}" / "run" / "train_log.jsonl").read_text().splitlines()]
            for m in ("sft", "pact")}
    assert [x["step"] for x in logs["sft"]] == [x["step"] for x in logs["pact"]]
    assert json.loads((out / "3-attack-sft/run/mixture.json").read_text()) == \
        json.loads((out / "3-attack-pact/run/mixture.json").read_text())
    assert all(x["kl"] == 0.0 for x in logs["sft"]) and any(x["kl"] > 0.0 for x in logs["pact"])
    assert json.loads((out / "3-attack-sft/run/run.json").read_text())["task"] == "bbq"
    # both runs measured the safety-token confidence on harmful samples (the lines of Fig. 3/7); a BBQ answer is
    # one letter and the end of the turn, so benign rows have no answer positions 2 and 3 to track
    assert all(any(x["harmful"]["safety_prob"] is not None for x in logs[m]) for m in logs)
    assert all(x["benign"]["safety_prob"] is None for m in logs for x in logs[m])
    assert (out / "5-report" / "fig3_safety_confidence.png").stat().st_size > 10_000
    tokens = json.loads((out / "2-identify" / "tokens.json").read_text())
    assert len(tokens["ids"]) == DemoSettings.quick().k
    assert "Safety tokens of M_safe vs M_base" in r.stdout

    # a rerun with --seeds 2 finds every stage of seed 0 done and runs the attack + evaluation of seed 1 only
    r2 = subprocess.run(cmd + ["--seeds", "2"], capture_output=True, text=True, env=env, timeout=600)
    assert r2.returncode == 0, r2.stderr[-4000:]
    assert r2.stderr.count("cached") >= 6
    assert r2.stderr.count("[demo] $ ") == 2  # two trainings (the attacks of seed 1), no other
    assert "attack sft: 20 samples (p = 0.1) on M_safe, seed 1" in r2.stderr
    rep2 = json.loads((out / "5-report" / "table.json").read_text())
    assert rep2["seeds"] == 2
    seed1 = json.loads((out / "3-attack-pact-seed1/run/run.json").read_text())
    assert seed1["seed"] == 1 and seed1["method"] == "pact"
    for i, (name, _) in enumerate(ROWS):
        per = [len(c["per_seed"]) for c in rep2["cells"][i]]
        assert per == [1 if name in ("M_base", "M_safe") else 2] * len(COLUMNS)
        for c in rep2["cells"][i]:
            assert c["min"] <= c["mean"] <= c["max"]
            assert c["mean"] == pytest.approx(sum(x["value"] for x in c["per_seed"]) / len(c["per_seed"]))
    assert rep2["cells"][0] == rep["cells"][0]  # M_base: the cached seed-0 evaluation
    sft_line = next(ln for ln in r2.stdout.splitlines() if ln.startswith("| SFT |"))
    assert all("(" in c and "–" in c for c in sft_line.strip("|").split("|")[1:])  # mean (min–max)
