"""The measured tables of the README and docs/ are the benchmark scripts' own outputs, and the GPU script fits one device command."""
from __future__ import annotations

import re

import pytest

from tests.doc_text import REPO, doc_files, flat, marked_tables

#: marker in README.md or docs/*.md -> the file its benchmark script writes
TABLES = {"cpu-table": "cpu.md", "fused-linear-table": "fused_linear.md",
          "train-memory-table": "train_memory_mb8.md", "train-step-table": "train_step.md"}


@pytest.mark.parametrize("marker, result", sorted(TABLES.items()))
def test_marked_table_is_the_results_file(marker, result):
    found = marked_tables(marker)
    assert len(found) == 1, f"README.md and docs/*.md hold {len(found)} {marker} blocks"
    path, table = found[0]
    assert table.strip() == (REPO / "benchmarks" / "results" / result).read_text().strip(), (
        f"{path.relative_to(REPO)}'s {marker} differs from benchmarks/results/{result}: paste the file again")


def test_gpu_check_stage_timeouts_fit_one_device_command():
    script = (REPO / "checks" / "gpu_check.sh").read_text()  # benchmarks/gpu_check.sh runs it
    timeouts = [int(t) for t in re.findall(r"^\s*(?:\S+=\S+ )*timeout (\d+) ", script, re.M)]
    # build, triton, correctness, benchmark, tuning, fused head (oracle, then speed), TRL bf16, driver bf16
    assert len(timeouts) == 9
    total = sum(timeouts)
    assert total <= 540, f"stage timeouts add up to {total} s; a lent GPU runs one command for at most 600 s"
    assert f"add up to {total} s" in script and any(f"add up to {total} s" in flat(p) for p in doc_files())
