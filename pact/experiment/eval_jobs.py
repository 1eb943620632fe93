"""The evaluations of a plan: the ``pact eval`` jobs of a model, their suites' files, and their command lines."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plan import Cell, Plan

__all__ = ["eval_command", "eval_jobs", "eval_model", "plan_tasks", "suite_files"]


def plan_tasks(plan: Plan) -> list[str]:
    """The fine-tuning tasks of the plan's cells, in order."""
    out: list[str] = []
    for c in plan.cells:
        if c.task not in out:
            out.append(c.task)
    return out


def eval_jobs(plan: Plan, tasks: list[str] | None = None) -> list[dict]:
    """The ``pact eval`` calls of one evaluation: the harmful and over-refusal suites (``safety/``) and the task
    suites (``task/``, with their own answer cap): ``tasks`` (a cell's task; default every cell's task);
    each ``{"sub", "suites", "max_new_tokens"}``."""
    from ..eval.suites import parse_suite_list

    e = plan.grid.eval
    suites = parse_suite_list(e.suites)
    safety = [s.name for s in suites if s.kind != "task"]
    task = list(tasks if tasks is not None else plan_tasks(plan))
    jobs = []
    if safety:
        jobs.append({"sub": "safety", "suites": safety, "max_new_tokens": e.max_new_tokens})
    if task:
        jobs.append({"sub": "task", "suites": task, "max_new_tokens": e.task_new_tokens or e.max_new_tokens})
    return jobs


def suite_files(plan: Plan) -> dict[str, str]:
    """suite -> local file: the grid's eval.files, and with organism data its held-out files."""
    files = dict(plan.grid.eval.files)
    if plan.grid.data.organism is not None:
        d = plan.out / "3-attack-data" / "eval"
        for s in plan.grid.eval.suites + [plan.grid.data.task]:
            files.setdefault(s, str(d / f"{s}.jsonl"))
    return files


def eval_model(plan: Plan, cell: Cell) -> tuple[str, str | None]:
    """(model, adapter) to evaluate a cell with: the aligned model + the LoRA, or the full fine-tune."""
    final = str(plan.out / cell.run_dir / "run" / "final")
    return (plan.aligned, final) if cell.lora else (final, None)


def eval_command(plan: Plan, model: str, adapter: str | None, out_dir: Path, job: dict, method: str | None) -> list[str]:
    e = plan.grid.eval
    files = suite_files(plan)
    cmd = ["pact", "eval", "--model", model]
    if adapter:
        cmd += ["--adapter", adapter]
    cmd += ["--suite", ",".join(job["suites"]), "--judge", e.judge, "--max-new-tokens", str(job["max_new_tokens"]),
            "--batch-size", str(e.batch_size), "--dtype", e.dtype]
    for s in job["suites"]:
        if s in e.sizes:
            cmd += ["--size", f"{s}={e.sizes[s]}"]
        if s in files:
            cmd += ["--suite-file", f"{s}={files[s]}"]
    if method:
        cmd += ["--method", method]
    return cmd + ["-o", str(out_dir / job["sub"])]
