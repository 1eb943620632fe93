"""The baselines end to end: ``deepspeed --num_gpus 2 pact/train.py`` (gloo on the CPU, ZeRO-2) on the tiny model.

The "aligned" model is the tiny random model; its "base" is the same model with every weight perturbed,
so aligned minus base gives SafeLoRA and AsFT an alignment direction per module. Three steps each.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pact.methods.alignment import AlignmentMatrix
from pact.identify import SafetyTokens
from pact.tiny import tiny_model, tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
STEPS = 3


def save_tiny_pair(root: Path) -> Path:
    """An aligned tiny model (``root/model``), a perturbed "base" (``root/base``) and a 16-token safety set
    (``root/tokens.json``); returns ``root``."""
    tok = tiny_tokenizer()
    aligned = tiny_model(tok, seed=0)
    aligned.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    base = tiny_model(tok, seed=0)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    ids = list(range(40, 56))
    SafetyTokens(safe_model="tiny", base_model="tiny-base", vocab_size=len(tok), k=len(ids), selection="paper",
                 ids=ids, strings=[tok.decode([i]) for i in ids], weights=[2.0 ** -j for j in range(len(ids))],
                 scores=[1.0] * len(ids), mean_safe_prob=[0.01] * len(ids), prompts="test", num_prompts=1,
                 num_steps=1).save(root / "tokens.json")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("baselines"))


def run(root: Path, method: str, *overrides):
    """Two ranks under the deepspeed launcher; returns (train_log records, run dir)."""
    out = root / method
    args = ["--config", str(REPO / "configs" / "tiny.yaml"), f"model={root / 'model'}",
            f"safety_tokens={root / 'tokens.json'}", f"output_dir={out}", f"method={method}",
            f"max_steps={STEPS}", "deepspeed=configs/deepspeed/zero2.json", *overrides]
    port = str(29900 + (abs(hash(method)) % 90))
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", port,
           str(REPO / "pact" / "train.py"), *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    return records, out


@pytest.fixture(scope="module")
def sft_like(setup):
    """safe_lora trains as plain SFT: its losses are SFT's (the projection comes after training)."""
    return run(setup, "safe_lora", f"base_model={setup / 'base'}", "safe_lora_select=number",
               "safe_lora_num_layers=2")


def test_safe_lora_projects_the_lowest_cosine_layers_of_the_exported_adapter(setup, sft_like):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    records, out = sft_like
    assert "penalty" not in records[0] and all(r["kl"] == 0.0 for r in records)
    report = json.loads((out / "safe_lora.json").read_text())
    raw = load_file(str(out / "final_unprojected" / "adapter_model.safetensors"))
    new = load_file(str(out / "final" / "adapter_model.safetensors"))
    aligned = dict(AutoModelForCausalLM.from_pretrained(setup / "model").named_parameters())
    base = dict(AutoModelForCausalLM.from_pretrained(setup / "base").named_parameters())
    assert len(report["layers"]) == 4 and report["projected"] == 2  # q_proj, v_proj of 2 layers
    for layer in report["layers"]:
        name = layer["module"]
        c = AlignmentMatrix.from_weights(aligned[name + ".weight"], base[name + ".weight"]).dense()
        a, b = raw[f"base_model.model.{name}.lora_A.weight"], raw[f"base_model.model.{name}.lora_B.weight"]
        delta = b @ a
        cos = torch.nn.functional.cosine_similarity((c @ delta).flatten(), delta.flatten(), dim=0).item()
        assert layer["cosine"] == pytest.approx(cos, abs=1e-5)
        want = c @ b if layer["projected"] else b
        assert torch.allclose(new[f"base_model.model.{name}.lora_B.weight"], want, atol=1e-6)
    cosines = sorted(layer["cosine"] for layer in report["layers"])
    assert all(layer["projected"] == (layer["cosine"] <= cosines[1]) for layer in report["layers"])


def test_constrained_sft_starts_as_sft_then_down_weights_tokens_the_policy_has_raised(setup, sft_like):
    sft, _ = sft_like
    records, _ = run(setup, "constrained_sft")
    # step 1: the policy is the reference (LoRA B = 0), so every w_t = 2(1 - σ(0)) = 1 and the loss is SFT's
    assert records[0]["gate_mean"] == pytest.approx(1.0, abs=1e-6)
    assert records[0]["loss"] == pytest.approx(sft[0]["loss"], abs=1e-6)
    # later: the answer tokens' probability rose above the reference's, so w_t < 1
    assert records[-1]["gate_mean"] < 1.0 - 1e-4


def test_asft_penalty_is_zero_at_the_start_and_matches_the_checkpointed_adapter(setup, sft_like):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    sft, _ = sft_like
    records, out = run(setup, "asft", f"base_model={setup / 'base'}", "asft_lambda=3", "save_every=2")
    assert records[0]["penalty"] == 0.0 and records[0]["loss"] == pytest.approx(sft[0]["loss"], abs=1e-6)
    # the penalty logged at step 3 is computed on the weights after step 2: recompute it from that checkpoint
    adapter = load_file(str(out / "checkpoints" / "step-000002" / "weights" / "adapter_model.safetensors"))
    aligned = dict(AutoModelForCausalLM.from_pretrained(setup / "model").named_parameters())
    base = dict(AutoModelForCausalLM.from_pretrained(setup / "base").named_parameters())
    expected = 0.0
    for key in [k for k in adapter if ".lora_A." in k]:
        name = key.split("base_model.model.", 1)[1].split(".lora_A.")[0]
        c = AlignmentMatrix.from_weights(aligned[name + ".weight"], base[name + ".weight"]).dense()
        delta = adapter[key.replace("lora_A", "lora_B")] @ adapter[key]
        expected += float((((torch.eye(c.shape[0]) - c) @ delta) ** 2).sum())
    assert expected > 0 and records[2]["penalty"] == pytest.approx(3 * expected, rel=1e-4)


def test_full_vocab_kl_trains_under_its_alias(setup):
    records, out = run(setup, "full_vocab_kl")
    assert json.loads((out / "run.json").read_text())["method"] == "full_vocab_kl"
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy = reference at step 1
    assert records[-1]["kl"] > 1e-6 and (out / "final" / "adapter_model.safetensors").is_file()


def test_constrained_sft_recipe_overlay_trains_all_weights(setup):
    """@configs/paper/recipes/constrained_sft.yaml in one process: all weights (no adapter), 10 warm-up steps
    under tiny.yaml's lr 1e-3 (0-based step s trains at 1e-3 · s/10, as transformers' warm-up, and logs that rate:
    0, 1e-4), linear decay, and step 1's loss is SFT's (policy = reference, every w_t = 1)."""
    out = setup / "csft_recipe"
    args = [str(REPO / "pact" / "train.py"), "--config", str(REPO / "configs" / "tiny.yaml"),
            "@configs/paper/recipes/constrained_sft.yaml", f"model={setup / 'model'}", f"output_dir={out}",
            "max_steps=2", "deepspeed=null", "safety_tokens=null"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == pytest.approx([0.0, 1e-4], rel=1e-9, abs=1e-15)
    assert records[0]["loss"] == pytest.approx(records[0]["ce"], rel=1e-6)
    cfg = json.loads((out / "run.json").read_text())
    assert (cfg["method"], cfg["lora"], cfg["adam_betas"], cfg["warmup_steps"], cfg["lr_scheduler"]) == (
        "constrained_sft", False, [0.5, 0.999], 10, "linear")
    assert (out / "final" / "model.safetensors").is_file()
    assert not (out / "final" / "adapter_model.safetensors").exists()
