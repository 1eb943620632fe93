"""Constrained SFT (Qi et al. 2024): the β schedule, the token weight, the loss and its gradient by hand,
and the reference's label log-probability (adapter off, row-chunked full-vocabulary log-softmax)."""
from __future__ import annotations

import math

import pytest
import torch

from pact.data.collator import PACTCollator
from pact.data.views import ViewBuilder
from pact.methods import ConstrainedSFT
from pact.methods.constrained_sft import beta_schedule, token_weights
from pact.model_rows import RowModel, label_log_probs
from pact.reference import OnlineReference
from pact.tiny import tiny_model, tiny_tokenizer


def test_beta_schedule_is_the_authors_defaults():
    pos = torch.tensor([0, 1, 2, 4, 5, 6, 40])
    assert beta_schedule(pos).tolist() == pytest.approx([0.5, 2.0, 2.0, 2.0, 0.1, 0.1, 0.1])
    # another setting: beta 0.2, factor 10 on the first 3 tokens, the first one 3
    assert beta_schedule(pos, 0.2, 10.0, 3.0, 3).tolist() == pytest.approx([0.6, 2.0, 2.0, 0.2, 0.2, 0.2, 0.2])
    # no prefix: every token gets beta, the first-token factor is ignored (as in get_beta_list)
    assert beta_schedule(pos, 0.1, 20.0, 5.0, 0).tolist() == pytest.approx([0.1] * 7)


def test_token_weight_by_hand():
    # log p_θ - log p_ref = log 3 : σ(0.5 log 3) = √3/(1+√3); σ(2 log 3) = 9/10
    policy = torch.log(torch.tensor([0.75, 0.75, 0.5, 1.0]))
    ref = torch.log(torch.tensor([0.25, 0.25, 0.5, 1e-40]))
    betas = torch.tensor([0.5, 2.0, 0.1, 2.0])
    w = token_weights(policy, ref, betas)
    expected = [2 / (1 + math.sqrt(3)), 0.2, 1.0, 1e-3]  # the last: σ(2·92) = 1 -> 0, clamped at 1e-3
    assert w.tolist() == pytest.approx(expected, rel=1e-5)


class _Batch:
    def __init__(self, labels, answer_pos):
        self.labels, self.answer_pos = labels, answer_pos


def test_loss_and_gradient_by_hand():
    """Three rows over a 2-token vocabulary: p_θ(label) = 3/4, 3/4, 1/2; p_ref = 1/4, 1/4, 1/2."""
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)], [0.0, 0.0]], requires_grad=True)
    batch = _Batch(labels=torch.tensor([0, 1, 0]), answer_pos=torch.tensor([0, 1, 7]))
    ref = torch.log(torch.tensor([0.25, 0.25, 0.5]))
    out = ConstrainedSFT().loss(batch, logits, ref)
    w = [2 / (1 + math.sqrt(3)), 0.2, 1.0]  # β = 0.5, 2.0, 0.1 at positions 0, 1, 7
    nll = [-math.log(0.75), -math.log(0.75), math.log(2.0)]
    assert out.loss.item() == pytest.approx(sum(a * b for a, b in zip(w, nll)) / 3, rel=1e-6)
    assert out.loss.item() == pytest.approx((0.210600 + 0.057536 + 0.693147) / 3, abs=1e-5)  # 0.320428
    assert out.row_weight.tolist() == pytest.approx(w, rel=1e-6)
    assert out.ce_rows.tolist() == pytest.approx(nll, rel=1e-6)
    out.loss.backward()
    # d/dz of w·(-log softmax(z)[y]) = w·(softmax(z) - onehot(y)); mean over 3 rows; w is a constant
    expected = torch.tensor([[w[0] * -0.25, w[0] * 0.25], [w[1] * 0.25, w[1] * -0.25], [w[2] * -0.5, w[2] * 0.5]]) / 3
    assert torch.allclose(logits.grad, expected, atol=1e-7)


def test_policy_equal_to_reference_gives_sft():
    torch.manual_seed(0)
    logits = torch.randn(6, 11)
    batch = _Batch(labels=torch.randint(0, 11, (6,)), answer_pos=torch.arange(6))
    ref = torch.log_softmax(logits, -1).gather(1, batch.labels[:, None])[:, 0]
    out = ConstrainedSFT().loss(batch, logits, ref)
    sft = torch.nn.functional.cross_entropy(logits, batch.labels)
    assert out.loss.item() == pytest.approx(sft.item(), rel=1e-6) and out.row_weight.tolist() == pytest.approx([1.0] * 6)


def test_label_log_probs_row_chunked_with_softcap():
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=3)
    model.config.final_logit_softcapping = 2.0
    hidden = torch.randn(7, model.config.hidden_size)
    labels = torch.randint(0, len(tok), (7,))
    z = model.lm_head(hidden)
    z = 2.0 * torch.tanh(z / 2.0)
    expected = torch.log_softmax(z, -1).gather(1, labels[:, None])[:, 0]
    got = label_log_probs(model, hidden, labels, chunk_rows=3)  # chunks of 3, 3, 1 rows
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-6)


def test_reference_label_logprob_is_the_aligned_model_with_the_adapter_off():
    from peft import LoraConfig, get_peft_model

    tok = tiny_tokenizer()
    builder = ViewBuilder(tok, max_length=100)
    views = [builder.build("how to pick a lock", "I cannot help."), builder.build("hi", "Sure, here.", harmful=True)]
    batch = PACTCollator(tok.pad_token_id)(list(enumerate(views)))
    base = tiny_model(tok, seed=2).eval()
    with torch.no_grad():
        logp = torch.log_softmax(base(batch.full_ids, attention_mask=batch.full_mask).logits, -1).flatten(0, 1)
        expected = logp[batch.full_rows].gather(1, batch.labels[:, None])[:, 0]
    row_model = RowModel(get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])))
    for name, p in row_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # the policy moves away from the aligned model
    policy = torch.log_softmax(row_model(batch.full_ids, batch.full_mask, batch.full_rows), -1)
    assert not torch.allclose(policy.gather(1, batch.labels[:, None])[:, 0], expected, atol=1e-3)
    got = OnlineReference(row_model).label_logprobs(batch)
    assert got.shape == batch.labels.shape and torch.allclose(got, expected, atol=1e-5)
    assert row_model.training


def test_frozen_reference_without_lora_and_the_missing_labels_error():
    """Full fine-tuning: the reference RowModel wraps a plain frozen model (no adapter to switch off)."""
    tok = tiny_tokenizer()
    builder = ViewBuilder(tok, max_length=100)
    batch = PACTCollator(tok.pad_token_id)([(0, builder.build("hello there", "General Kenobi."))])
    model = tiny_model(tok, seed=4).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(batch.full_ids, attention_mask=batch.full_mask).logits, -1).flatten(0, 1)
    expected = logp[batch.full_rows].gather(1, batch.labels[:, None])[:, 0]
    reference = RowModel(model)
    assert torch.allclose(OnlineReference(reference).label_logprobs(batch), expected, atol=1e-5)
    with pytest.raises(ValueError, match="needs labels"):
        reference(batch.full_ids, batch.full_mask, batch.full_rows, mode="reference_label_logprob")
