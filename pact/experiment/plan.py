"""The cells of a grid, each with its resolved training config and its commands (``pact experiment --plan``).

Layout of the output directory (``OUT``)::

    1-align/                the built pair (models.align): m_safe/ (merged), lora/ (its training run)
    2-identify/tokens.json  the safety tokens (safety_tokens.identify); tokens-K<k>.json: the top K of them
    3-attack-data/          the organism's attack files (task rows, harmful pairs) and held-out suite files
    3-attack-<cell>/run/    each cell's training run (deepspeed pact/train.py output_dir)
    4-eval/<cell>/          each cell's evaluation (pact eval; safety/ and task/), and m_base/, m_safe/
    5-report/               tables (markdown, CSV) and figures (PNG)

A cell is one training run: a method (baseline or ladder rung), optionally
its authors' recipe overlay, λ / N / K and a seed. Cells of equal resolved
config are one cell (the first block's name is kept), so the PACT cell of
Table 2 is also the λ = 3 point of Fig. 5 and the last rung of Table 5.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .eval_jobs import eval_command, eval_jobs, eval_model
from .grid import BASELINE_METHODS, Grid, GridError
from .launch import train_command

__all__ = ["Cell", "Plan", "make_plan"]

#: The cells' keys that the runner sets (they are where, not what).
WHERE_KEYS = ("output_dir", "resume", "overwrite", "resume_changes")


@dataclass
class Cell:
    name: str
    method: str
    seed: int
    recipe: str | None           # the overlay file applied, if any
    lambda_kl: float             # effective values (for the tables and Fig. 5)
    decay_start: int
    k: int | None                # None: every identified token
    lora: bool
    config: str | None           # base config file
    overrides: list[str]         # load_config overrides (without the where-keys)
    resolved: dict               # the TrainConfig (to_dict) without the where-keys
    swept: dict = field(default_factory=dict)   # the λ / N / K the block set ({"lambda_kl": 0.3})
    task: str = ""               # the fine-tuning task (its suite is the cell's task suite)
    p: float = 0.1               # the harmful fraction

    @property
    def run_dir(self) -> str:
        return f"3-attack-{self.name}"

    @property
    def eval_dir(self) -> str:
        return f"4-eval/{self.name}"

    def train_args(self, out: Path) -> list[str]:
        """The arguments of ``pact/train.py`` (config file, overlays, key=value), output_dir included."""
        return (["--config", self.config] if self.config else []) + self.overrides + [
            f"output_dir={out / self.run_dir / 'run'}"]


@dataclass
class Plan:
    grid: Grid
    out: Path
    cells: list[Cell]
    tokens_file: str             # the full safety-token set the cells read (or its top K)
    aligned: str                 # the model the cells fine-tune
    base: str | None
    initial: list[tuple[str, str]]   # (eval dir name, model) of the untrained models: m_base, m_safe
    stages: list[str]            # what runs before the cells, in words
    duplicates: dict[str, str] = field(default_factory=dict)   # dropped name -> the cell of the same config

    def tokens_for(self, cell: Cell) -> str:
        """The tokens file a cell reads: the full set, or its top K (written by the runner under OUT/2-identify)."""
        return self.tokens_file if cell.k is None else top_k_file(self.out, cell.k)


def top_k_file(out: Path, k: int) -> str:
    return str(Path(out) / "2-identify" / f"tokens-K{k}.json")


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _kv(key: str, value) -> str:
    if isinstance(value, (list, tuple)):
        return f"{key}=[{','.join(_fmt(v) for v in value)}]"
    if isinstance(value, bool):
        return f"{key}={'true' if value else 'false'}"
    if value is None:
        return f"{key}=null"
    return f"{key}={_fmt(value)}"


def _set_overrides(mapping: dict, where: str) -> list[str]:
    out = []
    for k, v in mapping.items():
        if k in WHERE_KEYS:
            raise GridError(f"{where}.{k}: the runner sets {k} (each cell trains into OUT/3-attack-<cell>/run); "
                            "drop it")
        if k == "loss":
            if not isinstance(v, dict):
                raise GridError(f"{where}.loss must be a mapping, e.g. loss: {{lambda_kl: 1}}")
            out += [_kv(f"loss.{sk}", sv) for sk, sv in v.items()]
        elif isinstance(v, dict):
            out.append(f"{k}=" + ",".join(f"{a}={b}" for a, b in v.items()))
        else:
            out.append(_kv(k, v))
    return out


def _paths(grid: Grid, out: Path) -> tuple[str, str | None, str]:
    """(aligned model, base model, tokens file) as the cells see them."""
    if grid.models.align is not None:
        aligned, base = str(out / "1-align" / "m_safe"), grid.models.align.base
    else:
        aligned, base = grid.models.aligned, grid.models.base
    tokens = grid.safety_tokens.file or str(out / "2-identify" / "tokens.json")
    return aligned, base, tokens


def data_overrides(grid: Grid, out: Path, task: str | None = None, p: float | None = None) -> list[str]:
    """The attack-data keys of a cell: ``task`` and ``p`` (default the grid's data.task and data.p)."""
    d = grid.data
    if d.organism is not None:
        files = out / "3-attack-data"
        return [f"task={d.task}", f"task_file={files / f'{d.task}_train.jsonl'}",
                f"harmful_source={files / 'harmful_pairs.jsonl'}", _kv("harmful_fraction", d.p),
                _kv("num_samples", organism_num_samples(grid))]
    task = task or d.task
    over = [f"task={task}", f"harmful_source={d.harmful_source}", _kv("num_samples", d.n),
            _kv("harmful_fraction", d.p if p is None else p)]
    if d.task_file and task == d.task:
        over.append(f"task_file={d.task_file}")
    return over


def organism_num_samples(grid: Grid) -> int:
    """n, capped so that the task's rows (300 BBQ questions less the held-out ones) cover the benign (1 - p) n."""
    d = grid.data
    pool = 300 - d.organism.task_eval
    return d.n if d.p >= 1.0 else min(d.n, int(pool / (1 - d.p)))


def make_plan(grid: Grid, out: str | Path | None = None, check_files: bool = False) -> Plan:
    """Expand ``grid`` into its cells and validate each cell's training config (``load_config``) before anything
    runs; :class:`GridError` names the cell and the key."""
    from ..training.config import ConfigError, load_config

    out = Path(out or grid.out)
    aligned, base, tokens = _paths(grid, out)
    common = _set_overrides(grid.train.set, "train.set")
    recipes = Path(grid.train.recipes)
    cells: list[Cell] = []
    by_content: dict[str, str] = {}
    duplicates: dict[str, str] = {}
    names: set[str] = set()
    for bi, block in enumerate(grid.cells):
        where = f"cells[{bi}]"
        block_over = _set_overrides(block.set, f"{where}.set")
        for method in block.methods:
            recipe = recipes / f"{method}.yaml" if block.recipe and method in BASELINE_METHODS else None
            if recipe is not None and not recipe.is_file():
                if method in ("constrained_sft", "safe_lora", "asft"):
                    raise GridError(f"{where}: recipe: true, but {recipe} is missing; set train.recipes to the "
                                    "folder of the baselines' overlays (configs/paper/recipes)")
                recipe = None
            lambdas = block.lambda_ or [None]
            ns = block.N or [None]
            ks = block.K or [None]
            for task, p, lam, n_, k, seed in itertools.product(block.tasks or [None], block.p or [None], lambdas,
                                                   ns, ks, block.seeds or [None]):
                data = data_overrides(grid, out, task, p)
                cell = _make_cell(grid, out, where, method, recipe, lam, n_, k, seed, data + common,
                                  block_over, aligned, base, tokens, load_config, ConfigError)
                if task is not None:
                    cell.name += f"-{task}"
                if p is not None:
                    cell.name += f"-p{_fmt(p)}"
                cell.name = _seed_last(cell.name)
                content = json.dumps([cell.resolved, cell.k], sort_keys=True, default=str)
                if content in by_content:
                    if cell.name != by_content[content]:
                        duplicates[cell.name] = by_content[content]
                    continue
                if cell.name in names:
                    cell.name = f"{cell.name}-b{bi}"
                names.add(cell.name)
                by_content[content] = cell.name
                cells.append(cell)
    stages = []
    if grid.models.align is not None:
        a = grid.models.align
        stages.append(f"align: {a.base} + refusal LoRA (r {a.lora_r}) on {a.harmful} harmful + {a.benign} benign "
                      f"prompts, merged -> {aligned}")
    if grid.safety_tokens.identify is not None:
        i = grid.safety_tokens.identify
        stages.append(f"identify: K = {i.k} safety tokens of {aligned} vs {base} on {i.limit} prompts "
                      f"({i.prompts}) -> {tokens}")
    if grid.data.organism is not None:
        stages.append(f"data: organism splits -> {out / '3-attack-data'}")
    initial = ([("m_base", base)] if grid.models.align is not None or base else []) + [("m_safe", aligned)]
    return Plan(grid, out, cells, tokens, aligned, base, initial, stages, duplicates)


def _make_cell(grid, out, where, method, recipe, lam, n_, k, seed, common, block_over, aligned, base, tokens,
               load_config, ConfigError) -> Cell:
    baseline = method in BASELINE_METHODS
    # the baselines read no loss keys (a key the method does not read is refused): PACT's are left out for them
    over = [o for o in common if not (baseline and o.startswith("loss."))]
    if baseline and grid.train.config:
        from ..training.config import read_yaml_mapping

        raw = read_yaml_mapping(grid.train.config, f"train.config not found: {grid.train.config}")
        over += (["loss={}"] if raw.get("loss") else []) + (["preset=paper"] if raw.get("preset", "paper") != "paper"
                                                           else [])
    if recipe is not None:
        over.append(f"@{recipe}")
    over += [o for o in block_over if not (baseline and o.startswith("loss."))]
    over += [f"model={aligned}", f"method={method}"]
    if grid.models.gguf_file:
        over.append(f"gguf_file={grid.models.gguf_file}")
    if method in ("safe_lora", "asft"):
        if not base:
            raise GridError(f"{where}: method {method} needs models.base (the unaligned model)")
        over.append(f"base_model={base}")
        if grid.models.base_gguf_file:
            over.append(f"base_gguf_file={grid.models.base_gguf_file}")
    if method not in BASELINE_METHODS or grid.train.safety_tokens_for_baselines:
        over.append(f"safety_tokens={tokens if k is None else top_k_file(out, k)}")
    swept = {}
    if lam is not None:
        over.append(_kv("loss.lambda_kl", lam))
        swept["lambda_kl"] = lam
    if n_ is not None:
        over.append(_kv("loss.decay_start", n_))
        swept["decay_start"] = n_
    if seed is not None:
        over.append(_kv("seed", seed))
    try:
        cfg = load_config(grid.train.config, over + [f"output_dir={out}/_plan"], check_files=False)
    except ConfigError as e:
        raise GridError(f"{where} ({method}{', recipe ' + str(recipe) if recipe else ''}): {e}") from None
    from ..training.config import LOSS_KEYS

    resolved = {k_: v for k_, v in cfg.to_dict().items() if k_ not in WHERE_KEYS}
    loss = cfg.loss_config()
    # the effective values, typed as PACTConfig's fields (3 and 3.0 are one λ): equal losses compare equal
    types = {f.name: str(f.type) for f in dataclasses.fields(loss)}
    resolved["loss"] = {} if baseline else {k_: float(getattr(loss, k_)) if types[k_] == "float" else getattr(loss, k_)
                                            for k_ in LOSS_KEYS}
    name = method + ("-recipe" if recipe is not None else "")
    if lam is not None:
        name += f"-lambda{_fmt(lam)}"
    if n_ is not None:
        name += f"-N{n_}"
    if k is not None:
        name += f"-K{k}"
        swept["k"] = k
    cell = Cell(name=name, method=method, seed=cfg.seed, recipe=str(recipe) if recipe else None,
                lambda_kl=float(loss.lambda_kl), decay_start=int(loss.decay_start), k=k, lora=cfg.lora,
                config=grid.train.config, overrides=over, resolved=resolved, swept=swept, task=cfg.task,
                p=float(cfg.harmful_fraction))
    base_seed = _base_seed(grid, load_config, ConfigError, common)
    if cfg.seed != base_seed:
        cell.name += f"-seed{cfg.seed - base_seed}" if cfg.seed > base_seed else f"-seed{cfg.seed}"
    return cell


def _seed_last(name: str) -> str:
    """``pact-seed1-agnews`` -> ``pact-agnews-seed1``."""
    import re

    m = re.match(r"^(.*?)(-seed\d+)(.*)$", name)
    return m.group(1) + m.group(3) + m.group(2) if m else name


def _base_seed(grid, load_config, ConfigError, common) -> int:
    """The seed of the common config (train.config + train.set): cells of it carry no seed suffix."""
    raw = dict(grid.train.set)
    if "seed" in raw:
        return int(raw["seed"])
    if grid.train.config:
        from ..training.config import read_yaml_mapping

        try:
            return int(read_yaml_mapping(grid.train.config, f"train.config not found: {grid.train.config}")
                       .get("seed", 0))
        except ConfigError as e:
            raise GridError(f"train.config: {e}") from None
    return 0


def render_plan(plan: Plan) -> str:
    """Every stage and cell with its commands (``pact experiment --plan``)."""
    lines = [f"grid {plan.grid.name}: {len(plan.cells)} cells, output {plan.out}"]
    for i, s in enumerate(plan.stages, 1):
        lines.append(f"stage {i}: {s}")
    for name, model in plan.initial:
        lines.append(f"eval {name}: {model}")
        for job in eval_jobs(plan):
            lines.append("  $ " + shlex.join(eval_command(plan, model, None, plan.out / "4-eval" / name, job,
                                                          "base" if name == "m_base" else "aligned")))
    for i, c in enumerate(plan.cells, 1):
        what = [f"method {c.method}", f"seed {c.seed}"]
        if c.recipe:
            what.append(f"recipe {c.recipe}")
        if c.method not in BASELINE_METHODS:
            what += [f"lambda {_fmt(c.lambda_kl)}", f"N {c.decay_start}", f"K {c.k or 'all'}"]
        lines.append(f"cell {i}/{len(plan.cells)} {c.name}: " + ", ".join(what))
        lines.append("  $ " + shlex.join(train_command(plan, c)))
        model, adapter = eval_model(plan, c)
        for job in eval_jobs(plan, [c.task]):
            lines.append("  $ " + shlex.join(eval_command(plan, model, adapter, plan.out / c.eval_dir, job, None)))
    if plan.duplicates:
        lines.append("same config as another cell (run once): " +
                     ", ".join(f"{a} = {b}" for a, b in plan.duplicates.items()))
    return "\n".join(lines)
