"""``pact experiment GRID.yaml``: train and evaluate every cell of a grid, resumably; report in the paper's layout."""
from __future__ import annotations

import argparse

from .common import ExitOn, run_reporting

HELP = ("run a grid of cells (methods, ladder rungs, lambda/N/K, seeds): train each with deepspeed pact/train.py, "
        "evaluate with pact eval, report Table 2 / Table 5 / Fig. 5")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("experiment", help=HELP, description=HELP + ". Every stage is keyed by the content of what "
                       "made it: a rerun skips finished stages and redoes those whose inputs changed.")
    p.add_argument("grid", metavar="GRID.yaml", help="the grid file (configs/experiments/*.yaml)")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default: the grid's out:)")
    p.add_argument("--plan", action="store_true",
                   help="validate every cell's config and print every stage, cell and command; run nothing")
    p.add_argument("--cells", action="append", metavar="PATTERN",
                   help="run only the cells whose names match (fnmatch, repeatable; e.g. 'pact*'); the report "
                        "takes every finished cell")
    p.add_argument("--num_gpus", "--num-gpus", type=int, default=None, help="GPUs per node for each training "
                   "(deepspeed --num_gpus; default: the grid's launch:, else 1)")
    p.add_argument("--hostfile", default=None, help="deepspeed --hostfile for multi-node training")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..experiment.grid import GridError
    from ..experiment.plan import render_plan

    code, planned = run_reporting("pact experiment", lambda: _grid_and_plan(args), ExitOn(GridError, 2))
    if code:
        return code
    grid, plan = planned
    if args.plan:
        print(render_plan(plan))
        return 0
    from ..experiment.run import CellFailedError, run_experiment
    from ..locks import DirectoryLockedError

    code, rep = run_reporting(
        "pact experiment", lambda: run_experiment(grid, plan.out, cells=args.cells, plan=plan)["report"],
        ExitOn(DirectoryLockedError, 2),
        ExitOn(CellFailedError, 1, "{command}: {error}; a rerun resumes (finished stages are kept)"))
    if code:
        return code
    for name, t in rep["tables"].items():
        print(f"{name}:\n{t['markdown']}")
    for f in rep["files"]:
        print(f"wrote {f}")
    return 0


def _grid_and_plan(args: argparse.Namespace):
    """The grid file with the command line's launch options over it, and its plan (:class:`GridError` when
    either is invalid)."""
    from ..experiment.grid import load_grid
    from ..experiment.plan import make_plan

    grid = load_grid(args.grid)
    if args.num_gpus is not None:
        grid.launch.num_gpus = args.num_gpus
    if args.hostfile is not None:
        grid.launch.hostfile = args.hostfile
    return grid, make_plan(grid, args.out)
