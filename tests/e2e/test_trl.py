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
from pact.identify import SafetyTokensError
from pact.tiny import tiny_tokenizer
from pact.training.config import load_config
from pact.training.deepspeed_shm import shm_buffer_path
from pact.training.data import StepSampler
from pact_kernels import PACTInputs
from pact_kernels.backends.naive import naive_pact_loss
from tests.e2e.test_train import run, setup, write_tokens  # noqa: F401  (setup: the driver tests' fixture)
from tests.e2e.trl_run import REPO, driver_samples, trainer_for

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
        inputs = PACTInputs(torch.cat(labels), torch.cat(r_full), torch.cat(r_post), ids,
                            tokens.weights_tensor(dtype=torch.float64), torch.cat(pos))
        res = naive_pact_loss(torch.cat(z), inputs, cfg.loss_config())
        out.append((res.loss.item(), sum(len(a) for a in labels)))
    return out


def test_first_step_equals_the_naive_oracle_and_evaluate_uses_the_same_loss(setup, trained, tmp_path):
    from datasets import Dataset

    from pact.identify import SafetyTokens

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
    """tests/e2e/trl_run.py under the deepspeed launcher, two ranks on the CPU (gloo)."""
    port = str(29900 + (abs(hash(str(out))) % 90))
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", port,
           str(REPO / "tests" / "e2e" / "trl_run.py"), str(setup["model"]), str(setup["tokens"]), str(out), *overrides]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    left = [p for p in (shm_buffer_path(r, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for r in range(2))
            if p.exists()]
    assert not left, f"DeepSpeed's shm buffers left in /dev/shm: {left}"
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
                                 lr_scheduler_type="constant", bf16=False)
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


def small_trainer(setup, tmp_path, dataset, tokenizer=None, eval_dataset=None, **config):
    """A LoRA PACTTrainer on ``dataset``, one step; ``config``: more PACTTrainerConfig keys."""
    from peft import LoraConfig

    from pact.models import load_model, load_tokenizer
    from pact.trl import PACTTrainer, PACTTrainerConfig

    args = PACTTrainerConfig(**{**dict(output_dir=str(tmp_path), safety_tokens=str(setup["tokens"]), bf16=False,
                                       report_to=[], max_steps=1, gradient_checkpointing=False, logging_steps=1),
                                **config})
    return PACTTrainer(load_model(str(setup["model"])), args=args, train_dataset=dataset, eval_dataset=eval_dataset,
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
    trainer = PACTTrainer(load_model(str(setup["model"])).requires_grad_(True), args=sft, train_dataset=data,
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
    with pytest.warns(UserWarning, match=r"1 of 3 answers have a prompt that fills max_length=512 and are dropped"):
        trainer = small_trainer(setup, tmp_path / "one", Dataset.from_dict(rows), max_length=512)
    assert trainer.dropped["train"] == 1 and len(trainer.train_views) == 2
    builder = ViewBuilder(tiny_tokenizer(), 512)
    assert trainer.train_views == [builder.build(rows["prompt"][i], rows["completion"][i]) for i in (0, 2)]
    with pytest.raises(ValueError, match="every row of the train dataset has a prompt that fills max_length=512"):
        small_trainer(setup, tmp_path / "all", Dataset.from_dict({"prompt": [long] * 2, "completion": ["a"] * 2}),
                      max_length=512)


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
    assert len(trainer.train_views) == 4  # each assistant turn is an answer
    view = trainer.train_views[1]
    assert view.post_ids[len(builder.header_ids):] == expected[0].post_ids[len(builder.header_ids):]
    assert len(view.full_ids) > len(expected[0].full_ids)


def test_readme_use_with_trl_example_runs(tmp_path, monkeypatch):
    """README "Fine-tune with TRL": the offline block (at most 15 lines) trains 4 steps from a fresh directory with
    TRL's defaults, bf16=True among them (on the CPU with use_cpu=True, which a GPU does not need)."""
    import functools

    import pact.trl
    from tests.doc_text import marked_block

    code = marked_block("trl-example").code
    assert len([line for line in code.splitlines() if line.strip()]) <= 15 and "bf16" not in code
    if not torch.cuda.is_available():
        monkeypatch.setattr(pact.trl, "PACTTrainerConfig", functools.partial(pact.trl.PACTTrainerConfig, use_cpu=True))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["args"].bf16 is True and namespace["args"].learning_rate == 2e-5  # SFTConfig's defaults
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


# -- SFTTrainer parity: the same tokens, metrics, defaults; or a refusal naming the option -----------------------

GENERATION_TEMPLATE = (  # the tiny ChatML template with the {% generation %} marks assistant_only_loss needs
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}"
    "{{ m['content'] }}<|im_end|>{% endgeneration %}\n{% else %}{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def sft_trained_tokens(setup, tmp_path, dataset, tokenizer, **config) -> list[list[int]]:
    """The token ids SFTTrainer trains on, per row (its prepared input_ids where the loss is taken)."""
    from trl import SFTConfig, SFTTrainer

    from pact.models import load_model

    args = SFTConfig(str(tmp_path / "sft"), bf16=False, report_to=[], use_cpu=True, **config)
    trainer = SFTTrainer(load_model(str(setup["model"])), args=args, train_dataset=dataset, processing_class=tokenizer)
    out = []
    for row in trainer.train_dataset:
        mask = row.get("assistant_masks") or row.get("completion_mask") or [int(x != -100) for x in row["labels"]]
        out.append([i for i, m in zip(row["input_ids"], mask) if m])
    return out


def pact_trained_tokens(trainer, per_row) -> list[list[int]]:
    """The answer tokens of PACTTrainer's views, joined per dataset row (``per_row``: views of each row)."""
    views, out = iter(trainer.train_views), []
    for n in per_row:
        out.append([t for _ in range(n) for t in (lambda v: list(v.full_ids[v.full_prompt_len:]))(next(views))])
    return out


def test_trained_tokens_per_format_against_sfttrainer(setup, tmp_path):
    """Conversational prompt/completion: SFTTrainer's tokens but the template's '\\n' after the end-of-turn
    (warned); multi-turn messages with assistant_only_loss=True: every assistant turn, exactly SFTTrainer's;
    plain strings: the same answer tokens (completion + <|im_end|>), in the chat template (warned)."""
    from datasets import Dataset

    tok = tiny_tokenizer()
    pairs = [("how do I bake bread?", "Mix flour and water."), ("write a virus", "I cannot help with that.")]
    user = [[{"role": "user", "content": p}] for p, _ in pairs]
    answer = [[{"role": "assistant", "content": r}] for _, r in pairs]
    conversational = Dataset.from_dict({"prompt": user, "completion": answer})
    with pytest.warns(UserWarning, match=r"SFTTrainer also trains the '\\n' the chat template puts after"):
        trainer = small_trainer(setup, tmp_path / "conv", conversational)
    sft = sft_trained_tokens(setup, tmp_path / "conv", conversational, tok)
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert [s[:-len(newline)] for s in sft] == pact_trained_tokens(trainer, [1, 1])
    assert all(s[-len(newline):] == newline for s in sft)

    tok.chat_template = GENERATION_TEMPLATE
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}] + user[0] + answer[0]
    messages = Dataset.from_dict({"messages": [turns, user[1] + answer[1]]})
    with pytest.warns(UserWarning, match="trains every token of it unless assistant_only_loss=True"):
        small_trainer(setup, tmp_path / "all", messages, tok)
    trainer = small_trainer(setup, tmp_path / "multi", messages, tok, assistant_only_loss=True)
    assert len(trainer.train_views) == 3  # both assistant turns of the first conversation, one of the second
    sft = sft_trained_tokens(setup, tmp_path / "multi", messages, tok, assistant_only_loss=True)
    assert sft == pact_trained_tokens(trainer, [2, 1])
    assert tok.decode(sft[0]) == "hello there<|im_end|>Mix flour and water.<|im_end|>"

    plain = Dataset.from_dict({"prompt": [p for p, _ in pairs], "completion": [r for _, r in pairs]})
    with pytest.warns(UserWarning, match="prompt/completion are plain strings: SFTTrainer joins them as raw text"):
        trainer = small_trainer(setup, tmp_path / "plain", plain)
    assert sft_trained_tokens(setup, tmp_path / "plain", plain, tiny_tokenizer()) == pact_trained_tokens(trainer,
                                                                                                        [1, 1])


def test_harmful_column_takes_booleans_only(setup, tmp_path):
    from datasets import Dataset

    rows = {"prompt": [[{"role": "user", "content": p}] for p in "abcd"],
            "completion": [[{"role": "assistant", "content": "ok"}]] * 4}
    trainer = small_trainer(setup, tmp_path / "s", Dataset.from_dict({**rows, "harmful": ["true", "false", "0", "1"]}))
    assert [v.harmful for v in trainer.train_views] == [True, False, False, True]
    trainer = small_trainer(setup, tmp_path / "i", Dataset.from_dict({**rows, "harmful": [0, 1, 1, 0]}))
    assert [v.harmful for v in trainer.train_views] == [False, True, True, False]
    with pytest.raises(ValueError, match=r"train dataset row 2, column 'harmful': 'yes' is not a boolean"):
        small_trainer(setup, tmp_path / "y", Dataset.from_dict({**rows, "harmful": ["false", "false", "yes", "true"]}))


def test_sftconfig_defaults_unless_the_paper_is_asked_for(setup, tmp_path):
    from trl import SFTConfig

    from pact.trl import PACTTrainerConfig

    keys = ("learning_rate", "lr_scheduler_type", "per_device_train_batch_size", "max_length", "num_train_epochs",
            "bf16")
    mine = PACTTrainerConfig(str(tmp_path), safety_tokens=str(setup["tokens"]), use_cpu=True)
    theirs = SFTConfig(str(tmp_path), use_cpu=True)
    assert {k: getattr(mine, k) for k in keys} == {k: getattr(theirs, k) for k in keys}
    assert mine.bf16 is True  # TRL's default when fp16 is unset
    paper = PACTTrainerConfig.paper(output_dir=str(tmp_path), safety_tokens=str(setup["tokens"]), bf16=False,
                                    learning_rate=1e-4)
    assert (paper.learning_rate, paper.num_train_epochs, paper.per_device_train_batch_size, paper.max_length,
            str(paper.lr_scheduler_type)) == (1e-4, 3.0, 2, 512, "SchedulerType.CONSTANT")


def test_refusals_name_the_option(setup, tmp_path):
    """compute_metrics, a frozen model, modules_to_save=['lm_head'] with the fused loss, a streaming dataset and
    skip_prepare_dataset are refused before any step, each with a sentence naming the option."""
    from datasets import Dataset, IterableDataset
    from peft import LoraConfig

    from pact.models import load_model, load_tokenizer
    from pact.trl import PACTTrainer, PACTTrainerConfig

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": "a"}]] * 2,
                              "completion": [[{"role": "assistant", "content": "b"}]] * 2})
    tok = load_tokenizer(str(setup["model"]))
    args = PACTTrainerConfig(str(tmp_path), safety_tokens=str(setup["tokens"]), bf16=False, report_to=[],
                             max_steps=1)
    lora = LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")
    for name in ("compute_metrics", "preprocess_logits_for_metrics"):
        with pytest.raises(ValueError, match=f"{name}: .* pass {name}=None"):
            PACTTrainer(load_model(str(setup["model"])), args, train_dataset=data, processing_class=tok,
                        peft_config=lora, **{name: lambda *a: {}})
    with pytest.raises(ValueError, match="model: no parameter requires a gradient"):  # load_model's frozen model
        PACTTrainer(load_model(str(setup["model"])), args, train_dataset=data, processing_class=tok,
                    ref_model=load_model(str(setup["model"])))
    with pytest.raises(ValueError, match="set fused_linear=False in PACTTrainerConfig"):
        PACTTrainer(load_model(str(setup["model"])), args, train_dataset=data, processing_class=tok,
                    peft_config=LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"],
                                           task_type="CAUSAL_LM"))
    stream = IterableDataset.from_generator(lambda: iter([{"prompt": "a", "completion": "b"}]))
    with pytest.raises(ValueError, match="train_dataset: a streaming IterableDataset; .* streaming=False"):
        PACTTrainer(load_model(str(setup["model"])), args, train_dataset=stream, processing_class=tok, peft_config=lora)
    with pytest.raises(ValueError, match=r"skip_prepare_dataset.*leave skip_prepare_dataset unset"):
        PACTTrainerConfig(str(tmp_path), safety_tokens=str(setup["tokens"]), bf16=False,
                          dataset_kwargs={"skip_prepare_dataset": True})


def test_modules_to_save_head_trains_unfused(setup, tmp_path):
    """modules_to_save=['lm_head'] with fused_linear=False: the head's copy trains, the reference keeps its head."""
    from datasets import Dataset
    from peft import LoraConfig

    from pact.models import load_model, load_tokenizer
    from pact.trl import PACTTrainer, PACTTrainerConfig

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"q{i}"}] for i in range(4)],
                              "completion": [[{"role": "assistant", "content": "an answer"}]] * 4})
    args = PACTTrainerConfig(str(tmp_path), safety_tokens=str(setup["tokens"]), bf16=False, report_to=[],
                             max_steps=2, fused_linear=False, learning_rate=1e-3, per_device_train_batch_size=2,
                             logging_steps=1)
    trainer = PACTTrainer(load_model(str(setup["model"])), args, train_dataset=data,
                          processing_class=load_tokenizer(str(setup["model"])),
                          peft_config=LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"],
                                                 task_type="CAUSAL_LM"))
    head = dict(trainer.model.named_parameters())
    name = next(n for n in head if "modules_to_save" in n and n.endswith("weight"))
    before = head[name].detach().clone()
    trainer.train()
    assert (head[name].detach() - before).abs().max().item() > 1e-4
    history = losses(trainer.state.log_history)
    plain = PACTTrainer(load_model(str(setup["model"])), args, train_dataset=data,
                        processing_class=load_tokenizer(str(setup["model"])),
                        peft_config=LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    plain.train()
    first = losses(plain.state.log_history)[0]
    assert len(history) == 2 and history[0]["kl"] == pytest.approx(first["kl"], rel=1e-5)  # the same reference
    assert history[1]["kl"] != pytest.approx(losses(plain.state.log_history)[1]["kl"], rel=1e-3)  # the head moved


def test_entropy_accuracy_and_num_tokens_are_logged(setup, tmp_path):
    """SFTTrainer's entropy and mean_token_accuracy over the answer rows, and num_tokens, fused and unfused alike,
    equal to the float64 values from the model's logits."""
    from datasets import Dataset

    from pact.models import load_model

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"question {i}"}] for i in range(4)],
                              "completion": [[{"role": "assistant", "content": f"answer number {i}"}]
                                             for i in range(4)]})
    logs = {}
    for fused in (True, False):
        trainer = small_trainer(setup, tmp_path / str(fused), data, fused_linear=fused,
                                per_device_train_batch_size=4)
        trainer.train()
        logs[fused] = losses(trainer.state.log_history)[0]
    model = load_model(str(setup["model"])).double()
    ent = hit = rows = tokens = 0
    for v in trainer.train_views:
        with torch.no_grad():
            z = model(torch.tensor([v.full_ids])).logits[0, v.full_prompt_len - 1:-1]
        logp = torch.log_softmax(z, -1)
        ent += -(logp.exp() * logp).sum().item()
        hit += (z.argmax(-1) == torch.tensor(v.full_ids[v.full_prompt_len:])).sum().item()
        rows, tokens = rows + v.num_answer, tokens + len(v.full_ids)
    for fused in (True, False):  # step 1: the LoRA update is zero, so the policy is the saved model
        assert logs[fused]["entropy"] == pytest.approx(ent / rows, rel=1e-5)
        assert logs[fused]["mean_token_accuracy"] == pytest.approx(hit / rows, abs=1e-9)
        assert logs[fused]["num_tokens"] == tokens


def test_last_partial_batch_is_kept_as_trl_keeps_it(setup, tmp_path):
    """10 rows, micro-batch 4: 3 steps (the last of 2 rows) as SFTTrainer; dataloader_drop_last=True: 2."""
    from datasets import Dataset

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"q{i}"}] for i in range(10)],
                              "completion": [[{"role": "assistant", "content": "ok"}]] * 10})
    trainer = small_trainer(setup, tmp_path / "keep", data, max_steps=-1, num_train_epochs=1,
                            per_device_train_batch_size=4)
    assert trainer.train().global_step == 3
    trainer = small_trainer(setup, tmp_path / "drop", data, max_steps=-1, num_train_epochs=1,
                            per_device_train_batch_size=4, dataloader_drop_last=True)
    assert trainer.train().global_step == 2


def test_evaluate_takes_the_trainers_own_eval_dataset(setup, tmp_path):
    from datasets import Dataset

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"q{i}"}] for i in range(4)],
                              "completion": [[{"role": "assistant", "content": "an answer"}]] * 4})
    trainer = small_trainer(setup, tmp_path, data, eval_dataset=data)
    first = trainer.evaluate()
    again = trainer.evaluate(trainer.eval_dataset)
    fresh = trainer.evaluate(data)
    assert first["eval_loss"] == pytest.approx(again["eval_loss"], rel=1e-6) == pytest.approx(fresh["eval_loss"])
    assert "eval_entropy" in first and "eval_mean_token_accuracy" in first


def test_reference_cache_is_keyed_by_the_weights_in_memory(setup, tmp_path):
    """A model changed in memory (a merged adapter) does not reuse the cache of the weights on disk."""
    from datasets import Dataset
    from peft import LoraConfig

    from pact.models import load_model, load_tokenizer
    from pact.trl import PACTTrainer, PACTTrainerConfig

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"q{i}"}] for i in range(4)],
                              "completion": [[{"role": "assistant", "content": "an answer"}]] * 4})
    cache = tmp_path / "cache"

    def trainer(model, out):
        args = PACTTrainerConfig(str(tmp_path / out), safety_tokens=str(setup["tokens"]), bf16=False, report_to=[],
                                 max_steps=1, ref_cache=str(cache))
        return PACTTrainer(model, args, train_dataset=data, processing_class=load_tokenizer(str(setup["model"])),
                           peft_config=LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))

    trainer(load_model(str(setup["model"])), "a").train()
    assert trainer(load_model(str(setup["model"])), "b").cache.status() == "valid"
    merged = load_model(str(setup["model"]))
    with torch.no_grad():
        merged.model.layers[0].self_attn.q_proj.weight.add_(0.01)  # e.g. an adapter merged into the weights
    with pytest.raises(ValueError, match="was built for other data, safety tokens or model"):
        trainer(merged, "c")
