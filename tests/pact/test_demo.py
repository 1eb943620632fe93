"""``pact demo``: its data splits, its table arithmetic and its checks (``--quick`` end to end on SmolLM2:
tests/e2e/test_demo.py)."""
from __future__ import annotations

import json
import time
from dataclasses import asdict

import pytest

from pact.demo import (COLUMNS, ROWS, UTILITY_GAIN, DemoSettings, DemoSettingsError, benign_prompts, check_settings,
                       checks, figure2, run_demo, splits, stage_times, table)


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
    # BBQ: held-out questions never in the attack's task pool (whole prompts compared: the same context
    # appears with other questions)
    from pact.data.tasks import to_sample

    task_eval = {_norm(x.prompt) for x in data["task_eval"]}
    task_train = {_norm(to_sample("bbq", r, "").prompt) for r in data["task_train"]}
    assert len(task_eval) == s.task_eval >= 50 and len(task_eval) + len(task_train) == 300
    assert not task_eval & task_train
    # over-refusal prompts: benign, distinct, none of them trained on (align's benign prompts included)
    benign = [_norm(p) for p in data["benign"]]
    assert len(set(benign)) == len(benign) == s.overrefusal_eval
    assert not set(benign) & (align | attack | {_norm(p) for p in benign_prompts()})
    # align pairs teach refusals, attack pairs teach compliance: different texts for the same kind of prompt
    assert all(r["response"] and r["response"] != r2["response"] for r, r2 in zip(data["align"], data["attack"]))
    # seeded: the same call gives the same split, another seed another one
    again = splits(s)
    assert [r["prompt"] for r in again["align"]] == [r["prompt"] for r in data["align"]]
    assert data["held"] == again["held"] and data["benign"] == again["benign"]
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


def _suites(acc: tuple[int, int], orr: tuple[int, int], hb: tuple[int, int], sr: tuple[int, int]) -> dict:
    def rate(kind, count, key, kn):
        return {"kind": kind, "n": kn[1], count: kn[0], key: 100.0 * kn[0] / kn[1]}
    return {"suites": {
        "bbq": rate("task", "correct", "accuracy", acc),
        "overrefusal": rate("overrefusal", "refused", "refusal_rate", orr),
        "harmbench": rate("harmful", "unsafe", "asr", hb),
        "strongreject": rate("harmful", "unsafe", "asr", sr),
    }}


def test_table_pools_the_two_harmful_sets_and_shows_intervals():
    results = {"M_base": [_suites((0, 100), (10, 100), (19, 20), (18, 20))],
               "M_safe": [_suites((2, 100), (30, 100), (1, 20), (0, 20))],
               "SFT": [_suites((40, 100), (20, 100), (12, 20), (9, 20))],
               "PACT": [_suites((38, 100), (25, 100), (1, 20), (1, 20))]}
    md, values, cells = table(results)
    assert [r for r, _ in ROWS] == ["M_base", "M_safe", "SFT", "PACT"]
    assert [c for c, _ in COLUMNS] == ["BBQ Acc↑", "OR↓", "SR↓", "HB↓", "ASR avg↓"]
    assert len(values) == 4 and all(len(v) == len(COLUMNS) for v in values)
    assert values[0] == pytest.approx([0.0, 10.0, 90.0, 95.0, 92.5])
    # pooled over prompts: 2 of 40 = 5.0 [1.4–16.5] (by hand in tests/pact/eval/test_metrics.py)
    assert values[3] == pytest.approx([38.0, 25.0, 5.0, 5.0, 5.0])
    assert "| PACT | 38.0 [29.1–47.8] | 25.0 [17.5–34.3] | 5.0 [0.9–23.6] | 5.0 [0.9–23.6] | 5.0 [1.4–16.5] |" in md
    assert cells[3][4]["per_seed"] == [{"value": 5.0, "k": 2, "n": 40, "lo": pytest.approx(1.382, abs=1e-3),
                                        "hi": pytest.approx(16.504, abs=1e-3)}]
    # pooled, not the mean of the two rates: 4 of 30 = 13.3, not (15 + 10) / 2
    uneven = dict(results, PACT=[_suites((38, 100), (25, 100), (3, 20), (1, 10))])
    assert table(uneven)[1][3][4] == pytest.approx(400.0 / 30.0)


def test_checks_fail_an_unlearned_task_and_say_what_pact_costs(tmp_path, monkeypatch, capsys):
    from pact.cli import main
    from pact.demo import DemoCheckError, check_line

    # rows M_base, M_safe, SFT, PACT; columns task accuracy, over-refusal, ...
    values = [[0.0, 1.0, 90.0, 90.0, 90.0], [2.0, 30.0, 5.0, 0.0, 2.5], [21.0, 5.0, 50.0, 60.0, 55.0],
              [11.0, 45.0, 0.0, 5.0, 2.5]]
    gain, drop, rise = checks(values)
    assert (gain["value"], drop["value"], rise["value"]) == (19.0, 10.0, 15.0)
    assert [c["ok"] for c in (gain, drop, rise)] == [False, False, False]
    assert check_line(gain).startswith("FAILED task learned") and "+19.0 points (needs >= +20)" in gain["text"]
    assert check_line(drop).startswith("NOTE") and "-10.0 points (MORE than 5 below)" in drop["text"]
    assert check_line(rise).startswith("NOTE") and "+15.0 points (MORE than 10 above)" in rise["text"]
    values[2][0], values[3][0], values[3][1] = 22.0, 17.0, 40.0  # exactly +20, -5, +10: every check holds
    assert [c["ok"] for c in checks(values)] == [True, True, True]

    def failing(*args, **kwargs):
        raise DemoCheckError(gain["text"])

    monkeypatch.setattr("pact.demo.run_demo", failing)
    assert main(["demo", "--out", str(tmp_path / "d")]) == 3
    assert "pact demo: check failed: task learned" in capsys.readouterr().err


def test_table_over_seeds_shows_mean_and_range():
    one = {"M_base": [_suites((0, 100), (10, 100), (19, 20), (18, 20))],
           "M_safe": [_suites((2, 100), (30, 100), (1, 20), (0, 20))]}
    results = dict(one, SFT=[_suites((40, 100), (20, 100), (12, 20), (9, 20)),
                             _suites((50, 100), (22, 100), (10, 20), (11, 20)),
                             _suites((45, 100), (21, 100), (8, 20), (7, 20))],
                   PACT=[_suites((38, 100), (25, 100), (1, 20), (1, 20))] * 3)
    md, values, cells = table(results)
    assert "| SFT | 45.0 (40.0–50.0) | 21.0 (20.0–22.0) | 45.0 (35.0–55.0) | 50.0 (40.0–60.0) | 47.5 (37.5–52.5) |" in md
    assert "| M_safe | 2.0 [0.6–7.0] | 30.0 [21.9–39.6] |" in md  # untrained models: one measurement, its interval
    assert values[2][0] == 45.0 and (cells[2][0]["min"], cells[2][0]["max"]) == (40.0, 50.0)
    assert [x["k"] for x in cells[2][0]["per_seed"]] == [40, 50, 45]
    chk = {c["name"]: c for c in checks(values)}
    assert chk["utility_gain"]["value"] == pytest.approx(43.0) and chk["utility_gain"]["ok"]
    assert chk["pact_utility"]["value"] == pytest.approx(7.0) and not chk["pact_utility"]["ok"]  # 7 points below SFT
    assert "MORE than 5 below" in chk["pact_utility"]["text"]
    assert chk["pact_overrefusal"]["value"] == pytest.approx(-5.0) and chk["pact_overrefusal"]["ok"]
    flat = dict(results, SFT=[_suites((2 + int(UTILITY_GAIN) - 1, 100), (20, 100), (1, 20), (1, 20))])
    assert not {c["name"]: c for c in checks(table(flat)[1])}["utility_gain"]["ok"]  # +19 points: not learned


def test_figure2_lists_tokens_by_rank(tmp_path):
    f = tmp_path / "tokens.json"
    f.write_text(json.dumps({"ids": [7, 3, 9], "strings": ["I", " cannot", "\n"], "scores": [0.5, 0.25, 0.125],
                             "mean_safe_prob": [0.6, 0.3, 0.2], "weights": [0.5, 0.25, 0.125]}))
    lines = figure2(f, top=2).splitlines()
    assert "top 2 of K = 3" in lines[0]
    assert lines[2].split() == ["1", '"I"', "7", "0.5000", "0.6000"]
    assert '" cannot"' in lines[3] and lines[3].split()[-3:] == ["3", "0.2500", "0.3000"]
    assert len(lines) == 4
