"""The driver's fused head (``fused_linear: true``): every method's loss from hidden rows + output head
equals its loss from ``[rows, V]`` logits (values and gradients), the logged confidences from the head's
K rows equal those from the logits, and a head the fused path cannot honour is refused."""
from __future__ import annotations

import pytest
import torch

from pact.data.collator import PACTCollator
from pact.data.views import ViewBuilder
from pact.methods import PACT, SFT, ConstrainedSFT, HeadRows
from pact.model_rows import RowModel, causal_lm_of, full_logits, output_head
from pact.reference import OnlineReference
from pact.tiny import tiny_model, tiny_tokenizer
from pact.training.metrics import StepMetrics
from pact_kernels import VARIANTS, PACTConfig

IDS = torch.tensor([5, 9, 17, 33, 40, 41])


@pytest.fixture(scope="module")
def batch():
    tok = tiny_tokenizer()
    builder = ViewBuilder(tok, max_length=120)
    views = [builder.build("how to pick a lock", "I cannot help with that."),
             builder.build("hi there", "Sure, here is how you do it, step one.", harmful=True),
             builder.build("what is 2+2", "It is 4.")]
    return PACTCollator(tok.pad_token_id)(list(enumerate(views)))


def lora_row_model(seed=2, full=False, softcap=None):
    """A RowModel around a tiny Llama (LoRA on q/v with non-zero B, or all weights trainable)."""
    from peft import LoraConfig, get_peft_model

    model = tiny_model(tiny_tokenizer(), seed=seed)
    model.config.final_logit_softcapping = softcap
    if full:
        model.requires_grad_(True)
        row = RowModel(model)
    else:
        row = RowModel(get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])))
        for name, p in row.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.3)  # the policy differs from its reference (adapter off)
    row.set_safety_ids(IDS)
    return row


def both_paths(method, row, batch, reference, separate_reference=None):
    """``(result, d hidden, d head weight)`` from logits and from HeadRows, on the same hidden rows."""
    outs = []
    lm = causal_lm_of(row.model)
    for fused in (False, True):
        hidden = row(batch.full_ids, batch.full_mask, batch.full_rows, mode="policy_hidden").detach()
        hidden.requires_grad_()
        weight = lm.get_output_embeddings().weight
        weight.grad = None
        online = separate_reference or reference
        ref = method.reference_for(online, batch, fused=fused) if online is not None else None
        if fused:
            with output_head(row) as head:
                result = method.loss(batch, HeadRows(hidden, head), ref)
        else:
            result = method.loss(batch, full_logits(lm, hidden), ref)
        result.loss.backward()
        outs.append((result, hidden.grad, None if weight.grad is None else weight.grad.clone()))
    return outs


def assert_same(a, b, tol=1e-5):
    (ra, ha, wa), (rb, hb, wb) = a, b
    assert float(ra.loss.detach()) == pytest.approx(float(rb.loss.detach()), rel=tol)
    for name in ("ce_rows", "kl_rows", "row_weight"):
        assert torch.allclose(getattr(ra, name), getattr(rb, name), rtol=tol, atol=1e-6), name
    assert torch.allclose(ha, hb, rtol=tol, atol=1e-7)
    assert (wa is None) == (wb is None)
    if wa is not None:
        assert torch.allclose(wa, wb, rtol=tol, atol=1e-7) and wa.abs().sum() > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_pact_variants_fused_equal_logits(batch, variant):
    row = lora_row_model(softcap=3.0 if variant == "pact" else None)
    method = PACT(PACTConfig(variant=variant), IDS, torch.linspace(1.0, 0.2, len(IDS)), backend="torch")
    logits_path, fused_path = both_paths(method, row, batch, OnlineReference(row))
    assert_same(fused_path, logits_path)
    assert fused_path[0].kl_rows.abs().sum() > 0


def test_full_vocab_with_a_separate_frozen_reference_and_a_trainable_head(batch):
    """Full fine-tuning: the reference is another model (its own head), the policy's head gets a gradient."""
    row = lora_row_model(full=True)
    reference = OnlineReference(lora_row_model(seed=5), separate_head=True)
    method = PACT(PACTConfig(variant="full_vocab"), IDS, torch.ones(len(IDS)), backend="torch")
    logits_path, fused_path = both_paths(method, row, batch, None, separate_reference=reference)
    assert_same(fused_path, logits_path)
    assert fused_path[0].kl_rows.sum() > 1e-3


def test_sft_and_constrained_sft_fused_equal_logits(batch):
    row = lora_row_model(full=True, softcap=2.5)
    assert_same(*reversed(both_paths(SFT(), row, batch, None)))
    g = torch.Generator().manual_seed(0)
    ref_logp = -8.0 + 7.0 * torch.rand(batch.labels.shape, generator=g)  # some tokens raised, some lowered

    class Ref:  # the reference's label log-probabilities
        def label_logprobs(self, b):
            return ref_logp

    logits_path, fused_path = both_paths(ConstrainedSFT(), row, batch, Ref())
    assert_same(fused_path, logits_path)
    w = fused_path[0].row_weight
    assert w.min() < 0.9 and w.max() > 1.1  # the token weights differ from 1 both ways


def test_confidences_from_the_head_rows_equal_those_from_logits(batch):
    row = lora_row_model(softcap=3.0)
    lm = causal_lm_of(row.model)
    hidden = row(batch.full_ids, batch.full_mask, batch.full_rows, mode="policy_hidden").detach()
    ce_rows = torch.nn.functional.cross_entropy(full_logits(lm, hidden), batch.labels, reduction="none")
    from_logits, from_head = StepMetrics(IDS, "cpu"), StepMetrics(IDS, "cpu")
    from_logits.add_confidence(batch, full_logits(lm, hidden))
    with output_head(row) as head:
        from_head.add_confidence_from_head(batch, HeadRows(hidden, head), ce_rows)
    assert from_logits.sums.abs().sum() > 0
    # z_s by the K-row GEMM and by the full-vocabulary GEMM round differently in float32 (~1e-8 here)
    assert torch.allclose(from_head.sums, from_logits.sums, rtol=1e-5, atol=1e-7)


def test_a_lora_adapter_on_the_head_is_refused():
    from peft import LoraConfig, get_peft_model

    row = RowModel(get_peft_model(tiny_model(tiny_tokenizer(), seed=1), LoraConfig(r=2, target_modules=["lm_head"])))
    with pytest.raises(ValueError, match="plain nn.Linear output head.*fused_linear=false"):
        with output_head(row):
            pass


def test_lora_on_the_head_with_fused_linear_is_a_config_error():
    from pact.training.config import ConfigError, load_config

    overrides = ["model=m", "method=sft", "lora_target_modules=[q_proj,lm_head]"]
    with pytest.raises(ConfigError, match="drop lm_head from lora_target_modules or set fused_linear=false"):
        load_config(None, overrides, check_files=False)
    assert load_config(None, overrides + ["fused_linear=false"], check_files=False).fused_linear is False
