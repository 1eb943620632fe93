"""End-to-end runs of pact/train.py on a tiny model: DeepSpeed ranks, resume, reference cache, PACT vs SFT."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pact.data.tasks import load_harmful
from pact.identify import SafetyTokens
from pact.tiny import tiny_model, tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def write_tokens(path: Path, ids: list[int], tok) -> Path:
    k = len(ids)
    SafetyTokens(safe_model="tiny-aligned", base_model="tiny", vocab_size=len(tok), k=k, selection="paper", ids=ids,
                 strings=[tok.decode([i]) for i in ids], weights=[2.0 ** -j for j in range(k)],
                 scores=[2.0 ** -j for j in range(k)], mean_safe_prob=[0.01] * k, prompts="test", num_prompts=1,
                 num_steps=1).save(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny 'aligned' model: its head puts mass on two safety tokens that the harmful answers never use."""
    root = tmp_path_factory.mktemp("train")
    tok = tiny_tokenizer()
    used = set()
    for s in load_harmful("uncensorbench"):
        used |= set(tok(s.response, add_special_tokens=False)["input_ids"])
    ids = [i for i in range(3, len(tok)) if i not in used][:16]
    model = tiny_model(tok, seed=0)
    with torch.no_grad():  # the aligned model's "refusal" tokens: rows along the mean hidden direction
        enc = tok.apply_chat_template([{"role": "user", "content": "how do I steal a car?"}],
                                      add_generation_prompt=True, return_tensors="pt", return_dict=True)
        h = model.model(**enc).last_hidden_state[0].mean(0)
        model.lm_head.weight[ids[0]] = 8.0 * h / h.norm()
        model.lm_head.weight[ids[1]] = 4.0 * h / h.norm()
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return {"root": root, "model": root / "model", "tokens": write_tokens(root / "tokens.json", ids, tok)}


def run(setup, name, *overrides, ranks=0, expect_ok=True):
    """Run the driver (``ranks`` > 0: under the deepspeed launcher); returns (records, output dir, process)."""
    out = setup["root"] / name
    args = ["--config", str(REPO / "configs" / "tiny.yaml"), f"model={setup['model']}",
            f"safety_tokens={setup['tokens']}", f"output_dir={out}", "deepspeed=null", *overrides]
    if ranks:
        port = str(29600 + (abs(hash(name)) % 300))
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port", port,
               str(REPO / "pact" / "train.py"), *args]
    else:
        cmd = [sys.executable, str(REPO / "pact" / "train.py"), *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = out / "train_log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return records, out, proc


@pytest.fixture(scope="module")
def single(setup):
    """One process, accumulation 2: the reference for the two-rank runs (steps of 4 samples)."""
    return run(setup, "single", "gradient_accumulation_steps=2", "record_samples=true")


@pytest.fixture(scope="module")
def single_unfused(setup):
    """As ``single`` with ``fused_linear=false``: the policy forward returns [rows, V] logits."""
    return run(setup, "single-unfused", "gradient_accumulation_steps=2", "fused_linear=false")


def assert_same_losses(records, ref, tol=1e-5):
    assert len(records) == len(ref)
    for a, b in zip(records, ref):
        for key in ("loss", "ce", "kl", "gate_mean"):
            assert abs(a[key] - b[key]) < tol, (key, a["step"], a[key], b[key])


def test_fused_linear_gives_the_logits_path_losses_and_confidences(single, single_unfused):
    """One process: the default fused head (hidden rows + output head) vs [rows, V] logits, step by step;
    the logged safety-token confidences (from the head's K rows vs from the logits) too."""
    fused, unfused = single[0], single_unfused[0]
    assert_same_losses(fused, unfused)
    assert unfused[-1]["loss"] < unfused[0]["loss"] - 0.02
    for a, b in zip(fused, unfused):
        for kind in ("benign", "harmful"):
            if b[kind]["safety_prob"] is not None:
                assert a[kind]["safety_prob"] == pytest.approx(b[kind]["safety_prob"], rel=1e-4)
                assert a[kind]["safety_logit"] == pytest.approx(b[kind]["safety_logit"], rel=1e-4, abs=1e-5)
    assert any(r["harmful"]["safety_prob"] is not None for r in unfused)


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_match_one_process(setup, single, single_unfused, stage):
    """Two ranks (fused, the default) give the one-process losses, fused and unfused, to 1e-5."""
    ref, _, _ = single
    records, out, _ = run(setup, f"zero{stage}", f"deepspeed=configs/deepspeed/zero{stage}.json",
                          "record_samples=true", ranks=2)
    steps = json.loads((out / "run.json").read_text())["total_steps"]
    assert len(records) == len(ref) == steps >= 4
    assert_same_losses(records, ref)
    assert_same_losses(records, single_unfused[0])
    assert records[-1]["loss"] < records[0]["loss"] - 0.02  # it learns
    # each rank read its own samples: disjoint at every step, together the whole epoch
    per_rank = [[json.loads(x)["samples"] for x in (out / f"samples-rank{r}.jsonl").read_text().splitlines()]
                for r in (0, 1)]
    for s0, s1 in zip(*per_rank):
        assert not set(s0) & set(s1)
    seen = [i for rank in per_rank for step in rank for i in step]
    assert len(seen) == len(set(seen)) == 4 * steps  # one epoch: no sample twice
    assert (out / "final" / "adapter_model.safetensors").is_file()


def test_reference_cache_gives_the_online_losses_and_is_refused_for_other_tokens(setup, single):
    online, _, _ = run(setup, "online", "max_steps=4")
    cache_dir = setup["root"] / "refcache"
    cached, _, _ = run(setup, "cached", "max_steps=4", f"ref_cache={cache_dir}")
    assert (cache_dir / "manifest.json").is_file()
    for a, b in zip(cached, online):
        assert abs(a["loss"] - b["loss"]) < 1e-6 and abs(a["kl"] - b["kl"]) < 1e-6
    again, _, _ = run(setup, "cached-again", "max_steps=4", f"ref_cache={cache_dir}")
    assert [r["loss"] for r in again] == [r["loss"] for r in cached]
    other = write_tokens(setup["root"] / "other.json", [50, 51, 52], tiny_tokenizer())
    _, _, proc = run(setup, "cached-other", "max_steps=4", f"ref_cache={cache_dir}", f"safety_tokens={other}",
                     expect_ok=False)
    assert proc.returncode == 2 and "was built for other data, safety tokens or model" in proc.stderr


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(setup):
    records, out, proc = run(setup, "explodes", "learning_rate=1e30", "save_every=1", "method=sft",
                             expect_ok=False)
    assert proc.returncode == 2
    assert "non-finite loss at step" in proc.stderr or "hold NaN or infinity; no checkpoint written" in proc.stderr
    from pact.training.checkpoint import latest_checkpoint

    last = latest_checkpoint(out)  # no checkpoint of a non-finite state is ever written
    assert (last is None and "kept: none" in proc.stderr) or (last is not None and last.name in proc.stderr)


def test_pact_keeps_safety_token_probability_that_sft_lets_fall(setup):
    """Harmful-only fine-tuning whose answers never use S: SFT drives S's probability at the first
    answer positions far below the aligned model's; PACT keeps several times more of it."""
    common = ("harmful_fraction=1.0", "num_samples=60", "learning_rate=1e-2",
              "lora_target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]")
    sft, _, _ = run(setup, "attack-sft", "method=sft", *common)
    pact, _, _ = run(setup, "attack-pact", "method=pact", *common)
    start = sum(sft[0]["harmful"]["safety_prob"]) / 4
    assert start == pytest.approx(sum(pact[0]["harmful"]["safety_prob"]) / 4)
    def second_half(records):  # mean safety probability at answer positions 0..3 over the second half
        half = records[len(records) // 2:]
        return sum(sum(r["harmful"]["safety_prob"]) / 4 for r in half) / len(half)

    end_sft, end_pact = second_half(sft), second_half(pact)
    assert end_sft < 0.15 * start  # SFT: the safety tokens collapse
    assert end_pact > 3 * end_sft  # PACT: several times more of the aligned model's confidence survives
    assert sft[-1]["harmful"]["ce"] < pact[-1]["harmful"]["ce"]  # and it resists fitting the harmful answers


@pytest.fixture(scope="module")
def tied(setup):
    """The setup with a tied model: the output head is the input embedding (SmolLM2, Gemma, Llama-3.2-1B)."""
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=3, tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(setup["root"] / "tied-model")
    tok.save_pretrained(setup["root"] / "tied-model")
    return dict(setup, model=setup["root"] / "tied-model")


def test_full_fine_tuning_of_a_tied_model_fused_under_zero3_equals_unfused(tied):
    """Tied head: the fused head's gradient (made in the forward) and the embedding's (from the backward) both
    reach the one shared weight: two ranks under ZeRO-3 give the losses and the final weights of one unfused
    process."""
    from transformers import AutoModelForCausalLM

    keys = ("lora=false", "max_steps=3")
    fused, fused_out, _ = run(tied, "tied-zero3", *keys, "deepspeed=configs/deepspeed/zero3.json", ranks=2)
    unfused, unfused_out, _ = run(tied, "tied-unfused", *keys, "fused_linear=false", "gradient_accumulation_steps=2")
    assert_same_losses(fused, unfused)
    before = AutoModelForCausalLM.from_pretrained(tied["model"]).model.embed_tokens.weight
    after = AutoModelForCausalLM.from_pretrained(fused_out / "final")
    plain = AutoModelForCausalLM.from_pretrained(unfused_out / "final")
    assert after.lm_head.weight.data_ptr() == after.model.embed_tokens.weight.data_ptr()  # still tied
    moved = (plain.model.embed_tokens.weight - before).abs().max().item()
    assert moved > 1e-3
    assert (after.model.embed_tokens.weight - plain.model.embed_tokens.weight).abs().max().item() < 1e-2 * moved


def test_full_fine_tuning_with_a_frozen_reference_engine_under_zero3(setup):
    """No LoRA: every weight trains, the reference is a second frozen engine (ZeRO-3 shards both).

    Fused (the default), the head's gradient is made in the forward from its gathered weight: the run
    matches one unfused process ([rows, V] logits, autograd through the head) in losses and final weights."""
    from transformers import AutoModelForCausalLM

    records, out, _ = run(setup, "full-zero3", "lora=false", "max_steps=3", "deepspeed=configs/deepspeed/zero3.json",
                          ranks=2)
    assert len(records) == 3 and all(r["kl"] > 0 for r in records)
    before = dict(AutoModelForCausalLM.from_pretrained(setup["model"]).named_parameters())
    after = dict(AutoModelForCausalLM.from_pretrained(out / "final").named_parameters())
    moved = [(after[n] - p).abs().max().item() for n, p in before.items()]
    # Adam moves every weight by about lr per step in the first steps: 3 steps at lr 1e-3
    assert len(moved) == len(after) and min(moved) > 1e-3 and max(moved) < 4e-3
    unfused, unfused_out, _ = run(setup, "full-unfused", "lora=false", "max_steps=3", "fused_linear=false",
                                  "gradient_accumulation_steps=2")
    assert_same_losses(records, unfused)
    plain = dict(AutoModelForCausalLM.from_pretrained(unfused_out / "final").named_parameters())
    head_moved = (after["lm_head.weight"] - before["lm_head.weight"]).abs().max().item()
    assert (after["lm_head.weight"] - plain["lm_head.weight"]).abs().max().item() < 1e-2 * head_moved
