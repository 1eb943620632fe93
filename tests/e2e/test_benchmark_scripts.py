"""The driver benchmarks (benchmarks/train_step.py, benchmarks/train_memory.py) still run, on a smaller model."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_train_step_benchmark_runs(tmp_path):
    from benchmarks.train_step import main

    main(["--hidden", "32", "--layers", "1", "--steps", "4", "-o", str(tmp_path / "step")])
    results = json.loads((tmp_path / "step.json").read_text())
    assert [r["name"] for r in results] == ["sft", "pact (reference online)", "pact (ref_cache)"]
    assert all(r["steps"] == 4 and r["step_cpu_seconds"] > 0 for r in results)
    assert (tmp_path / "step.md").read_text().count("\n| ") == 4  # header + 3 rows


def test_train_memory_benchmark_runs_and_fused_equals_unfused(tmp_path):
    from benchmarks.train_memory import main

    main(["--vocab", "4096", "--hidden", "32", "--layers", "1", "--steps", "2", "-o", str(tmp_path / "mem")])
    table = (tmp_path / "mem.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| sft") or line.startswith("| pact")]
    assert len(rows) == 4 and all(line.rstrip(" |").endswith("yes") for line in rows), table
