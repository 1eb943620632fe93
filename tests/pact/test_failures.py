"""Bad input and damaged files give a sentence before any work, never a silent wrong result.

In-process and cheap: config validation, run-directory checks, the mixture's harmful share, content
fingerprints, adapters of another base, truncated caches and logs, CLI sentences, and the kernels'
one policy for non-finite inputs.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pact.cli import main as cli_main
from pact.training.config import ConfigError, TrainConfig, load_config

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


def cfg_of(*overrides: str, check_files: bool = False) -> TrainConfig:
    return load_config(TINY, list(overrides), check_files=check_files)


# ---------------------------------------------------------------- (a) one validation of every value
@pytest.mark.parametrize("override, message", [
    ("lora_r=2.5", "lora_r=2.5 must be a whole number"),
    ("micro_batch_size=1.5", "micro_batch_size=1.5 must be a whole number"),
    ("max_steps=0", "max_steps=0 must be >= 1 (or null: the whole schedule)"),
    ("max_steps=-5", "max_steps=-5 must be >= 1"),
    ("save_every=-1", "save_every=-1 must be >= 0 (0: only at the end)"),
    ("max_grad_norm=-1", "max_grad_norm=-1 must be >= 0 (0: no clipping)"),
    ("warmup_steps=-3", "warmup_steps=-3 must be >= 0"),
    ("lora_alpha=0", "lora_alpha=0 must be > 0"),
    ("lora_dropout=1", "lora_dropout=1 must be >= 0 and < 1"),
    ("adam_betas=[0.9,1.5]", "adam_betas=[0.9, 1.5] must be two values in [0, 1)"),
    ("adam_betas=[0.9]", "must be two values in [0, 1)"),
    ("learning_rate=abc", "learning_rate='abc' is not a number"),
    ("lora=yes please", "lora='yes please' must be true or false"),
    ("task_fields=question", "task_fields='question': write it as name=column,name=column"),
    ("seed=-1", "seed=-1 must be >= 0"),
    ("epochs=null", "epochs cannot be null"),
    ("lora_target_modules=[1,2]", "must be a list of names"),
])
def test_every_bad_value_is_refused_with_its_key(override, message):
    with pytest.raises(ConfigError) as e:
        cfg_of(override)
    assert message in str(e.value)


@pytest.mark.parametrize("override", ["max_grad_norm=nan", "lora_dropout=.nan", "weight_decay=inf",
                                      "learning_rate=-.inf", "loss.lambda_kl=nan", "adam_betas=[0.9,nan]",
                                      "csft_beta=inf", "harmful_fraction=nan"])
def test_non_finite_floats_are_refused_naming_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as e:
        cfg_of(override)
    assert f"{key}=" in str(e.value) and "is not a finite number" in str(e.value)


@pytest.mark.parametrize("overrides, named", [
    (["method=sft", "loss.lambda_kl=5"], "loss.lambda_kl=5 (read by the PACT methods)"),
    (["method=sft", "preset=authors"], "preset='authors' (read by the PACT methods)"),
    (["method=pact", "csft_beta=0.3"], "csft_beta=0.3 (read by method=constrained_sft)"),
    (["method=constrained_sft", "asft_lambda=2"], "asft_lambda=2 (read by method=asft)"),
    (["method=sft", "safe_lora_num_layers=3"], "safe_lora_num_layers=3 (read by method=safe_lora)"),
])
def test_a_key_the_method_does_not_read_is_refused(overrides, named):
    with pytest.raises(ConfigError) as e:
        cfg_of(*overrides, "safety_tokens=null" if "method=sft" in overrides else "method=pact")
    assert f"does not use {named}" in str(e.value) and "change nothing" in str(e.value)
    assert cfg_of("method=sft", "preset=paper", "loss={}", "csft_beta=0.1").method == "sft"  # defaults restated


def test_a_key_given_twice_in_yaml_is_refused_naming_both_lines(tmp_path):
    bad = tmp_path / "dup.yaml"
    bad.write_text("model: runs/x\nlearning_rate: 1.0e-3\nlora_r: 8\nlearning_rate: 3.0e-5\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(bad))
    assert f"{bad}: key 'learning_rate' appears twice (line 2 and line 4)" in str(e.value)
    nested = tmp_path / "nested.yaml"
    nested.write_text("model: runs/x\nloss:\n  lambda_kl: 1\n  lambda_kl: 3\n")
    with pytest.raises(ConfigError, match="key 'lambda_kl' appears twice"):
        load_config(str(nested))
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2}, "zero_optimization": {"stage": 3}}')
    with pytest.raises(ConfigError, match=f"deepspeed={ds}: key 'zero_optimization' appears twice"):
        cfg_of(f"deepspeed={ds}", "model=gpt2", "method=sft", "safety_tokens=null", check_files=True)


@pytest.mark.parametrize("n, p, message", [
    (40, 0.01, "gives 0 harmful and 40 task samples: n·p = 0.4 rounds the harmful samples away; raise "
               "num_samples to at least 51"),
    (10, 0.97, "gives 10 harmful and 0 task samples"),
])
def test_a_share_rounded_to_nothing_is_refused(n, p, message):
    with pytest.raises(ConfigError) as e:
        cfg_of(f"num_samples={n}", f"harmful_fraction={p}")
    assert message in str(e.value)


def test_a_rounded_share_prints_the_exact_counts():
    from pact.data.tasks import Sample
    from pact.data.views import ViewBuilder
    from pact.tiny import tiny_tokenizer
    from pact.training.config import describe_harmful_counts
    from pact.training.data import load_views

    assert describe_harmful_counts(25, 0.1) == "2 harmful and 23 task samples (p = 2/25 = 0.08, harmful_fraction=0.1 rounded)"
    assert describe_harmful_counts(40, 0.1) == "4 harmful and 36 task samples (p = 0.1)"
    cfg = cfg_of("num_samples=25")
    views, record, notes = load_views(cfg, ViewBuilder(tiny_tokenizer(), cfg.max_length, cfg.post_bos))
    assert sum(v.harmful for v in views) == record["num_harmful"] == 2
    assert notes[0] == ("num_samples=25 with harmful_fraction=0.1: training on 2 harmful and 23 task samples "
                        "(p = 2/25 = 0.08, harmful_fraction=0.1 rounded)")
    assert not any("as configured" in n for n in notes)


def test_values_the_readme_and_messages_suggest_are_accepted():
    cfg = cfg_of("adam_betas=[0.5,0.999]", "lora_target_modules=q_proj", "task_fields=question=q,answer=a",
                 "lora_r=4.0", "max_steps=null", "learning_rate=2e-4")
    assert cfg.adam_betas == [0.5, 0.999]
    assert cfg.lora_target_modules == ["q_proj"]  # one name, not split into characters
    assert cfg.task_fields == {"question": "q", "answer": "a"}
    assert cfg.lora_r == 4 and isinstance(cfg.lora_r, int) and cfg.max_steps is None
    assert cfg.learning_rate == 2e-4
    assert cfg_of("lora_target_modules=q_proj,v_proj").lora_target_modules == ["q_proj", "v_proj"]


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: runs/x\nlora_r: 8\n  lora_alpha: [16\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(bad))
    assert str(bad) in str(e.value) and "line 3" in str(e.value) and "not valid YAML" in str(e.value)


def test_malformed_deepspeed_json_names_the_file(tmp_path):
    ds = tmp_path / "zero.json"
    ds.write_text('{"zero_optimization": {"stage": 2,}}')
    with pytest.raises(ConfigError) as e:
        cfg_of(f"deepspeed={ds}", "model=gpt2", "method=sft", "safety_tokens=null", check_files=True)
    assert f"deepspeed={ds} is not valid JSON" in str(e.value)


def test_a_missing_local_model_path_is_a_sentence_without_a_hub_wait(tmp_path):
    with pytest.raises(ConfigError) as e:
        cfg_of(f"model={tmp_path / 'no-such-model'}", "method=sft", "safety_tokens=null", check_files=True)
    assert f"model path {tmp_path / 'no-such-model'} does not exist" in str(e.value)


# ---------------------------------------------------------------- (b) the run directory
def test_output_dir_that_is_or_lies_under_a_file_is_refused(tmp_path):
    from pact.training.run_dir import check_run_dir

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file; choose a directory path"):
        check_run_dir(cfg_of(f"output_dir={afile}"))
    with pytest.raises(ConfigError, match=f"is under {afile}, which is a file"):
        check_run_dir(cfg_of(f"output_dir={afile / 'run'}"))


def test_resume_changes_are_named_and_overwrite_is_explicit(tmp_path):
    from pact.training.run_dir import check_run_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps(cfg_of(f"output_dir={out}").to_dict()))
    with pytest.raises(ConfigError, match="holds a run"):
        check_run_dir(cfg_of(f"output_dir={out}"))
    assert check_run_dir(cfg_of(f"output_dir={out}", "overwrite=true")) == {}
    assert check_run_dir(cfg_of(f"output_dir={out}", "resume=true", "stop_after_steps=3")) == {}
    with pytest.raises(ConfigError) as e:
        check_run_dir(cfg_of(f"output_dir={out}", "resume=true", "method=sft", "harmful_fraction=0.2"))
    assert "method: 'pact' -> 'sft'" in str(e.value) and "harmful_fraction: 0.1 -> 0.2" in str(e.value)
    changes = check_run_dir(cfg_of(f"output_dir={out}", "resume=true", "method=sft", "resume_changes=true"))
    assert changes == {"method": ("pact", "sft")}


def test_a_run_json_without_loss_normalization_was_averaged_per_micro_batch(tmp_path):
    """A run recorded before loss_normalization existed averaged micro-batch means: resuming it under the default
    (tokens) is a change, named; resuming with micro_batch is not."""
    from pact.training.run_dir import check_run_dir

    out = tmp_path / "run"
    out.mkdir()
    record = cfg_of(f"output_dir={out}").to_dict()
    del record["loss_normalization"]
    (out / "run.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="loss_normalization: 'micro_batch' -> 'tokens'"):
        check_run_dir(cfg_of(f"output_dir={out}", "resume=true"))
    assert check_run_dir(cfg_of(f"output_dir={out}", "resume=true", "loss_normalization=micro_batch")) == {}


def test_overwrite_deletes_only_the_run(tmp_path):
    from pact.training.run_dir import clear_run, existing_run

    for name in ("checkpoints/step-000002", "final", "tensorboard"):
        (tmp_path / name).mkdir(parents=True)
    for name in ("run.json", "train_log.jsonl", "mixture.json", "samples-rank0.jsonl", "notes.txt"):
        (tmp_path / name).write_text("{}")
    assert existing_run(str(tmp_path)) == ["run.json", "train_log.jsonl", "checkpoints", "final", "mixture.json"]
    clear_run(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and existing_run(str(tmp_path)) == []


# ---------------------------------------------------------------- (d) the log survives a torn last line
def test_train_log_survives_a_torn_last_line_and_names_a_damaged_one(tmp_path):
    from pact.training.metrics import TrainLogger

    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    TrainLogger(tmp_path, True, resume_step=2).close()
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.0}\n')
    with pytest.raises(ConfigError, match="train_log.jsonl is damaged"):
        TrainLogger(tmp_path, True, resume_step=2)


# ---------------------------------------------------------------- (e) the harmful share is what was asked
def test_shipped_tiny_config_keeps_n_and_p_by_drawing_more():
    """configs/tiny.yaml: 19 of the 40 drawn samples have a prompt over max_length=256 tokens."""
    from pact.data.views import ViewBuilder
    from pact.tiny import tiny_tokenizer
    from pact.training.data import load_views

    cfg = cfg_of()
    views, record, notes = load_views(cfg, ViewBuilder(tiny_tokenizer(), cfg.max_length, cfg.post_bos))
    assert len(views) == 40 and sum(v.harmful for v in views) == 4  # p = 0.1 as configured
    assert len(record["replaced"]) == 19 and all(k.startswith("task:") for k in record["replaced"])
    assert "19 of 40 drawn samples have a prompt that fills max_length=256" in notes[0]
    assert len(set(record["order"])) == 40 and set(record["replaced"].values()) <= set(record["order"])


def test_a_share_that_cannot_be_kept_is_refused():
    from pact.data.tasks import Sample
    from pact.data.views import ViewBuilder
    from pact.tiny import tiny_tokenizer
    from pact.training.data import build_mixture, tokenize_mixture

    task = [Sample("q" * (300 if i < 8 else 5), "a", source="t") for i in range(10)]
    harmful = [Sample("h", "sure", harmful=True, source="h") for _ in range(10)]
    builder = ViewBuilder(tiny_tokenizer(), 256)
    samples, record = build_mixture(task, harmful, 8, 0.5, 0)
    with pytest.raises(ConfigError) as e:
        tokenize_mixture(samples, builder, record, task, harmful)
    assert "only 2 of the 4 task samples the mixture needs" in str(e.value)
    assert "dropping them would change the harmful share" in str(e.value)


# ---------------------------------------------------------------- (f) content fingerprints and adapters
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from pact.tiny import save_tiny

    root = tmp_path_factory.mktemp("fp")
    return {"a": save_tiny(root / "a", seed=0), "b": save_tiny(root / "b", seed=1),
            "wide": save_tiny(root / "wide", seed=0, hidden=48), "root": root}


def test_weights_digest_follows_the_content_not_the_path(models, tmp_path):
    import shutil

    from pact.fingerprint import weights_digest

    where = tmp_path / "model"
    shutil.copytree(models["a"], where)
    before = weights_digest(str(where))
    assert before == weights_digest(str(models["a"]))  # same weights elsewhere: same digest
    shutil.rmtree(where)
    shutil.copytree(models["b"], where)  # other weights at the same path
    assert weights_digest(str(where)) != before


def test_a_truncated_reference_cache_file_is_named():
    import tempfile

    from pact.reference import ReferenceCache

    with tempfile.TemporaryDirectory() as d:
        cache = ReferenceCache(d, [3, 2], 4, "f" * 64)
        cache.create()
        cache.finish({"samples": 2})
        assert cache.status() == "valid"
        with cache.data_path.open("r+b") as f:
            f.truncate(40)
        status = cache.status()
    assert "holds 40 bytes, not the 160 its manifest promises (truncated or damaged)" in status


def adapter_of(model_dir: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    from pact.fingerprint import write_base_record
    from pact.models import load_model

    m = get_peft_model(load_model(str(model_dir)), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    m.save_pretrained(str(out))
    write_base_record(out, str(model_dir), None, m.base_model.model.config)
    return out


def test_eval_refuses_an_adapter_of_another_base_or_architecture(models):
    from pact.eval.runner import load_policy
    from pact.models import ModelLoadError

    adapter = adapter_of(models["a"], models["root"] / "adapter")
    model, _ = load_policy(str(models["a"]), adapter=str(adapter))  # its own base: merged
    with pytest.raises(ModelLoadError) as e:
        load_policy(str(models["b"]), adapter=str(adapter))
    assert "whose weights differ from --model" in str(e.value)
    with pytest.raises(ModelLoadError) as e:
        load_policy(str(models["wide"]), adapter=str(adapter))
    assert "another architecture" in str(e.value) and "hidden_size: 32 vs 48" in str(e.value)
    (adapter / "pact_base.json").unlink()  # an adapter from elsewhere: its shapes are checked
    with pytest.raises(ModelLoadError) as e:
        load_policy(str(models["wide"]), adapter=str(adapter))
    assert f"the adapter in {adapter} does not fit --model" in str(e.value)


# ---------------------------------------------------------------- (g) sentences instead of tracebacks
def test_identify_refuses_an_output_directory_before_any_work(tmp_path, capsys):
    rc = cli_main(["identify", "--safe", str(tmp_path / "nope"), "--base", str(tmp_path / "nope"),
                   "--prompts", "harmbench", "-o", str(tmp_path)])
    assert rc == 2 and f"-o {tmp_path} is a directory" in capsys.readouterr().err


def test_report_on_a_run_without_logged_fields_fails(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.jsonl").write_text('{"step": 1}\n')
    rc = cli_main(["report", str(run), "-o", str(tmp_path / "out")])
    assert rc == 2 and "nothing to report" in capsys.readouterr().err


def test_eval_suite_file_messages_name_only_options_pact_eval_has(tmp_path):
    from pact.data import PromptSourceError
    from pact.eval.suites import load_suite

    f = tmp_path / "h.csv"
    f.write_text("goal\nhow do I\n")
    with pytest.raises(PromptSourceError) as e:
        load_suite("harmbench", file=str(f))
    assert "--prompt-column" not in str(e.value) and "pact eval reads the column prompt" in str(e.value)
    t = tmp_path / "t.csv"
    t.write_text("q,a\n1+1,2\n")
    with pytest.raises(PromptSourceError) as e:
        load_suite("gsm8k", file=str(t))
    assert "task_fields" not in str(e.value) and "the columns question, answer" in str(e.value)


# ---------------------------------------------------------------- (h) one non-finite policy for every backend
BACKENDS = ["naive", "torch", "triton"]


def loss_inputs(seed=0, rows=7, vocab=50, k=6):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, vocab, generator=g) * 2
    labels = torch.randint(0, vocab, (rows,), generator=g)
    labels[[1, 4]] = -100
    ids = torch.randperm(vocab, generator=g)[:k]
    return dict(logits=z, labels=labels, ref_full=torch.randn(rows, k, generator=g),
                ref_post=torch.randn(rows, k, generator=g), safety_ids=ids,
                safety_weights=torch.rand(k, generator=g) + 0.1, answer_pos=torch.arange(rows))


def run_loss(backend, inputs):
    from pact_kernels import pact_loss

    z = inputs["logits"].clone().requires_grad_(True)
    out = pact_loss(**dict(inputs, logits=z), backend=backend)
    if torch.isfinite(out.loss):
        out.loss.backward()
    return out, z.grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_values_in_unlabelled_rows_change_nothing(backend):
    clean = loss_inputs()
    dirty = {k: v.clone() for k, v in clean.items()}
    dirty["logits"][1, 3] = float("nan")
    dirty["logits"][4, 0] = float("inf")
    dirty["ref_full"][1] = float("nan")
    dirty["ref_post"][4, 2] = float("-inf")
    out_c, grad_c = run_loss(backend, clean)
    out_d, grad_d = run_loss(backend, dirty)
    assert torch.isfinite(out_d.loss) and out_d.loss.item() == out_c.loss.item()
    assert torch.equal(grad_d, grad_c) and (grad_d[[1, 4]] == 0).all() and grad_d.abs().sum() > 0
    oracle, _ = run_loss("naive", {k: v.double() if v.is_floating_point() else v for k, v in clean.items()})
    assert out_d.loss.item() == pytest.approx(oracle.loss.item(), rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_values_in_labelled_rows_are_nan_never_inf(backend):
    inputs = loss_inputs(seed=1)
    safety_col = int(inputs["safety_ids"][0])
    other_col = next(c for c in range(50) if c not in inputs["safety_ids"].tolist())
    inputs["logits"][0, other_col] = float("inf")  # +inf off S: CE NaN, KL finite
    inputs["logits"][2, safety_col] = float("inf")  # +inf on S: CE and KL NaN
    inputs["logits"][3, other_col] = float("nan")  # NaN off S: CE NaN, KL finite
    inputs["ref_full"][5, 1] = float("nan")  # the reference: KL NaN, CE finite
    out, _ = run_loss(backend, inputs)
    assert torch.isnan(out.loss) and torch.isnan(out.ce) and torch.isnan(out.kl)
    ce_nan, kl_nan = torch.isnan(out.ce_rows).tolist(), torch.isnan(out.kl_rows).tolist()
    assert ce_nan == [True, False, True, True, False, False, False]
    assert kl_nan == [False, False, True, False, False, True, False]
    assert torch.isfinite(out.ce_rows[[1, 4, 5, 6]]).all() and torch.isfinite(out.kl_rows[[0, 1, 3, 4, 6]]).all()
