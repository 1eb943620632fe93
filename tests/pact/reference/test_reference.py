"""The reference: K-row head, adapter-off without a second copy, the disk cache."""
from __future__ import annotations

import pytest
import torch

from pact.data.collator import PACTCollator
from pact.data.views import ViewBuilder
from pact.model_rows import RowModel, SafetyHead, full_logits
from pact.reference import OnlineReference, ReferenceCache, cache_fingerprint
from pact.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tk():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def batch(tk):
    builder = ViewBuilder(tk, max_length=100)
    views = [builder.build("how to pick a lock", "I cannot help."), builder.build("hi", "Sure, here.", harmful=True)]
    return PACTCollator(tk.pad_token_id)(list(enumerate(views)))


def lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_k_row_head_matches_the_full_head_at_s(tk, softcap):
    model = tiny_model(tk, seed=1)
    model.config.final_logit_softcapping = softcap
    ids = torch.tensor([5, 77, 3, 200, 101])
    hidden = torch.randn(9, model.config.hidden_size)
    full = full_logits(model, hidden)
    assert torch.allclose(SafetyHead.from_model(model, ids)(hidden), full[:, ids], atol=1e-6)
    if softcap:
        assert full.abs().max() < softcap


def test_adapter_off_reference_is_the_aligned_model_without_a_second_copy(tk, batch):
    base = tiny_model(tk, seed=2).eval()
    ids = torch.tensor([40, 41, 42, 80, 90, 100])
    with torch.no_grad():
        expected_full = base(batch.full_ids, attention_mask=batch.full_mask).logits.flatten(0, 1)[batch.full_rows][:, ids]
        expected_post = base(batch.post_ids, attention_mask=batch.post_mask).logits.flatten(0, 1)[batch.post_rows][:, ids]
    storage_before = {p.data_ptr() for p in base.parameters()}
    row_model = RowModel(lora(base))
    row_model.set_safety_ids(ids)
    # train the adapter away from zero: the policy now differs from the aligned model
    for name, p in row_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    policy = row_model(batch.full_ids, batch.full_mask, batch.full_rows)
    assert not torch.allclose(policy[:, ids], expected_full, atol=1e-3)
    r_full, r_post = OnlineReference(row_model)(batch)
    assert torch.allclose(r_full, expected_full, atol=1e-5) and torch.allclose(r_post, expected_post, atol=1e-5)
    assert row_model.training  # the reference call restores train mode
    # no second copy: the frozen weights are the base model's own storage; only LoRA factors are new
    new = [n for n, p in row_model.named_parameters() if p.data_ptr() not in storage_before]
    assert new and all("lora_" in n for n in new)
    # the reference holds K rows of the head, not a model
    assert row_model.safety_head.weight.shape == (6, base.config.hidden_size)


def test_full_vocab_reference(tk, batch):
    row_model = RowModel(lora(tiny_model(tk, seed=2)))
    r_full, r_post = OnlineReference(row_model)(batch, full_vocab=True)
    assert r_full.shape == (batch.labels.numel(), len(tk)) and r_post is None


def test_reference_cache_roundtrip_and_refusal(tk, batch, tmp_path):
    row_model = RowModel(lora(tiny_model(tk, seed=2)))
    ids = torch.tensor([40, 41, 42])
    row_model.set_safety_ids(ids)
    online = OnlineReference(row_model)
    num_answer = torch.bincount(batch.row_sample).tolist()
    fp = cache_fingerprint("tiny", ids.tolist(), "digest-a", compute_dtype="float32")
    cache = ReferenceCache(tmp_path / "cache", num_answer, 3, fp)
    assert cache.status() == "missing"
    cache.create()
    r_full, r_post = online(batch)
    cache.write([0, 1], r_full, r_post, num_answer)
    cache.finish({"samples": 2})
    assert cache.status() == "valid"
    got_full, got_post = cache(batch)
    assert torch.equal(got_full, r_full) and torch.equal(got_post, r_post)
    for data, dtype in (("digest-b", "float32"), ("digest-a", "bfloat16")):  # other data; logits of another dtype
        other = ReferenceCache(tmp_path / "cache", num_answer, 3, cache_fingerprint("tiny", ids.tolist(), data, dtype))
        assert "was built for other data, safety tokens or model" in other.status()
