"""``pact demo``: its data splits, its table arithmetic, and ``--quick`` end to end on SmolLM2.

The end-to-end test runs the real command (the console entry point, a fresh
process) on the real GGUF model and the real prompt packages, then checks
that the report has every row and column filled with measured numbers and
that a rerun skips every finished stage.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict

import pytest

from pact.demo import (COLUMNS, ROWS, DemoSettings, DemoSettingsError, benign_prompts, check_settings, figure2,
                       run_demo, splits, table)


def _norm(p: str) -> str:
    return p.strip().lower()


def test_splits_keep_every_held_out_prompt_out_of_training():
    s = DemoSettings()
    data = splits(s)
    align = {_norm(r["prompt"]) for r in data["align"]}
    attack = {_norm(r["prompt"]) for r in data["attack"]}
    held = [_norm(p) for src in data["held"].values() for p in src]
    assert len(align) == s.align_harmful and len(attack) == s.attack_harmful
    assert not align & attack
    assert not set(held) & (align | attack)
    assert len(data["held"]["harmbench"]) == len(data["held"]["strongreject"]) == s.eval_harmful_per_source
    assert len(set(held)) == len(held)
    gsm_eval = {_norm(x.prompt) for x in data["gsm_eval"]}
    gsm_train = {_norm(x.prompt) for x in data["gsm_train"]}
    assert len(gsm_eval) == s.gsm8k_eval and len(gsm_eval) + len(gsm_train) == 100
    assert not gsm_eval & gsm_train
    # align pairs teach refusals, attack pairs teach compliance: different texts for the same kind of prompt
    assert all(r["response"] and r["response"] != r2["response"] for r, r2 in zip(data["align"], data["attack"]))
    # seeded: the same call gives the same split, another seed another one
    again = splits(s)
    assert [r["prompt"] for r in again["align"]] == [r["prompt"] for r in data["align"]]
    assert data["held"] == again["held"]
    other = splits(DemoSettings(seed=1))
    assert [r["prompt"] for r in other["align"]] != [r["prompt"] for r in data["align"]]


def test_splits_drop_a_held_out_prompt_that_was_used_for_training(monkeypatch):
    """A HarmBench prompt equal (up to case and spaces) to an align or attack prompt never reaches the held-out set."""
    import pact.data.sources as sources

    real = sources.get_source
    s = DemoSettings(eval_harmful_per_source=5)
    clean = splits(s)
    align_prompt, attack_prompt = clean["align"][3]["prompt"], clean["attack"][0]["prompt"]

    class Planted:
        def __init__(self, src):
            first = type(src.records[0])
            self.records = [first(prompt=f"  {align_prompt.upper()} "), first(prompt=attack_prompt)] * 30 + list(
                src.records[:3])

    monkeypatch.setattr(sources, "get_source",
                        lambda name, **kw: Planted(real(name, **kw)) if name == "harmbench" else real(name, **kw))
    held = splits(s)["held"]["harmbench"]
    assert len(held) == 3  # only the three real prompts are left to sample from
    assert {_norm(p) for p in held}.isdisjoint({_norm(align_prompt), _norm(attack_prompt)})


def test_an_output_directory_of_other_settings_is_refused_before_any_work(tmp_path, capsys):
    from pact.cli import main

    out = tmp_path / "demo"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps(dict(asdict(DemoSettings()), lambda_kl=1.0)))
    with pytest.raises(DemoSettingsError, match=r"lambda_kl 1.0 -> 3.0.*another --out"):
        run_demo(out, settings=DemoSettings())
    assert main(["demo", "--out", str(out), "--lambda-kl", "2"]) == 2
    assert "lambda_kl 1.0 -> 2.0" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["settings.json"]  # nothing else was started
    check_settings(out, DemoSettings(lambda_kl=1.0))  # the directory's own settings: accepted, no error


def test_splits_refuse_overlapping_uncensorbench_splits():
    with pytest.raises(ValueError, match="overlap"):
        splits(DemoSettings(align_harmful=100, attack_harmful=60))


def test_benign_prompts_are_distinct_and_enough_for_the_default():
    prompts = benign_prompts()
    assert len(prompts) == len(set(prompts)) >= DemoSettings().align_benign


def _suites(acc: float, hb: tuple[int, int], sr: tuple[int, int]) -> dict:
    return {"suites": {
        "gsm8k": {"accuracy": acc},
        "harmbench": {"unsafe": hb[0], "n": hb[1], "asr": 100.0 * hb[0] / hb[1]},
        "strongreject": {"unsafe": sr[0], "n": sr[1], "asr": 100.0 * sr[0] / sr[1]},
    }}


def test_table_pools_the_two_harmful_sets_for_the_average():
    results = {"M_base": _suites(5.0, (19, 20), (18, 20)), "M_safe": _suites(5.0, (1, 20), (0, 20)),
               "SFT": _suites(10.0, (12, 20), (9, 20)), "PACT": _suites(10.0, (3, 20), (1, 10))}
    md, values = table(results)
    assert [r for r, _ in ROWS] == ["M_base", "M_safe", "SFT", "PACT"]
    assert len(values) == 4 and all(len(v) == len(COLUMNS) for v in values)
    assert values[0] == pytest.approx([5.0, 90.0, 95.0, 92.5])
    # pooled over prompts (4 of 30 = 13.33), not the mean of the two rates ((15 + 10) / 2 = 12.5)
    assert values[3] == pytest.approx([10.0, 10.0, 15.0, 400.0 / 30.0])
    assert "| PACT | 10.0 | 10.0 | 15.0 | 13.3 |" in md


def test_figure2_lists_tokens_by_rank(tmp_path):
    f = tmp_path / "tokens.json"
    f.write_text(json.dumps({"ids": [7, 3, 9], "strings": ["I", " cannot", "\n"], "scores": [0.5, 0.25, 0.125],
                             "mean_safe_prob": [0.6, 0.3, 0.2], "weights": [0.5, 0.25, 0.125]}))
    lines = figure2(f, top=2).splitlines()
    assert "top 2 of K = 3" in lines[0]
    assert lines[2].split() == ["1", '"I"', "7", "0.5000", "0.6000"]
    assert '" cannot"' in lines[3] and lines[3].split()[-3:] == ["3", "0.2500", "0.3000"]
    assert len(lines) == 4


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "pact", "demo", "--quick", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    rep = json.loads((out / "5-report" / "table.json").read_text())
    assert rep["rows"] == [name for name, _ in ROWS]
    assert len(rep["values"]) == 4
    for row in rep["values"]:
        assert len(row) == len(COLUMNS)
        assert all(isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 100.0 for v in row)
    # the printed table is the written one, with every cell a number
    md = (out / "5-report" / "table.md").read_text()
    for name, _ in ROWS:
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {name} |"))
        cells = [c.strip() for c in line.strip("|").split("|")[1:]]
        assert len(cells) == len(COLUMNS) and all(float(c) >= 0 for c in cells)
        assert line in r.stdout
    # each ASR cell is the judged share of the saved verdicts
    for name, key in [("M_base", "m_base"), ("PACT", "pact")]:
        rows = [json.loads(ln) for ln in (out / "4-eval" / key / "harmbench.jsonl").read_text().splitlines()]
        asr = 100.0 * sum(r_["unsafe"] for r_ in rows) / len(rows)
        assert rep["values"][rep["rows"].index(name)][2] == pytest.approx(asr)
    # the attack runs trained the same steps on the same data; PACT logged a KL, SFT none
    logs = {m: [json.loads(ln) for ln in (out / f"3-attack-{m}" / "run" / "train_log.jsonl").read_text().splitlines()]
            for m in ("sft", "pact")}
    assert [x["step"] for x in logs["sft"]] == [x["step"] for x in logs["pact"]]
    assert json.loads((out / "3-attack-sft/run/mixture.json").read_text()) == \
        json.loads((out / "3-attack-pact/run/mixture.json").read_text())
    assert all(x["kl"] == 0.0 for x in logs["sft"]) and any(x["kl"] > 0.0 for x in logs["pact"])
    # both runs measured the safety-token confidence (the two lines of Fig. 3/7)
    assert all(x["benign"]["safety_prob"] is not None for m in logs for x in logs[m])
    assert (out / "5-report" / "fig3_safety_confidence.png").stat().st_size > 10_000
    tokens = json.loads((out / "2-identify" / "tokens.json").read_text())
    assert len(tokens["ids"]) == DemoSettings.quick().k
    assert "Safety tokens of M_safe vs M_base" in r.stdout

    # a rerun finds every stage done and only rewrites the report
    t0 = time.time()
    r2 = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r2.returncode == 0, r2.stderr[-4000:]
    assert r2.stderr.count("cached") >= 6 and "train.py" not in r2.stderr
    assert json.loads((out / "5-report" / "table.json").read_text())["values"] == rep["values"]
    assert time.time() - t0 < 120
