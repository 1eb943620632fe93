"""One config schema: the keys TrainConfig and PACTTrainerConfig share have one name, default, help and check;
`method` is the objective and `variant` the ladder rung; values are read by the fields' types; `pact train --help`
lists every key; the run setup (vocabulary, safety tokens, reference cache) is one function for both."""
from __future__ import annotations

import dataclasses
import json

import pytest

from pact.training.config import ConfigError, TrainConfig, load_config
from pact.training.settings import LOSS_KEYS, LossSettings, ObjectiveSettings


def cfg(*overrides):
    return load_config(None, ["model=m", *overrides], check_files=False)


def _fields(cls) -> dict:
    return {f.name: f for f in dataclasses.fields(cls)}


def test_the_loss_keys_are_pact_configs_and_both_configs_share_them():
    from pact_kernels.config import PACTConfig
    from pact.trl import PACTTrainerConfig

    assert set(LOSS_KEYS) == set(_fields(PACTConfig)) - {"variant", "ignore_index"}
    trainer, driver_loss, driver = _fields(PACTTrainerConfig), _fields(LossSettings), _fields(TrainConfig)
    for key in LOSS_KEYS:  # the trainer's keyword argument is the driver's loss.KEY: one default, one help
        assert trainer[key].default is None and driver_loss[key].default is None
        assert trainer[key].metadata["help"] == driver_loss[key].metadata["help"]
    assert driver["loss"].default_factory() == LossSettings()
    for key in _fields(ObjectiveSettings):  # method, variant, preset, csft_*, ...: the same field in both
        assert trainer[key].default == driver[key].default, key
        assert trainer[key].metadata["help"] == driver[key].metadata["help"], key


def test_every_key_has_help_and_pact_train_help_lists_it(capsys):
    from pact.cli import main

    keys = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "loss"] + [f"loss.{k}" for k in LOSS_KEYS]
    assert all(f.metadata.get("help") for f in dataclasses.fields(TrainConfig))
    assert all(f.metadata.get("help") for f in dataclasses.fields(LossSettings))
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and len(keys) == 73
    for key in keys:
        assert f"\n  {key} (" in out, key
    assert "  lora_r (int, default 8)\n      LoRA rank" in out
    assert "  loss.decay_start (int | None, default null)\n      N: answer positions" in out


def test_method_is_the_objective_and_a_rung_name_is_its_variant():
    full = cfg("method=full_vocab", "safety_tokens=t.json")
    assert (full.method, full.variant, full.pact_variant, full.label) == ("pact", "full_vocab", "full_vocab",
                                                                           "full_vocab")
    assert full.loss_config().variant == "full_vocab"
    same = cfg("method=pact", "variant=full_vocab_kl", "safety_tokens=t.json")
    assert same.loss_config().variant == "full_vocab"
    rung = cfg("method=pact", "variant=safety_tokens", "safety_tokens=t.json")
    # run.json's record keeps the row name as `method` (the reports' label), as before the variant key existed
    assert rung.to_dict()["method"] == "safety_tokens" and "variant" not in rung.to_dict()
    assert cfg("method=sft").to_dict()["method"] == "sft" and cfg("method=sft").pact_variant is None
    with pytest.raises(ConfigError, match="method='full_vocab' is the rung variant='full_vocab', and "
                                          "variant='safety_tokens' names another"):
        cfg("method=full_vocab", "variant=safety_tokens", "safety_tokens=t.json")
    with pytest.raises(ConfigError, match=r"does not use variant='safety_weights' \(read by the PACT methods\)"):
        cfg("method=sft", "variant=safety_weights")
    with pytest.raises(ConfigError, match="method='dpo' is unknown; use one of sft, .*full_vocab_kl"):
        cfg("method=dpo")


def test_the_trainer_reads_a_rung_name_as_its_variant(tmp_path):
    from pact.trl import PACTTrainerConfig

    tokens = tmp_path / "t.json"
    tokens.write_text("{}")
    args = PACTTrainerConfig(output_dir=str(tmp_path), safety_tokens=str(tokens), method="safety_weights",
                             lambda_kl=2, bf16=False)
    assert (args.method, args.variant, args.loss_config().variant, args.loss_config().lambda_kl) == (
        "pact", "safety_weights", "safety_weights", 2)
    with pytest.raises(ValueError, match="PACTTrainerConfig: variant='rung9'; use one of full_vocab"):
        PACTTrainerConfig(output_dir=str(tmp_path), safety_tokens=str(tokens), variant="rung9", bf16=False)


def test_trls_parser_reads_the_shared_keys(tmp_path):
    """TRL's own CLI/YAML parser (HfArgumentParser over the fields) sees the composed keys with their types."""
    from transformers import HfArgumentParser

    from pact.trl import PACTTrainerConfig

    tokens = tmp_path / "t.json"
    tokens.write_text("{}")
    (args,) = HfArgumentParser(PACTTrainerConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--safety_tokens", str(tokens), "--lambda_kl", "0.5", "--decay_start", "4",
         "--variant", "response_only_ref", "--fused_linear", "false", "--bf16", "false"])
    assert (args.lambda_kl, args.decay_start, args.variant, args.fused_linear) == (0.5, 4, "response_only_ref", False)
    assert isinstance(args.decay_start, int)


@pytest.mark.parametrize("override, message", [
    ("lora=1", "lora=1 must be true or false"),
    ("epochs=2.5", "epochs=2.5 must be a whole number"),
    ("loss.decay_start=2.5", "loss.decay_start=2.5 must be a whole number"),
    ("loss=3", r"loss=3 must be a mapping \(e.g. loss.lambda_kl=1\)"),
    ("loss.lambda_kl=x", "loss.lambda_kl='x' is not a number"),
    ("task=null", "task cannot be null"),
    ("model=[a]", r"model=\['a'\] must be text"),
    ("deepspeed=3", "deepspeed=3 must be a file path or a mapping"),
    ("task_fields=question", "task_fields='question': write it as name=column"),
])
def test_values_are_read_by_the_fields_types(override, message):
    with pytest.raises(ConfigError, match=message):
        cfg("safety_tokens=t.json", override)


def test_lists_and_mappings_from_the_command_line():
    c = cfg("method=sft", "lora_target_modules=q_proj,k_proj", "task_fields=question=q,answer=a", "learning_rate=1")
    assert c.lora_target_modules == ["q_proj", "k_proj"] and c.task_fields == {"question": "q", "answer": "a"}
    assert c.learning_rate == 1 and isinstance(c.learning_rate, int)  # recorded as given (run.json unchanged)


def test_one_reference_cache_check_for_the_driver_and_the_trainer(tmp_path):
    """A cache of other inputs is refused with one sentence naming ref_cache (the driver's and PACTTrainer's)."""
    from pact.identify import SafetyTokens
    from pact.training.setup import open_reference_cache

    class View:
        num_answer = 3
        full_ids, post_ids = [1, 2, 3, 4], [3, 4]

    tokens = SafetyTokens(safe_model="s", base_model="b", vocab_size=10, k=2, selection="paper", ids=[3, 4],
                          strings=["x", "y"], weights=[1.0, 1.0], scores=[1.0, 1.0], mean_safe_prob=[0.1, 0.1],
                          prompts="p", num_prompts=1, num_steps=1)
    cache = open_reference_cache(str(tmp_path / "c"), [View()], tokens, "weights-a", compute_dtype="float32")
    assert cache.status() == "missing"
    cache.dir.mkdir(parents=True)
    cache.manifest_path.write_text(json.dumps({"fingerprint": "0" * 64}))
    with pytest.raises(ConfigError, match=f"^ref_cache={tmp_path / 'c'}: the reference cache in .* was built for "
                                          "other data, safety tokens or model"):
        open_reference_cache(str(tmp_path / "c"), [View()], tokens, "weights-a", compute_dtype="float32")


def test_the_vocabulary_of_a_name_and_of_an_instance_agree(tmp_path):
    from pact.models import load_model
    from pact.tiny import save_tiny
    from pact.training.setup import model_vocab_size

    path = save_tiny(tmp_path / "tiny")
    assert model_vocab_size(str(path)) == model_vocab_size(load_model(str(path))) == 259
    with pytest.raises(ConfigError, match="cannot read the config of model="):
        model_vocab_size(str(tmp_path / "nope"))
