"""Training data: the seeded task/harmful mixture, its tokenised views, and the step sampler."""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

import torch

from ..data.tasks import Sample, load_harmful, load_task
from ..data.views import TwoViews, ViewBuilder
from .config import ConfigError, TrainConfig


def build_mixture(task: list[Sample], harmful: list[Sample], n: int, p: float, seed: int):
    """n samples with a share p of harmful ones, drawn without replacement and shuffled with ``seed``.

    Returns ``(samples, record)``; ``record`` says which source rows were drawn,
    in which order, so the mixture can be rebuilt and audited.
    """
    n_harmful = round(n * p)
    n_task = n - n_harmful
    if n_task > len(task):
        raise ConfigError(f"num_samples={n} with harmful_fraction={p} needs {n_task} task samples; "
                          f"the task has {len(task)}")
    if n_harmful > len(harmful):
        raise ConfigError(f"num_samples={n} with harmful_fraction={p} needs {n_harmful} harmful samples; "
                          f"the harmful source has {len(harmful)}")
    rng = random.Random(seed)
    task_idx = sorted(rng.sample(range(len(task)), n_task))
    harm_idx = sorted(rng.sample(range(len(harmful)), n_harmful))
    order = [("task", i) for i in task_idx] + [("harmful", i) for i in harm_idx]
    rng.shuffle(order)
    samples = [task[i] if kind == "task" else harmful[i] for kind, i in order]
    record = {"num_samples": n, "harmful_fraction": p, "seed": seed, "num_task": n_task,
              "num_harmful": n_harmful, "order": [f"{kind}:{i}" for kind, i in order]}
    return samples, record


def load_mixture(cfg: TrainConfig):
    """The run's mixture from its task and harmful sources (see :func:`build_mixture`)."""
    task = load_task(cfg.task, cfg.task_split, cfg.task_file, cfg.task_fields)
    harmful = load_harmful(cfg.harmful_source) if cfg.harmful_fraction > 0 else []
    return build_mixture(task, harmful, cfg.num_samples, cfg.harmful_fraction, cfg.seed)


def tokenize_mixture(samples: list[Sample], builder: ViewBuilder) -> tuple[list[TwoViews], int]:
    """Both views of every sample; samples whose prompt fills ``max_length`` are dropped (count returned)."""
    views, dropped = [], 0
    for s in samples:
        v = builder.build(s.prompt, s.response, harmful=s.harmful)
        if v is None:
            dropped += 1
        else:
            views.append(v)
    if not views:
        raise ConfigError("no training sample fits max_length; raise max_length")
    return views, dropped


def dataset_digest(views: list[TwoViews]) -> str:
    """SHA-256 of the tokenised views, in order (keys the reference cache)."""
    h = hashlib.sha256()
    for v in views:
        h.update(json.dumps([v.full_ids, v.post_ids, v.num_answer]).encode())
    return h.hexdigest()


@dataclass
class StepSampler:
    """Which samples each rank reads at each optimizer step.

    Each epoch is a seeded permutation cut into blocks of
    ``micro_batch * accumulation * world`` samples (the last partial block is
    dropped, so every rank runs the same number of steps). Micro-batch j of a
    block is ``block[j*mb:(j+1)*mb]``; rank r takes micro-batches
    ``g*world + r`` for g < accumulation. One process with accumulation A·W
    therefore sees exactly the micro-batches that W ranks with accumulation A
    see, and gives the same step losses.
    """

    num_samples: int
    micro_batch: int
    accumulation: int
    world: int
    rank: int
    seed: int

    @property
    def block(self) -> int:
        return self.micro_batch * self.accumulation * self.world

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.block

    def permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=g).tolist()

    def micro_batches(self, epoch: int, step_in_epoch: int) -> list[list[int]]:
        """This rank's ``accumulation`` micro-batches (lists of sample indices) for one step."""
        perm = self.permutation(epoch)
        block = perm[step_in_epoch * self.block:(step_in_epoch + 1) * self.block]
        mb = self.micro_batch
        return [block[(g * self.world + self.rank) * mb:(g * self.world + self.rank + 1) * mb]
                for g in range(self.accumulation)]
