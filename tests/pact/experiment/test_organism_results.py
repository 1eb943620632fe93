"""docs/organism.md shows the organism grid's report as `pact experiment` writes it from the committed metrics."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pact.experiment.grid import load_grid
from pact.experiment.plan import make_plan
from pact.experiment.report import write_report

REPO = Path(__file__).resolve().parents[3]
GRID = REPO / "configs" / "experiments" / "organism-full.yaml"
RESULTS = REPO / "docs" / "results" / "organism-full"
PAGE = (REPO / "docs" / "organism.md").read_text()
FILES = ["table2.md", "table2.csv", "table5.md", "table5.csv", "fig5.csv"]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    """The report rebuilt from the committed ``metrics/<cell>.json`` by the runner's own report code."""
    plan = make_plan(load_grid(GRID), out=tmp_path_factory.mktemp("organism"))
    metrics = {p.stem: json.loads(p.read_text()) for p in (RESULTS / "metrics").glob("*.json")}
    initial = {name: metrics.pop(name) for name, _ in plan.initial}
    results = {c.name: metrics.pop(c.name) for c in plan.cells}
    assert not metrics, f"metrics of no cell of the grid: {sorted(metrics)}"
    write_report(plan, initial, results)
    return plan.out / "5-report"


def test_every_cell_of_the_grid_ran():
    plan = make_plan(load_grid(GRID), out="runs/organism-full")
    have = {p.stem for p in (RESULTS / "metrics").glob("*.json")}
    assert len(plan.cells) == 16
    assert have == {c.name for c in plan.cells} | {n for n, _ in plan.initial}


@pytest.mark.parametrize("name", FILES)
def test_committed_report_file_is_the_report_of_the_committed_metrics(regenerated, name):
    assert (RESULTS / name).read_text() == (regenerated / name).read_text(), (
        f"docs/results/organism-full/{name} is not what pact experiment's report makes of metrics/")


@pytest.mark.parametrize("name", ["table2", "table5"])
def test_page_shows_the_committed_table(name):
    found = re.findall(rf"<!-- organism-{name} -->\n(.*?)<!-- /organism-{name} -->", PAGE, re.S)
    assert len(found) == 1, f"docs/organism.md has {len(found)} organism-{name} blocks"
    table = (RESULTS / f"{name}.md").read_text()
    assert found[0].strip() == table.split("\n\n", 1)[1].strip(), f"docs/organism.md's {name} differs from {name}.md"
