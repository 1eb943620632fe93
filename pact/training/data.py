"""Training data: the seeded task/harmful mixture, its tokenised views, and the step sampler."""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

import torch

from ..data.tasks import Sample, load_harmful, load_task
from ..data.views import TwoViews, ViewBuilder
from .config import ConfigError, TrainConfig, check_harmful_counts, describe_harmful_counts, harmful_counts


def build_mixture(task: list[Sample], harmful: list[Sample], n: int, p: float, seed: int):
    """n samples with a share p of harmful ones, drawn without replacement and shuffled with ``seed``.

    Returns ``(samples, record)``; ``record`` says which source rows were drawn,
    in which order, so the mixture can be rebuilt and audited.
    """
    check_harmful_counts(n, p)
    n_harmful, n_task = harmful_counts(n, p)
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


def load_sources(cfg: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    """The run's task and harmful samples (no harmful source is read when p = 0)."""
    task = load_task(cfg.task, cfg.task_split, cfg.task_file, cfg.task_fields)
    harmful = load_harmful(cfg.harmful_source) if cfg.harmful_fraction > 0 else []
    return task, harmful


def tokenize_mixture(samples: list[Sample], builder: ViewBuilder, record: dict | None = None,
                     task: list[Sample] | None = None, harmful: list[Sample] | None = None):
    """Both views of every sample, keeping the mixture's size and harmful share.

    A sample whose prompt fills ``max_length`` has no answer row to train on.
    With ``record`` (of :func:`build_mixture`) and the sources, it is replaced
    by the next seeded spare of the same kind that fits, so n and p stay what
    the config asks; ``record`` gains ``replaced`` (``"task:17": "task:52"``)
    and the ``order`` actually trained. Without them, or when a kind runs out
    of spares, a :class:`ConfigError` names the counts and the fix: the harmful
    share is never changed silently.

    Returns ``(views, notes)``: one view pair per sample, in order, and
    sentences saying what was replaced (empty when nothing was).
    """
    built = [builder.build(s.prompt, s.response, harmful=s.harmful) for s in samples]
    bad = [j for j, v in enumerate(built) if v is None]
    if not bad:
        return built, []
    where = f"max_length={builder.max_length}"
    if record is None:
        raise ConfigError(f"{len(bad)} of {len(samples)} samples have a prompt that fills {where}; "
                          "raise max_length")
    sources = {"task": task or [], "harmful": harmful or []}
    order = list(record["order"])
    replaced, counts = {}, {"task": 0, "harmful": 0}
    spares = {}
    for kind, src in sources.items():
        used = {int(o.split(":")[1]) for o in order if o.startswith(kind + ":")}
        rest = [i for i in range(len(src)) if i not in used]
        random.Random(record["seed"] * 1_000_003 + (kind == "harmful")).shuffle(rest)
        spares[kind] = rest
    for j in bad:
        kind = order[j].split(":")[0]
        counts[kind] += 1
        while spares[kind]:
            i = spares[kind].pop(0)
            view = builder.build(sources[kind][i].prompt, sources[kind][i].response, harmful=kind == "harmful")
            if view is not None:
                replaced[order[j]] = f"{kind}:{i}"
                order[j], built[j] = f"{kind}:{i}", view
                break
        else:
            need = sum(o.startswith(kind + ":") for o in order)
            fit = need - sum(1 for b in bad if order[b].startswith(kind + ":") and built[b] is None)
            raise ConfigError(f"only {fit} of the {need} {kind} samples the mixture needs (num_samples="
                              f"{record['num_samples']}, harmful_fraction={record['harmful_fraction']}) fit "
                              f"{where} and the {kind} source has no spare that fits; raise max_length or "
                              "lower num_samples (dropping them would change the harmful share)")
    record.update(order=order, replaced=replaced)
    notes = [f"{sum(counts.values())} of {len(samples)} drawn samples have a prompt that fills {where} "
             f"(task {counts['task']}, harmful {counts['harmful']}); each was replaced by another draw of its "
             f"kind, so the mixture keeps {describe_harmful_counts(record['num_samples'], record['harmful_fraction'])} "
             "(mixture.json lists the replacements)"]
    return built, notes


def count_cut_answers(views: list[TwoViews], max_length: int, max_fraction: float,
                      record: dict | None = None) -> list[str]:
    """Count the answers cut to fit ``max_length`` (their end-of-turn token lost with them); record the count in
    ``record["truncated"]`` and say it in a note. More than ``max_fraction`` of the answers cut is a
    :class:`ConfigError` naming the counts and both fixes (raise ``max_length``, or ``max_truncated_fraction``)."""
    cut = [v for v in views if v.cut_tokens]
    if record is not None:
        record["truncated"] = {"answers": len(cut), "of": len(views), "harmful": sum(v.harmful for v in cut),
                               "tokens_cut": sum(v.cut_tokens for v in cut), "max_length": max_length}
    if not cut:
        return []
    share = len(cut) / len(views)
    longest = max(v.num_answer + v.cut_tokens for v in cut)
    said = (f"{len(cut)} of {len(views)} answers ({100 * share:.1f} %; harmful {sum(v.harmful for v in cut)}) are "
            f"cut to fit max_length={max_length} and lose their end-of-turn token ({sum(v.cut_tokens for v in cut)} "
            f"answer tokens cut; the longest of them has {longest} tokens in full)")
    if share > max_fraction:
        raise ConfigError(f"{said}: more than max_truncated_fraction={max_fraction}; raise max_length, or "
                          f"max_truncated_fraction to train on the cut answers")
    return [said + " (mixture.json: truncated)"]


def load_views(cfg: TrainConfig, builder: ViewBuilder) -> tuple[list[TwoViews], dict, list[str]]:
    """The run's mixture, tokenised, with too-long samples replaced (see :func:`tokenize_mixture`) and cut
    answers counted (:func:`count_cut_answers`): ``(views, mixture record, notes)``."""
    task, harmful = load_sources(cfg)
    samples, record = build_mixture(task, harmful, cfg.num_samples, cfg.harmful_fraction, cfg.seed)
    views, notes = tokenize_mixture(samples, builder, record, task, harmful)
    counts = describe_harmful_counts(cfg.num_samples, cfg.harmful_fraction)
    if "rounded" in counts:  # the share asked for is not a whole number of samples: say what is trained on
        notes.insert(0, f"num_samples={cfg.num_samples} with harmful_fraction={cfg.harmful_fraction}: training on "
                        f"{counts}")
    notes += count_cut_answers(views, builder.max_length, cfg.max_truncated_fraction, record)
    return views, record, notes


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

    def too_few_samples(self, block_factors: str) -> str:
        """The sentence saying that the samples do not fill one step; ``block_factors`` names the factors of
        :attr:`block` as the caller's configuration spells them."""
        return f"{self.num_samples} samples do not fill one step of {self.block} ({block_factors})"

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
