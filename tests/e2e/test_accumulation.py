"""Gradient accumulation is a bigger batch: one step over the same 4 samples as 4x1, 2x2 or 1x4 micro-batches
moves the weights alike (driver and PACTTrainer), and ``loss_normalization=micro_batch`` keeps the mean of the
micro-batch means."""
from __future__ import annotations

import pytest

from pact.training.step import backward_scale, step_loss_weight
from tests.e2e.test_train import run, setup  # noqa: F401  (setup: the driver tests' fixture)
from tests.e2e.trl_run import trainer_for

pytestmark = pytest.mark.slow

SHAPES = {"4x1": (1, 4), "2x2": (2, 2), "1x4": (4, 1)}  # micro-batches x samples: (micro_batch_size, accumulation)
# a learning rate small enough that Adam's first step (about lr per weight) stays in float precision
ONE_STEP = ("max_steps=1", "learning_rate=1e-4", "lora_dropout=0.0")


def test_the_factors_add_up_to_one_step():
    rows = [3, 0, 7, 5]  # one empty micro-batch among them
    weights = [step_loss_weight("tokens", r, sum(rows), 4) for r in rows]
    assert sum(weights) == pytest.approx(1.0) and weights[1] == 0.0 and weights[2] == pytest.approx(7 / 15)
    assert [step_loss_weight("micro_batch", r, sum(rows), 4) for r in rows] == [0.25] * 4
    # DeepSpeed divides by the accumulation (2) and averages two ranks: the factor undoes both for tokens
    assert backward_scale("tokens", 3, 15, 2, 2) == pytest.approx(3 / 15 * 2 * 2)
    assert backward_scale("micro_batch", 3, 15, 2, 2) == pytest.approx(1.0)


_DRIVER_RUNS: dict = {}


def driver_weights(setup, name, shape, *keys):
    """The LoRA weights after the driver's one step (each run once per module) and its run directory."""
    from safetensors.torch import load_file

    key = (str(setup["root"]), name, shape, keys)
    if key not in _DRIVER_RUNS:
        mb, ga = SHAPES[shape]
        _, out, _ = run(setup, f"{name}-{shape}", *ONE_STEP, f"micro_batch_size={mb}",
                        f"gradient_accumulation_steps={ga}", *keys)
        _DRIVER_RUNS[key] = out
    out = _DRIVER_RUNS[key]
    return load_file(str(out / "final" / "adapter_model.safetensors")), out


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def moved(before: dict, after: dict) -> float:
    return max((after[k].double() - before[k].double()).abs().max().item() for k in after)


def test_driver_accumulation_is_a_bigger_batch(setup):
    """The three shapes give the same LoRA weights after one step (to float precision, 1e-8 of a 1e-4 step);
    the step's logged loss is the mean over its labelled rows whatever the shape."""
    import json

    runs = {s: driver_weights(setup, "acc", s) for s in SHAPES}
    weights = {s: w for s, (w, _) in runs.items()}
    for shape in ("2x2", "1x4"):
        assert max_difference(weights[shape], weights["4x1"]) < 1e-8, shape
    logs = {s: json.loads((out / "train_log.jsonl").read_text().splitlines()[0]) for s, (_, out) in runs.items()}
    assert logs["2x2"]["loss"] == pytest.approx(logs["4x1"]["loss"], rel=1e-6)
    assert logs["1x4"]["loss"] == pytest.approx(logs["4x1"]["loss"], rel=1e-6)
    assert logs["1x4"]["loss"] == pytest.approx(logs["1x4"]["ce"] + 3.0 * logs["1x4"]["kl"], rel=1e-6)  # λ = 3


def test_driver_two_ranks_equal_one_process(setup):
    """Two ranks x 2 micro-batches of 1 = one process x 4 micro-batches of 1: the rows are counted over ranks."""
    one, _ = driver_weights(setup, "acc", "4x1")
    _, out, _ = run(setup, "acc-ranks", *ONE_STEP, "micro_batch_size=1", "gradient_accumulation_steps=2", ranks=2)
    from safetensors.torch import load_file

    two = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert max_difference(two, one) < 1e-8


def test_driver_micro_batch_normalization_is_the_mean_of_micro_batch_means(setup):
    """The option keeps the old weighting: 1x4 (one mean over 4 samples) differs from 4x1 (mean of 4 means)."""
    import json

    keys = ("loss_normalization=micro_batch",)
    w41, out41 = driver_weights(setup, "accmb", "4x1", *keys)
    w14, out14 = driver_weights(setup, "accmb", "1x4", *keys)
    assert max_difference(w41, w14) > 1e-6
    rec = json.loads((out41 / "train_log.jsonl").read_text().splitlines()[0])
    assert rec["loss"] != pytest.approx(rec["ce"] + 3.0 * rec["kl"], rel=1e-6)  # not the row mean


def trainer_weights(setup, tmp_path, shape, *keys):
    mb, ga = SHAPES[shape]
    trainer = trainer_for(setup["model"], setup["tokens"], tmp_path / shape,
                          [*ONE_STEP, f"micro_batch_size={mb}", f"gradient_accumulation_steps={ga}", *keys])
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    after = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return before, after, trainer


@pytest.mark.parametrize("method", ["pact", "sft"])
def test_trainer_accumulation_is_a_bigger_batch(setup, tmp_path, method):
    """PACTTrainer: the same weights for 4x1, 2x2, 1x4 (SFTTrainer normalises by num_items_in_batch alike),
    equal to the driver's, and the logged loss the step's row mean."""
    runs = {s: trainer_weights(setup, tmp_path, s, f"method={method}") for s in SHAPES}
    base_before, base_after, _ = runs["4x1"]
    assert moved(base_before, base_after) > 5e-5  # the step moved the weights (Adam: about lr)
    for shape in ("2x2", "1x4"):
        before, after, _ = runs[shape]
        assert max_difference(before, base_before) == 0.0
        assert max_difference(after, base_after) < 1e-8, shape
    losses = {s: [r for r in t.state.log_history if "loss" in r][0] for s, (_, _, t) in runs.items()}
    assert losses["1x4"]["loss"] == pytest.approx(losses["4x1"]["loss"], rel=1e-6)
    if method == "pact":
        driver, _ = driver_weights(setup, "acc", "2x2")
        mine = {k.replace(".default", ""): v for k, v in base_after.items()}
        assert max_difference({k: mine[k] for k in driver}, driver) < 1e-7


def test_trainer_micro_batch_normalization(setup, tmp_path):
    """loss_normalization='micro_batch': 1x4 and 4x1 differ, as the mean of micro-batch means does."""
    before, w41, _ = trainer_weights(setup, tmp_path / "a", "4x1", "loss_normalization=micro_batch")
    _, w14, _ = trainer_weights(setup, tmp_path / "b", "1x4", "loss_normalization=micro_batch")
    assert max_difference(w41, w14) > 1e-6


def test_a_bad_loss_normalization_is_refused(setup, tmp_path):
    from pact.trl import PACTTrainerConfig
    from pact.training.config import ConfigError, load_config

    with pytest.raises(ValueError, match="loss_normalization='rows'; use tokens"):
        PACTTrainerConfig(output_dir=str(tmp_path), safety_tokens=str(setup["tokens"]), loss_normalization="rows",
                          bf16=False)
    with pytest.raises(ConfigError, match="loss_normalization='rows': use tokens"):
        load_config(None, [f"model={setup['model']}", f"safety_tokens={setup['tokens']}", "loss_normalization=rows"])
