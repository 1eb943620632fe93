"""``pact experiment``: a grid of cells (method × variant × λ / N / K × seed), each trained with
``deepspeed pact/train.py`` and evaluated with ``pact eval``, resumable, reported in the paper's layout.

:mod:`~pact.experiment.grid` (the YAML schema), :mod:`~pact.experiment.plan`
(cells and commands), :mod:`~pact.experiment.run` (stages, content keys),
:mod:`~pact.experiment.report` (Table 2, Table 5, Fig. 5),
:mod:`~pact.experiment.organism` (the demo's aligned/base pair and data splits).
"""
from .grid import Grid, GridError, load_grid
from .plan import make_plan, render_plan

__all__ = ["Grid", "GridError", "load_grid", "make_plan", "render_plan"]
