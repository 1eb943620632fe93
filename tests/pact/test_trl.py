"""PACTTrainer (pact.trl) against the driver pact/train.py and the naive oracle, on the driver tests' tiny setup."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pact.data.views import ChatTemplateError, ViewBuilder
from pact.safety_tokens import SafetyTokensError
from pact.tiny import tiny_tokenizer
from pact.training.config import load_config
from pact.training.data import StepSampler
from pact_kernels.naive_backend import naive_pact_loss
from tests.pact.test_train_e2e import run, setup, write_tokens  # noqa: F401  (setup: the driver tests' fixture)
from tests.pact.trl_run import REPO, driver_samples, trainer_for

pytestmark = pytest.mark.slow

STEPS = ("max_steps=4", "gradient_accumulation_steps=2")  # 4 steps of 2 micro-batches of 2 samples
# pact through the fused linear loss (the default), safety_weights through the [rows, V] logits and pact_loss
RUNS = {"pact": ("method=pact",), "safety_weights": ("method=safety_weights", "fused_linear=false"),
        "sft": ("method=sft",), "constrained_sft": ("method=constrained_sft",)}


def losses(history):
    return [r for r in history if "loss" in r and "train_runtime" not in r]


@pytest.fixture(scope="module")
def driver(setup):
    """The driver's one-process step records for both methods (steps of 4 samples)."""
    return {m: run(setup, f"driver-{m}", *RUNS[m], *STEPS)[0] for m in RUNS}


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    """PACTTrainer runs configured as the driver (one process), per method."""
    out = {}
    for method in RUNS:
        trainer = trainer_for(setup["model"], setup["tokens"], tmp_path_factory.mktemp(method), [*RUNS[method], *STEPS])
        trainer.train()
        out[method] = trainer
    return out


def assert_same_steps(history, records, tol=1e-5):
    assert len(history) == len(records) == 4
    for mine, theirs in zip(history, records):
        for key in ("loss", "ce", "kl", "gate_mean"):
            assert abs(mine[key] - theirs[key]) < tol, (mine["step"], key, mine[key], theirs[key])


@pytest.mark.parametrize("method", sorted(RUNS))
def test_step_losses_equal_the_driver(trained, driver, method):
    """Every objective the trainer offers (PACT fused and unfused, the baselines sft and constrained_sft)."""
    history = losses(trained[method].state.log_history)
    assert_same_steps(history, driver[method])
    for mine, theirs in zip(history, driver[method]):  # the safety-token confidences the driver logs
        for kind in ("benign", "harmful"):
            if theirs[kind]["safety_prob"] is not None:
                for t, p in enumerate(theirs[kind]["safety_prob"]):
                    assert abs(mine[f"{kind}/safety_prob_t{t}"] - p) < 1e-6


def oracle_losses(model_dir, samples, cfg, tokens) -> list[tuple[float, int]]:
    """Each micro-batch's loss and labelled rows, from views built here by hand (the tiny ChatML template),
    float64 naive oracle.

    At step 1 the LoRA update is zero, so policy and reference are the saved model.
    """
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(model_dir).double().eval()
    ids = torch.tensor(tokens.ids)
    out = []
    for micro in samples:
        z, r_full, r_post, labels, pos = [], [], [], [], []
        for s in micro:
            prompt = tok(f"<|im_start|>user\n{s.prompt}<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
            answer = tok(f"{s.response}<|im_end|>")["input_ids"][:cfg.max_length - len(prompt)]
            header = tok("<|im_start|>assistant\n")["input_ids"]
            n = len(answer)
            with torch.no_grad():
                full = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1:len(prompt) - 1 + n]
                post = model(torch.tensor([header + answer])).logits[0, len(header) - 1:len(header) - 1 + n]
            z.append(full), r_full.append(full[:, ids]), r_post.append(post[:, ids])
            labels.append(torch.tensor(answer)), pos.append(torch.arange(n))
        res = naive_pact_loss(torch.cat(z), torch.cat(labels), torch.cat(r_full), torch.cat(r_post), ids,
                              tokens.weights_tensor(dtype=torch.float64), torch.cat(pos), cfg.loss_config())
        out.append((res.loss.item(), sum(len(a) for a in labels)))
    return out


def test_first_step_equals_the_naive_oracle_and_evaluate_uses_the_same_loss(setup, trained, tmp_path):
    from datasets import Dataset

    from pact.safety_tokens import SafetyTokens

    cfg = load_config(str(REPO / "configs" / "tiny.yaml"), [f"model={setup['model']}",
                      f"safety_tokens={setup['tokens']}", "deepspeed=null", *STEPS])
    samples = driver_samples(cfg)  # the driver's mixture: prompts that fill max_length replaced, n and p kept
    tok = tiny_tokenizer()
    assert all(len(tok(f"<|im_start|>user\n{s.prompt}<|im_end|>\n<|im_start|>assistant\n")["input_ids"])
               < cfg.max_length for s in samples)
    trainer = trained["pact"]
    assert len(trainer.train_views) == len(samples) == 40 and trainer.dropped["train"] == 0
    micro = StepSampler(len(samples), 2, 2, 1, 0, cfg.seed).micro_batches(0, 0)
    oracle = oracle_losses(setup["model"], [[samples[i] for i in mb] for mb in micro], cfg,
                           SafetyTokens.load(setup["tokens"]))
    first = losses(trainer.state.log_history)[0]["loss"]
    step = sum(loss * rows for loss, rows in oracle) / sum(rows for _, rows in oracle)  # the step's row mean
    assert abs(first - step) < 1e-5, (first, oracle)
    assert abs(first - sum(loss for loss, _ in oracle) / 2) > 1e-4  # not the mean of the micro-batch means
    # evaluate() on the first micro-batch with a fresh (untrained) trainer gives the same oracle loss
    fresh = trainer_for(setup["model"], setup["tokens"], tmp_path, ["method=pact"])
    first_mb = [samples[i] for i in micro[0]]
    evaluation = fresh.evaluate(Dataset.from_dict({"prompt": [s.prompt for s in first_mb],
                                                   "completion": [s.response for s in first_mb]}))
    assert abs(evaluation["eval_loss"] - oracle[0][0]) < 1e-5 and "eval_kl" in evaluation
    fresh.create_model_card()
    card = (tmp_path / "README.md").read_text()
    assert "- pact" in card and "2603.07445" in card


def launch(setup, out, *overrides):
    """tests/pact/trl_run.py under the deepspeed launcher, two ranks on the CPU (gloo)."""
    port = str(29900 + (abs(hash(str(out))) % 90))
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", port,
           str(REPO / "tests" / "pact" / "trl_run.py"), str(setup["model"]), str(setup["tokens"]), str(out), *overrides]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return losses(json.loads((Path(out) / "log_history.json").read_text()))


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_under_deepspeed_equal_the_driver(setup, driver, tmp_path, stage):
    """Two ranks x 1 micro-batch per step see the micro-batches of one process x 2 (the driver's order)."""
    history = launch(setup, tmp_path / f"zero{stage}", "method=pact", "max_steps=4", f"zero={stage}")
    assert_same_steps(history, driver["pact"])


def test_reference_cache_gives_the_online_losses_and_refuses_other_data(setup, driver, tmp_path):
    cache = tmp_path / "refcache"
    trainer = trainer_for(setup["model"], setup["tokens"], tmp_path / "a", ["method=pact", *STEPS,
                                                                            f"ref_cache={cache}"])
    assert not (cache / "manifest.json").exists()
    trainer.train()
    assert json.loads((cache / "manifest.json").read_text())["samples"] == len(trainer.train_views) > 10
    assert_same_steps(losses(trainer.state.log_history), driver["pact"])  # (the cache holds float32 logits)
    with pytest.raises(ValueError, match="was built for other data, safety tokens or model"):
        trainer_for(setup["model"], setup["tokens"], tmp_path / "b", ["method=pact", "num_samples=20",
                                                                      f"ref_cache={cache}"])


def test_reference_cache_is_refused_for_new_weights_at_the_same_path(setup, tmp_path):
    """The cache is keyed by the weights' content (as the driver's), not by the model's path."""
    import shutil

    from transformers import AutoModelForCausalLM

    model_dir, cache = tmp_path / "model", tmp_path / "refcache"
    shutil.copytree(setup["model"], model_dir)
    keys = ["method=pact", "max_steps=1", f"ref_cache={cache}"]
    trainer_for(model_dir, setup["tokens"], tmp_path / "a", keys).train()
    assert trainer_for(model_dir, setup["tokens"], tmp_path / "b", keys).cache.status() == "valid"  # same weights
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)  # other weights, saved where the old ones were
    model.save_pretrained(model_dir)
    with pytest.raises(ValueError, match="was built for other data, safety tokens or model"):
        trainer_for(model_dir, setup["tokens"], tmp_path / "c", keys)


def test_warm_up_and_linear_decay_step_with_the_drivers_learning_rates(setup, tmp_path):
    """warmup_steps 2 + linear: step 1 at lr 0 (as transformers), then 1/2, 1 and the decay, in both."""
    keys = ("method=pact", *STEPS, "warmup_steps=2", "lr_scheduler=linear")
    records = run(setup, "driver-warmup", *keys)[0]
    trainer = trainer_for(setup["model"], setup["tokens"], tmp_path, keys)
    trainer.train()
    history = losses(trainer.state.log_history)
    assert_same_steps(history, records)
    assert [r["learning_rate"] for r in history] == pytest.approx([r["lr"] for r in records], abs=1e-12)


def test_resume_from_a_checkpoint_gives_the_uninterrupted_steps(setup, trained, tmp_path):
    """Stopped after step 2 (checkpoint-2), a new trainer resumed from it logs the uninterrupted run's steps 3-4."""
    from transformers import TrainerCallback

    class StopAfterTwo(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_training_stop = True

    keys = ("method=pact", *STEPS)
    first = trainer_for(setup["model"], setup["tokens"], tmp_path, keys, callbacks=[StopAfterTwo()],
                        save_strategy="steps", save_steps=2)
    first.train()
    assert [r["step"] for r in losses(first.state.log_history)] == [1, 2]
    resumed = trainer_for(setup["model"], setup["tokens"], tmp_path, keys, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    whole = losses(trained["pact"].state.log_history)
    again = losses(resumed.state.log_history)
    assert [r["step"] for r in again] == [1, 2, 3, 4]  # the checkpoint's history, then the resumed steps
    for mine, theirs in zip(again, whole):
        for key in ("loss", "ce", "kl", "gate_mean", "learning_rate"):
            assert abs(mine[key] - theirs[key]) < 1e-6, (mine["step"], key, mine[key], theirs[key])


def test_a_constant_schedule_with_warm_up_warms_up(setup, tmp_path):
    from transformers.trainer_utils import SchedulerType

    from pact.trl import PACTTrainerConfig

    with pytest.warns(UserWarning, match="using 'constant_with_warmup'"):
        args = PACTTrainerConfig(output_dir=str(tmp_path), safety_tokens=str(setup["tokens"]), warmup_steps=3,
                                 bf16=False)
    assert args.lr_scheduler_type == SchedulerType.CONSTANT_WITH_WARMUP
    linear = PACTTrainerConfig(output_dir=str(tmp_path), safety_tokens=str(setup["tokens"]), warmup_steps=3,
                               lr_scheduler_type="linear", bf16=False)
    assert linear.lr_scheduler_type == SchedulerType.LINEAR


def test_full_fine_tuning_reads_the_frozen_ref_model(setup, trained, tmp_path):
    """No peft: the reference is ref_model. At step 1 policy = reference, so the loss is the LoRA run's."""
    trainer = trainer_for(setup["model"], setup["tokens"], tmp_path, ["method=pact", *STEPS], lora=False)
    policy = trainer.model
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainer.train()
    history = losses(trainer.state.log_history)
    assert abs(history[0]["loss"] - losses(trained["pact"].state.log_history)[0]["loss"]) < 1e-5
    assert abs(history[-1]["loss"] - losses(trained["pact"].state.log_history)[-1]["loss"]) > 1e-3
    moved = [(p.detach() - before[n]).abs().max().item() for n, p in policy.named_parameters()]
    assert min(moved) > 1e-4  # every weight trained (Adam: about lr per step)
    ref = dict(trainer.ref_model.named_parameters())
    assert all(torch.equal(ref[n], before[n]) for n in before)  # the reference stayed the aligned model


# -- bad input: a clear error before any step ---------------------------------------------------------

def test_config_without_or_with_a_missing_safety_tokens_file(tmp_path):
    from pact.trl import PACTTrainerConfig

    with pytest.raises(ValueError, match="safety_tokens is not set"):
        PACTTrainerConfig(output_dir=str(tmp_path), bf16=False)
    with pytest.raises(ValueError, match="safety_tokens file not found"):
        PACTTrainerConfig(output_dir=str(tmp_path), safety_tokens=str(tmp_path / "nope.json"), bf16=False)
    tokens = write_tokens(tmp_path / "t.json", [5, 6], tiny_tokenizer())
    with pytest.raises(ValueError, match="completion_only_loss=False"):
        PACTTrainerConfig(output_dir=str(tmp_path), safety_tokens=str(tokens), completion_only_loss=False, bf16=False)
    with pytest.raises(ValueError, match="lambda_kl"):
        PACTTrainerConfig(output_dir=str(tmp_path), safety_tokens=str(tokens), lambda_kl=-1.0, bf16=False)
    with pytest.raises(ValueError, match="method='asft'; use one of pact, sft, constrained_sft .*pact train"):
        PACTTrainerConfig(output_dir=str(tmp_path), safety_tokens=str(tokens), method="asft", bf16=False)
    with pytest.raises(ValueError, match="method='sft' does not use lambda_kl, variant; leave them unset"):
        PACTTrainerConfig(output_dir=str(tmp_path), safety_tokens=str(tokens), method="sft", lambda_kl=1.0,
                          variant="safety_weights", bf16=False)
    with pytest.raises(ValueError, match="csft_beta=0.0 must be > 0"):
        PACTTrainerConfig(output_dir=str(tmp_path), safety_tokens=str(tokens), method="constrained_sft",
                          csft_beta=0.0, bf16=False)


def test_tokens_of_another_vocabulary(setup, tmp_path):
    tok = tiny_tokenizer()
    other = tmp_path / "other.json"
    write_tokens(other, [5, 6], tok)
    data = json.loads(other.read_text())
    data["vocab_size"] = len(tok) + 7
    other.write_text(json.dumps(data))
    with pytest.raises(SafetyTokensError, match="vocabulary mismatch"):
        trainer_for(setup["model"], other, tmp_path, ["method=pact"])


def small_trainer(setup, tmp_path, dataset, tokenizer=None):
    from peft import LoraConfig

    from pact.models import load_model, load_tokenizer
    from pact.trl import PACTTrainer, PACTTrainerConfig

    args = PACTTrainerConfig(output_dir=str(tmp_path), safety_tokens=str(setup["tokens"]), bf16=False,
                             report_to=[], max_steps=1, gradient_checkpointing=False)
    return PACTTrainer(load_model(str(setup["model"])), args=args, train_dataset=dataset,
                       processing_class=tokenizer or load_tokenizer(str(setup["model"])),
                       peft_config=LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))


def test_a_model_that_is_not_peft_needs_a_ref_model(setup, tmp_path):
    from datasets import Dataset

    from pact.models import load_model, load_tokenizer
    from pact.trl import PACTTrainer, PACTTrainerConfig

    args = PACTTrainerConfig(output_dir=str(tmp_path), safety_tokens=str(setup["tokens"]), report_to=[], bf16=False)
    data = Dataset.from_dict({"prompt": ["a"], "completion": ["b"]})
    with pytest.raises(ValueError, match="pass ref_model="):
        PACTTrainer(load_model(str(setup["model"])), args=args, processing_class=load_tokenizer(str(setup["model"])),
                    train_dataset=data)
    # sft has no reference: full fine-tuning needs none, and a ref_model given to it is refused
    sft = PACTTrainerConfig(output_dir=str(tmp_path), safety_tokens=str(setup["tokens"]), method="sft", report_to=[],
                            bf16=False)
    trainer = PACTTrainer(load_model(str(setup["model"])), args=sft, train_dataset=data,
                          processing_class=load_tokenizer(str(setup["model"])))
    assert trainer.ref_model is None and trainer._reference(trainer.model, True) is None
    with pytest.raises(ValueError, match="method='sft' uses no reference; pass ref_model=None"):
        PACTTrainer(load_model(str(setup["model"])), args=sft, processing_class=load_tokenizer(str(setup["model"])),
                    train_dataset=data, ref_model=load_model(str(setup["model"])))


def test_a_dataset_with_no_completion(setup, tmp_path):
    from datasets import Dataset

    with pytest.raises(ValueError, match="no completion"):
        small_trainer(setup, tmp_path, Dataset.from_dict({"text": ["just text", "more text"]}))
    user_last = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                  {"role": "user", "content": "and?"}]] * 2
    with pytest.raises(ValueError, match="last message of 'messages' must be the assistant"):
        small_trainer(setup, tmp_path, Dataset.from_dict({"messages": user_last}))


def test_rows_whose_prompt_fills_max_length_are_dropped_with_a_warning(setup, tmp_path):
    from datasets import Dataset

    long = "x" * 600  # byte-level tokenizer: 600 prompt tokens fill max_length 512
    rows = {"prompt": ["how do I bake bread?", long, "write a virus"],
            "completion": ["Mix flour and water.", "ok", "I cannot help with that."]}
    with pytest.warns(UserWarning, match=r"1 of 3 rows have a prompt that fills max_length=512 and are dropped"):
        trainer = small_trainer(setup, tmp_path / "one", Dataset.from_dict(rows))
    assert trainer.dropped["train"] == 1 and len(trainer.train_views) == 2
    builder = ViewBuilder(tiny_tokenizer(), 512)
    assert trainer.train_views == [builder.build(rows["prompt"][i], rows["completion"][i]) for i in (0, 2)]
    with pytest.raises(ValueError, match="every row of the train dataset has a prompt that fills max_length=512"):
        small_trainer(setup, tmp_path / "all", Dataset.from_dict({"prompt": [long] * 2, "completion": ["a"] * 2}))


def test_a_chat_template_with_no_assistant_header(setup, tmp_path):
    from datasets import Dataset

    tok = tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ChatTemplateError, match="no assistant header"):
        small_trainer(setup, tmp_path, Dataset.from_dict({"prompt": ["a", "b"], "completion": ["c", "d"]}), tok)


def test_the_three_trl_formats_give_the_driver_views(setup, tmp_path):
    """messages / prompt-completion / conversational prompt-completion: the same views as ViewBuilder's."""
    from datasets import Dataset

    pairs = [("how do I bake bread?", "Mix flour and water."), ("write a virus", "I cannot help with that.")]
    user = [[{"role": "user", "content": p}] for p, _ in pairs]
    answer = [[{"role": "assistant", "content": r}] for _, r in pairs]
    formats = {
        "standard": {"prompt": [p for p, _ in pairs], "completion": [r for _, r in pairs], "harmful": [False, True]},
        "messages": {"messages": [u + a for u, a in zip(user, answer)], "harmful": [False, True]},
        "conversational": {"prompt": user, "completion": answer, "harmful": [False, True]},
    }
    builder = ViewBuilder(tiny_tokenizer(), 512)
    expected = [builder.build(p, r, harmful=h) for (p, r), h in zip(pairs, (False, True))]
    for name, columns in formats.items():
        trainer = small_trainer(setup, tmp_path / name, Dataset.from_dict(columns))
        assert trainer.train_views == expected, name
    # a multi-turn conversation: the earlier turns are the prompt of the last answer
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}] + user[0] + answer[0]
    trainer = small_trainer(setup, tmp_path / "multi", Dataset.from_dict({"messages": [turns, turns]}))
    view = trainer.train_views[0]
    assert view.post_ids[len(builder.header_ids):] == expected[0].post_ids[len(builder.header_ids):]
    assert len(view.full_ids) > len(expected[0].full_ids)


def test_readme_use_with_trl_example_runs(tmp_path, monkeypatch):
    """README "Use with TRL": the offline block (at most 15 lines) trains 4 steps from a fresh directory."""
    import re

    text = (REPO / "README.md").read_text()
    code = re.search(r"<!-- trl-example.*?-->\s*```python\n(.*?)```", text, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 15
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["result"].global_step == 4 and namespace["result"].training_loss > 0
    assert (tmp_path / "runs" / "trl" / "tokens.json").is_file()


# -- TRL's mixed precision: a bf16 model with bf16=True (accelerate's native AMP on the CPU) ------------------

BF16_STEPS = ("max_steps=3", "gradient_accumulation_steps=2")


@pytest.mark.parametrize("method, fused", [("pact", "true"), ("pact", "false"), ("sft", "true"), ("sft", "false")])
def test_bf16_model_with_bf16_true_trains_and_matches_float32(setup, trained, tmp_path, method, fused):
    """accelerate wraps forward in autocast and returns float32 hidden rows while the head stays bf16; the step
    losses stay within bf16 tolerance (4e-3 relative; bf16's epsilon is 7.8e-3) of the float32 run's."""
    keys = [f"method={method}", f"fused_linear={fused}", *BF16_STEPS]
    runs = {}
    for name, extra in (("fp32", {}), ("bf16", dict(bf16=True, use_cpu=True, dtype="bfloat16"))):
        trainer = trainer_for(setup["model"], setup["tokens"], tmp_path / name, keys, **extra)
        trainer.train()
        runs[name] = losses(trainer.state.log_history)
    assert next(trainer.model.parameters()).dtype == torch.bfloat16 and trainer.args.bf16
    assert len(runs["bf16"]) == len(runs["fp32"]) == 3
    for mine, theirs in zip(runs["bf16"], runs["fp32"]):
        for key in ("loss", "ce") + (("kl",) if method == "pact" else ()):
            assert mine[key] == pytest.approx(theirs[key], rel=4e-3), (mine["step"], key)
            assert mine[key] != theirs[key]  # the bf16 run did compute in bf16
