"""``pact experiment``: a grid of cells (method × variant × λ / N / K × seed), each trained with
``deepspeed pact/train.py`` and evaluated with ``pact eval``, resumable, reported in the paper's layout.

:mod:`~pact.experiment.grid` (the YAML file and its reading; the sections in
:mod:`~pact.experiment.grid_schema`), :mod:`~pact.experiment.plan` (cells and their training configs),
:mod:`~pact.experiment.eval_jobs` (the evaluations of a cell), :mod:`~pact.experiment.launch` (the training
command), :mod:`~pact.experiment.run` (the stages), :mod:`~pact.experiment.keys` (content keys and markers),
:mod:`~pact.experiment.token_files` (the top K safety tokens), :mod:`~pact.experiment.report` (Table 2,
Table 5, Fig. 5), :mod:`~pact.experiment.organism` (the demo's aligned/base pair and data splits).
"""
from .grid import Grid, GridError, load_grid
from .plan import make_plan, render_plan

__all__ = ["Grid", "GridError", "load_grid", "make_plan", "render_plan"]
