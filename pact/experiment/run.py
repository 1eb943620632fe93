"""Run a grid, stage by stage, skipping what is done: ``pact experiment GRID.yaml``.

Each stage (align, identify, an evaluation, a cell's training, a cell's
evaluation) writes ``done.json`` (atomically) when it finishes, holding the
stage's **key**: a SHA-256 of everything it was made from (the cell's
resolved training config, and the content digests of its models, safety
tokens and data files; for an evaluation its suites, files, judge and
generation settings). A rerun skips a stage whose key is unchanged and redoes
(from scratch) one whose key changed, whatever its name. A stage interrupted
before its marker resumes (training from its last checkpoint, evaluation from
its last written answer) when its key is unchanged, else starts over.
"""
from __future__ import annotations

import fnmatch
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from ..atomic_files import write_json_atomic
from .eval_jobs import eval_jobs, eval_model, suite_files
from .grid import Grid
from .keys import DONE, STARTED, ContentDigests, digest, read_json
from .launch import CellFailedError, device, run_training
from .plan import Cell, Plan, make_plan
from .token_files import figure2, top_k

__all__ = ["CellFailedError", "Runner", "device", "figure2", "run_experiment", "top_k"]


class Runner:
    """One run of a plan: the stages in order, each skipped when its key is unchanged."""

    def __init__(self, plan: Plan, log_name: str | None = None, log: Callable[[str], None] | None = None):
        self.plan = plan
        self.out = plan.out
        self.name = log_name or plan.grid.log_name
        self._log = log
        self.digests = ContentDigests()
        self.keys: dict[str, str] = {}       # stage dir -> its key (this run's)
        self.trained: list[str] = []         # cells trained in this run
        self.evaluated: list[str] = []       # evaluations run (not cached) in this run

    # -- logging, markers -------------------------------------------------
    def log(self, msg: str) -> None:
        if self._log:
            self._log(msg)
        else:
            print(f"[{self.name}] {msg}", file=sys.stderr, flush=True)

    def fresh(self, d: Path, key: str, what: str) -> dict | None:
        """The marker of stage ``d`` when it finished with ``key``; a finished or started stage of another key
        is removed (it is redone)."""
        done = read_json(d / DONE)
        if done is not None and done.get("key") == key:
            return done
        started = read_json(d / STARTED)
        old = (done or started or {}).get("key")
        if old is not None and old != key:
            self.log(f"{what}: its inputs or config changed (key {old[:12]} -> {key[:12]}): redone")
            shutil.rmtree(d)
        return None

    def start(self, d: Path, key: str) -> None:
        write_json_atomic(d / STARTED, {"key": key})

    def mark(self, d: Path, key: str, info: dict) -> None:
        write_json_atomic(d / DONE, {"key": key, **info})

    # -- training ------------------------------------------------------------
    def train(self, overrides: list[str], run_dir: Path, config: str | None = None) -> None:
        """Train into ``run_dir`` (:func:`~pact.experiment.launch.run_training` with the grid's launch settings)."""
        run_training(self.plan.grid.launch, overrides, run_dir, config, self.log)

    # -- stages -----------------------------------------------------------
    def organism_data(self) -> dict | None:
        g = self.plan.grid
        if g.data.organism is None:
            return None
        from .organism import splits

        o = g.data.organism
        return splits(align_harmful=g.models.align.harmful, attack_harmful=o.attack_harmful, task_eval=o.task_eval,
                      held_out=o.held_out, overrefusal=o.overrefusal, seed=o.seed)

    def stage_align(self, data: dict | None) -> None:
        g = self.plan.grid
        if g.models.align is None:
            return
        from dataclasses import asdict

        from .organism import benign_prompts, build_aligned

        a = g.models.align
        d = self.out / "1-align"
        key = digest({"align": asdict(a), "base": self.digests.model_digest(a.base), "pairs": data["align"],
                      "benign": benign_prompts()[:a.benign], "batch_size": g.eval.batch_size})
        if self.fresh(d, key, "align"):
            self.log(f"align: cached ({d / 'm_safe'})")
            return
        t0 = time.time()
        self.start(d, key)
        build_aligned(d, a, data["align"], g.eval.batch_size, self.train, self.log)
        self.digests.forget(d)
        self.mark(d, key, {"m_safe": str(d / "m_safe"), "seconds": round(time.time() - t0, 1)})

    def stage_identify(self, data: dict | None) -> None:
        g = self.plan.grid
        i = g.safety_tokens.identify
        tokens = Path(self.plan.tokens_file)
        if i is not None:
            d = tokens.parent
            if i.prompts == "align":
                prompts = [r["prompt"] for r in data["align"][:i.limit]]
                prompts_name = "uncensorbench (align split)"
            else:
                from ..data.sources import get_source

                prompts = [r.prompt for r in get_source(i.prompts, limit=i.limit).records]
                prompts_name = i.prompts
            key = digest({"safe": self.digests.model_digest(self.plan.aligned, g.models.gguf_file),
                          "base": self.digests.model_digest(self.plan.base, g.models.base_gguf_file),
                          "prompts": prompts,
                          "k": i.k, "new_tokens": i.new_tokens, "batch_size": i.batch_size})
            if self.fresh(d, key, "identify"):
                self.log(f"identify: cached ({tokens})")
            else:
                t0 = time.time()
                self.start(d, key)
                from ..models import load_model, load_tokenizer, resolve_model_ref
                from ..identify import identify

                tok = load_tokenizer(resolve_model_ref(self.plan.aligned, g.models.gguf_file))
                safe = load_model(resolve_model_ref(self.plan.aligned, g.models.gguf_file), device=device()).eval()
                base = load_model(resolve_model_ref(self.plan.base, g.models.base_gguf_file), device=device()).eval()
                safe_name = "M_safe (SmolLM2 + refusal LoRA)" if g.models.align else self.plan.aligned
                base_name = "SmolLM2-135M-Instruct" if g.models.align else self.plan.base
                res = identify(safe, base, tok, prompts, k=i.k, max_new_tokens=i.new_tokens, batch_size=i.batch_size,
                               safe_name=safe_name, base_name=base_name, prompts_name=prompts_name)
                del safe, base
                res.tokens.save(tokens)
                self.digests.forget(tokens)
                self.mark(d, key, {"tokens": str(tokens), "prompts": len(prompts),
                                   "seconds": round(time.time() - t0, 1)})
            print(figure2(tokens))
        elif not tokens.is_file():
            raise FileNotFoundError(f"safety_tokens.file {tokens} not found; run pact identify first (or set "
                                    "safety_tokens.identify in the grid)")
        for k in sorted({c.k for c in self.plan.cells if c.k is not None}):
            top_k(tokens, k, Path(self.plan.tokens_for(next(c for c in self.plan.cells if c.k == k))))

    def stage_data(self, data: dict | None) -> dict[str, str]:
        """The organism's files (rewritten atomically each run: their content is their identity)."""
        if data is None:
            return {}
        from .organism import write_attack_files

        files = write_attack_files(self.out / "3-attack-data", data)
        self.digests.forget(self.out / "3-attack-data")
        return {k: str(v) for k, v in files.items()}

    def inputs_digest(self, cell: Cell) -> dict:
        """The content digests of a cell's inputs: models, safety tokens, local data files."""
        r = cell.resolved
        out = {"model": self.digests.model_digest(r["model"], r.get("gguf_file")),
               "base_model": self.digests.model_digest(r.get("base_model"), r.get("base_gguf_file"))}
        for key in ("safety_tokens", "task_file", "harmful_source", "deepspeed"):
            v = r.get(key)
            if isinstance(v, str) and Path(v).is_file():
                out[key] = self.digests.path_digest(v)
        if cell.recipe:
            out["recipe"] = self.digests.path_digest(cell.recipe)
        return out

    def cell_key(self, cell: Cell) -> str:
        resolved = json.loads(json.dumps(cell.resolved, default=str).replace(str(self.out), "OUT"))
        return digest({"config": resolved, "inputs": self.inputs_digest(cell)})

    def stage_train(self, cell: Cell) -> str:
        d = self.out / cell.run_dir
        key = self.cell_key(cell)
        self.keys[cell.run_dir] = key
        if self.fresh(d, key, f"attack {cell.name}"):
            self.log(f"attack {cell.name}: cached")
            return key
        t0 = time.time()
        self.start(d, key)
        r = cell.resolved
        self.log(f"attack {cell.method}: {r['num_samples']} samples (p = {r['harmful_fraction']}) on M_safe, "
                 f"seed {cell.seed}" + (f" [{cell.name}]" if cell.name != cell.method else ""))
        self.train(cell.overrides, d / "run", cell.config)
        if not cell.lora:
            self.add_tokenizer(d / "run" / "final")
        self.mark(d, key, {"run": str(d / "run"), "cell": cell.name, "seconds": round(time.time() - t0, 1)})
        self.trained.append(cell.name)
        return key

    def add_tokenizer(self, final: Path) -> None:
        """A full fine-tune exports the model's weights only: its tokenizer (the aligned model's) goes beside them,
        so that ``pact eval --model final`` loads it as a model of its own."""
        if (final / "tokenizer_config.json").is_file():
            return
        from ..models import load_tokenizer

        load_tokenizer(self.plan.aligned, self.plan.grid.models.gguf_file).save_pretrained(str(final))

    def eval_key(self, model_key: str, tasks: list[str] | None) -> str:
        g = self.plan.grid
        jobs = eval_jobs(self.plan, tasks)
        used = {s for j in jobs for s in j["suites"]}
        files = {s: self.digests.path_digest(f) for s, f in suite_files(self.plan).items()
                 if s in used and Path(f).is_file()}
        return digest({"model": model_key, "jobs": jobs, "judge": g.eval.judge,
                       "sizes": {s: n for s, n in g.eval.sizes.items() if s in used}, "files": files,
                       "batch_size": g.eval.batch_size, "dtype": g.eval.dtype})

    def stage_eval(self, name: str, model: str, adapter: str | None, method: str, model_key: str,
                   gguf_file: str | None = None, tasks: list[str] | None = None, task: str | None = None) -> dict:
        """Evaluate one model with ``pact eval`` (:func:`pact.eval.runner.run_eval`), one call per job
        (safety suites, task suites), into ``4-eval/NAME``; the merged ``metrics.json`` there."""
        from ..eval.runner import run_eval
        from ..eval.suites import parse_suite_list

        g = self.plan.grid
        d = self.out / "4-eval" / name
        key = self.eval_key(model_key, tasks)
        if self.fresh(d, key, f"evaluate {name}"):
            self.log(f"evaluate {name}: cached")
            return json.loads((d / "metrics.json").read_text())
        t0 = time.time()
        self.start(d, key)
        self.log(f"evaluate {name}: {model}" + (f" + {adapter}" if adapter else ""))
        files = suite_files(self.plan)
        suites, parts = {}, []
        state: dict = {}
        for job in eval_jobs(self.plan, tasks):
            if "model" not in state:  # one load for the jobs of this model
                from ..eval.runner import load_policy

                state["model"], state["tok"] = load_policy(model, gguf_file=gguf_file, adapter=adapter,
                                                           dtype=g.eval.dtype, device=device())
            m = run_eval(model=model, adapter=adapter, suites=parse_suite_list(job["suites"]), out_dir=d / job["sub"],
                         judge=g.eval.judge, dtype=g.eval.dtype, device=device(), batch_size=g.eval.batch_size,
                         max_new_tokens=job["max_new_tokens"], sizes={s: n for s, n in g.eval.sizes.items()
                                                                      if s in job["suites"]},
                         files={s: f for s, f in files.items() if s in job["suites"]}, method=method,
                         task=task, model_obj=state["model"], tokenizer_obj=state["tok"], log=self.log,
                         progress=True)
            suites.update(m["suites"])
            parts.append(m)
        state.clear()
        metrics = {"name": name, "model": model, "adapter": adapter, "method": method, "task": task,
                   "judge": next((p["judge"] for p in parts if p.get("judge")), None), "suites": suites,
                   "run_config": next((p.get("run_config") for p in parts if p.get("run_config")), None)}
        write_json_atomic(d / "metrics.json", metrics)
        self.mark(d, key, {"seconds": round(time.time() - t0, 1)})
        self.evaluated.append(name)
        return metrics


def run_experiment(grid: Grid, out: str | Path | None = None, *, cells: list[str] | None = None,
                   log_name: str | None = None, report: bool = True, plan: Plan | None = None) -> dict:
    """Run (or resume) ``grid`` in ``out``: align, identify, data, the untrained models' evaluations, then each
    cell's training and evaluation, then the report. ``cells``: name patterns (fnmatch) to run only those cells
    (the report takes every finished cell). Returns ``{"plan", "initial", "cells", "report", "runner"}``."""
    from ..locks import DirectoryLock

    plan = plan or make_plan(grid, out)
    with DirectoryLock(plan.out, f"the experiment directory {plan.out}",
                       "wait for that run to finish (a rerun resumes it), or pass another --out"):
        return _run(grid, plan, cells, log_name, report)


def _run(grid: Grid, plan: Plan, cells: list[str] | None, log_name: str | None, report: bool) -> dict:
    runner = Runner(plan, log_name)
    out = plan.out
    todo = [c for c in plan.cells if not cells or any(fnmatch.fnmatch(c.name, p) for p in cells)]
    if cells and not todo:
        raise ValueError(f"--cells {cells} matches none of the cells: {', '.join(c.name for c in plan.cells)}")
    t0 = time.time()
    data = runner.organism_data()
    if data is not None:
        runner.log(f"splits: align {len(data['align'])} harmful, attack {len(data['attack'])} harmful, "
                   f"{grid.data.task} {len(data['task_train'])} train / {len(data['task_eval'])} held out, held-out "
                   f"harmful {sum(map(len, data['held'].values()))}, over-refusal {len(data['benign'])}")
    n_stages = 3 + len(todo)
    runner.log(f"stage 1/{n_stages}: models")
    runner.stage_align(data)
    runner.log(f"stage 2/{n_stages}: safety tokens")
    runner.stage_identify(data)
    runner.stage_data(data)
    runner.log(f"stage 3/{n_stages}: evaluate the untrained models")
    initial = {}
    for name, model in plan.initial:
        gguf = grid.models.gguf_file if name == "m_safe" else grid.models.base_gguf_file
        initial[name] = runner.stage_eval(name, model, None, "base" if name == "m_base" else "aligned",
                                          runner.digests.model_digest(model, gguf), gguf)
    results: dict[str, dict] = {}
    for i, cell in enumerate(todo):
        elapsed = time.time() - t0
        runner.log(f"stage {4 + i}/{n_stages}: cell {cell.name} ({i + 1} of {len(todo)}; {elapsed:.0f} s so far)")
        key = runner.stage_train(cell)
        model, adapter = eval_model(plan, cell)
        results[cell.name] = runner.stage_eval(cell.name, model, adapter, cell.method, key,
                                               grid.models.gguf_file if cell.lora else None, [cell.task], cell.task)
    for cell in plan.cells:  # cells finished by earlier runs (--cells) go into the report when still current
        if cell.name not in results:
            done = read_json(out / cell.eval_dir / DONE)
            key = runner.eval_key(runner.cell_key(cell), [cell.task]) if done else None
            if done and done.get("key") == key:
                results[cell.name] = json.loads((out / cell.eval_dir / "metrics.json").read_text())
    rep = None
    if report:
        from .report import write_report

        rep = write_report(plan, initial, results)
    runner.log(f"done in {time.time() - t0:.0f} s; trained {len(runner.trained)} cell(s), evaluated "
               f"{len(runner.evaluated)}; results in {out}")
    return {"plan": plan, "initial": initial, "cells": results, "report": rep, "runner": runner}
