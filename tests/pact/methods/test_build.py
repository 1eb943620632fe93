"""Config checks of the baselines: bad values stop before any model is loaded, naming the key and the fix."""
from __future__ import annotations

import json

import pytest

from pact.methods import ASFT, PACT, SFT, ConstrainedSFT, SafeLoRA
from pact.methods import build_method
from pact.training.setup import check_base_model
from pact.training.config import METHOD_NAMES, ConfigError, load_config


def cfg(*overrides):
    return load_config(None, ["model=tiny", *overrides], check_files=False)


@pytest.mark.parametrize("overrides, message", [
    (["method=safe_lora"], "method=safe_lora needs base_model"),
    (["method=asft"], "method=asft needs base_model"),
    (["method=safe_lora", "base_model=b", "lora=false"], "set lora=true"),
    (["method=asft", "base_model=b", "lora=false"], "set lora=true"),
    (["method=asft", "base_model=b", "zero_stage=3"], "use ZeRO stage 0-2"),
    (["method=safe_lora", "base_model=b", "safe_lora_threshold=1.5"], "safe_lora_threshold=1.5 is a cosine"),
    (["method=safe_lora", "base_model=b", "safe_lora_select=top"], "safe_lora_select='top': use threshold or number"),
    (["method=safe_lora", "base_model=b", "safe_lora_num_layers=0"], "safe_lora_num_layers=0 must be >= 1"),
    (["method=asft", "base_model=b", "asft_lambda=-1"], "asft_lambda=-1 must be >= 0"),
    (["method=safe_lora", "base_model=b", "safe_lora_round=-1"], "safe_lora_round=-1 must be decimals"),
    (["method=safe_lora", "base_model=b", "safe_lora_round=2.5"], "safe_lora_round=2.5 must be a whole number"),
    (["method=safe_lora", "base_model=b", "safe_lora_ties=first"], "safe_lora_ties='first': use all"),
    (["method=safe_lora", "base_model=b", "alignment_dtype=int8"], "alignment_dtype='int8': use float32"),
    (["method=asft", "base_model=b", "asft_scale=per_token"], "asft_scale='per_token': use per_step"),
    (["method=constrained_sft", "csft_beta=0"], "csft_beta=0 must be > 0"),
    (["method=constrained_sft", "csft_bias_length=-1"], "csft_bias_length=-1 must be >= 0"),
    (["method=constrained_sft", "csft_min_weight=3"], "csft_min_weight=3 must be in [0, 2]"),
    (["method=constrained_sft", "ref_cache=/tmp/x"], "ref_cache holds K-token reference logits"),
    (["method=safe_lora", "base_model=b", "asft_lamda=1"], "did you mean 'asft_lambda'"),
])
def test_bad_baseline_config_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cfg(*overrides)


def test_asft_under_zero3_from_the_deepspeed_json(tmp_path):
    ds = tmp_path / "z3.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ConfigError, match="ZeRO-3"):
        cfg("method=asft", "base_model=b", f"deepspeed={ds}")
    assert cfg("method=asft", "base_model=b", f"deepspeed={ds}", "zero_stage=2").zero_stage_of_run() == 2


def test_every_method_name_builds_its_method_with_the_config_values():
    assert set(METHOD_NAMES) >= {"sft", "pact", "full_vocab", "full_vocab_kl", "safety_tokens", "safety_weights",
                            "response_only_ref", "constrained_sft", "safe_lora", "asft"}
    assert type(build_method(cfg("method=sft"), None)) is SFT
    csft = build_method(cfg("method=constrained_sft", "csft_beta=0.2", "csft_bias_length=3"), None)
    assert isinstance(csft, ConstrainedSFT) and (csft.beta, csft.bias_length, csft.bias_factor) == (0.2, 3, 20.0)
    safe = build_method(cfg("method=safe_lora", "base_model=b", "safe_lora_threshold=0.3"), None)
    assert isinstance(safe, SafeLoRA) and (safe.base_model, safe.threshold, safe.select) == ("b", 0.3, "number")
    # the authors' SafeLoRA defaults, and float32 alignment matrices whatever the training dtype
    assert (safe.num_layers, safe.round_decimals, safe.ties, safe.dtype) == (10, 5, "all", "float32")
    safe = build_method(cfg("method=safe_lora", "base_model=b", "dtype=bfloat16", "safe_lora_round=null",
                            "safe_lora_ties=name", "alignment_dtype=bfloat16"), None)
    assert (safe.round_decimals, safe.ties, safe.dtype) == (None, "name", "bfloat16")
    asft = build_method(cfg("method=asft", "base_model=b", "dtype=bfloat16"), None)
    assert isinstance(asft, ASFT) and asft.lambda_ == 1.0 and asft.dtype == "float32"
    assert (asft.scale, asft.weight) == ("per_step", 1.0)
    asft = build_method(cfg("method=asft", "base_model=b", "asft_lambda=0.5", "asft_scale=per_micro_batch",
                            "gradient_accumulation_steps=4"), None)
    assert (asft.scale, asft.gradient_accumulation_steps, asft.weight) == ("per_micro_batch", 4, 2.0)
    # the baselines need no safety tokens; the PACT rungs still do
    assert cfg("method=constrained_sft").safety_tokens is None
    with pytest.raises(ConfigError, match="needs safety_tokens"):
        cfg("method=full_vocab_kl")


def test_full_vocab_kl_is_the_full_vocab_rung(tmp_path):
    from pact.identify import SafetyTokens

    tokens = SafetyTokens(safe_model="a", base_model="b", vocab_size=10, k=2, selection="paper", ids=[3, 4],
                          strings=["x", "y"], weights=[1.0, 0.5], scores=[1.0, 0.5], mean_safe_prob=[0.1, 0.1],
                          prompts="p", num_prompts=1, num_steps=1)
    method = build_method(cfg("method=full_vocab_kl", "safety_tokens=t.json"), tokens)
    assert isinstance(method, PACT) and method.config.variant == "full_vocab" and method.full_vocab


def test_base_model_of_another_architecture_is_refused_from_the_configs(tmp_path):
    from pact.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    tiny_model(tok, hidden=32).config.save_pretrained(tmp_path / "aligned")
    tiny_model(tok, hidden=16).config.save_pretrained(tmp_path / "base")
    with pytest.raises(ConfigError, match="hidden_size: 32 vs 16"):
        check_base_model(cfg("method=asft", f"model={tmp_path / 'aligned'}", f"base_model={tmp_path / 'base'}"))
    with pytest.raises(ConfigError, match="cannot read the config of base_model"):
        check_base_model(cfg("method=safe_lora", f"model={tmp_path / 'aligned'}", f"base_model={tmp_path / 'nope'}"))
    check_base_model(cfg("method=safe_lora", f"model={tmp_path / 'aligned'}", f"base_model={tmp_path / 'aligned'}"))


def test_every_method_has_its_table_row_name():
    from pact.eval.report import METHOD_ORDER, method_name

    assert method_name("full_vocab_kl") == method_name("full_vocab") == "Full-vocab KL"
    assert all(method_name(m) in METHOD_ORDER for m in METHOD_NAMES)


REPO = __import__("pathlib").Path(__file__).resolve().parents[3]
PAPER = sorted((REPO / "configs" / "paper").glob("*.yaml"))


@pytest.mark.parametrize("recipe, expect", [
    ("constrained_sft", dict(method="constrained_sft", lora=False, lora_dropout=0.0, adam_betas=[0.5, 0.999],
                             warmup_steps=10, lr_scheduler="linear", loss_normalization="micro_batch")),
    ("asft", dict(method="asft", asft_scale="per_micro_batch", alignment_dtype="float32",
                  loss_normalization="micro_batch")),
    ("safe_lora", dict(method="safe_lora", safe_lora_select="number", safe_lora_num_layers=10, safe_lora_round=5,
                       safe_lora_ties="all", alignment_dtype="float32")),
])
def test_recipe_overlays_apply_onto_every_paper_config(recipe, expect, monkeypatch):
    """@FILE applies a recipe's keys after the config and before later overrides; the rest stays the paper's."""
    monkeypatch.chdir(REPO)
    assert len(PAPER) == 12
    base = ["base_model=b"] if recipe in ("safe_lora", "asft") else []  # a key constrained_sft would not read
    for path in PAPER:
        paper = load_config(str(path), check_files=False)
        assert paper.loss_normalization == "tokens"
        got = load_config(str(path), [f"@configs/paper/recipes/{recipe}.yaml", *base], check_files=False)
        assert {k: getattr(got, k) for k in expect} == expect
        assert (got.model, got.task, got.learning_rate, got.epochs) == (paper.model, paper.task, paper.learning_rate,
                                                                       paper.epochs)
    later = load_config(str(PAPER[0]), [f"@configs/paper/recipes/{recipe}.yaml", *base, "warmup_steps=3"],
                        check_files=False)
    assert later.warmup_steps == 3


def test_overlay_errors(tmp_path):
    with pytest.raises(ConfigError, match="overlay file not found"):
        cfg("@nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        cfg(f"@{bad}")
    loss = tmp_path / "loss.yaml"
    loss.write_text("loss: {lambda_kl: 2}\n")
    assert load_config(None, ["model=m", "loss.gate_bias=0.5", f"@{loss}", "safety_tokens=t.json"],
                       check_files=False).loss.loss_overrides() == {"gate_bias": 0.5, "lambda_kl": 2}


def test_adam_betas_from_the_command_line():
    """docs/methods.md: method=constrained_sft adam_betas=[0.5,0.999] (a YAML list of numbers)."""
    assert cfg("method=sft", "adam_betas=[0.5,0.999]").adam_betas == [0.5, 0.999]
    assert cfg("method=sft", "adam_betas=[5e-1,0.999]").adam_betas == [0.5, 0.999]
    with pytest.raises(ConfigError, match="must be a number"):
        cfg("method=sft", "adam_betas=[true,0.999]")
