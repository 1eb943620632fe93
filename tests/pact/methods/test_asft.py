"""AsFT (Yang et al. 2025): the safety-basin penalty and its gradient by hand, the fast form against the
dense one, and the pairing of a peft model's LoRA factors with their modules' alignment matrices."""
from __future__ import annotations

import pytest
import torch

from pact.methods import ASFT
from pact.methods.alignment import AlignmentMatrix
from pact.methods.asft import basin_penalty, basin_penalty_term

V = torch.tensor([[3.0, 0.0], [4.0, 0.0]])  # ‖V‖_F = 5, C = [[1.8, 2.4], [2.4, 3.2]]
BASE = torch.tensor([[1.0, -1.0], [0.5, 2.0]])


def test_penalty_value_and_gradient_by_hand():
    """B = [1, 0]ᵀ, A = [1, 2]: ΔW = [[1, 2], [0, 0]], (I - C) ΔW = [[-0.8, -1.6], [-2.4, -4.8]],
    ‖·‖² = 0.64 + 2.56 + 5.76 + 23.04 = 32 (a projection C = VVᵀ/‖V‖² would give 3.2).
    With M = I - C (symmetric), G = 2 Mᵀ M ΔW = [[12.8, 25.6], [14.4, 28.8]]:
    ∂/∂B = G Aᵀ = [64, 72]ᵀ, ∂/∂A = Bᵀ G = [12.8, 25.6]."""
    align = AlignmentMatrix.from_weights(BASE + V, BASE)
    a = torch.tensor([[1.0, 2.0]], requires_grad=True)
    b = torch.tensor([[1.0], [0.0]], requires_grad=True)
    value = basin_penalty_term(a, b, align)
    assert value.item() == pytest.approx(32.0, rel=1e-6)
    value.backward()
    assert b.grad.flatten().tolist() == pytest.approx([64.0, 72.0], rel=1e-6)
    assert a.grad.flatten().tolist() == pytest.approx([12.8, 25.6], rel=1e-6)


@pytest.mark.parametrize("scale, factor", [("per_step", 1), ("per_micro_batch", 4)])
def test_penalty_scale_under_gradient_accumulation(scale, factor):
    """GAS = 4, λ = 1, the module of the test above (penalty 32, ∂/∂B = [64, 72]ᵀ).

    The driver adds loss_i / GAS over the 4 micro-batches. per_step: the penalty weighs λ per optimizer
    step (value 32, ∂/∂B [64, 72]); per_micro_batch: the authors' Σ_i (ce_i / GAS + λ·P), i.e. GAS·λ
    (value 128, ∂/∂B [256, 288])."""
    align = AlignmentMatrix.from_weights(BASE + V, BASE)
    a = torch.tensor([[1.0, 2.0]], requires_grad=True)
    b = torch.tensor([[1.0], [0.0]], requires_grad=True)
    method = ASFT("unused", lambda_=1.0, scale=scale, gradient_accumulation_steps=4)
    method.pairs = [(a, b, align)]
    assert method.weight == factor
    ce = [0.5, 1.0, 1.5, 2.0]
    total = sum((c + method.penalty()) / 4 for c in ce)          # what the driver accumulates per step
    assert total.item() == pytest.approx(1.25 + 32 * factor, rel=1e-6)
    total.backward()
    assert b.grad.flatten().tolist() == pytest.approx([64.0 * factor, 72.0 * factor], rel=1e-6)
    if scale == "per_micro_batch":                               # the authors' accumulation, written out
        a2 = a.detach().clone().requires_grad_()
        b2 = b.detach().clone().requires_grad_()
        authors = sum(c / 4 + 1.0 * basin_penalty_term(a2, b2, align) for c in ce)
        authors.backward()
        assert authors.item() == pytest.approx(total.item(), rel=1e-6)
        assert torch.allclose(b2.grad, b.grad) and torch.allclose(a2.grad, a.grad)
    with pytest.raises(ValueError, match="scale='per_token'"):
        ASFT("unused", scale="per_token")


def test_fast_form_equals_the_dense_formula_and_sums_over_modules():
    torch.manual_seed(0)
    pairs, dense = [], 0.0
    for out_dim, in_dim, r in ((6, 5, 2), (4, 7, 3)):
        align = AlignmentMatrix.from_weights(torch.randn(out_dim, in_dim), torch.randn(out_dim, in_dim))
        a, b = torch.randn(r, in_dim, dtype=torch.float64), torch.randn(out_dim, r, dtype=torch.bfloat16)
        pairs.append((a, b, align))
        residual = (torch.eye(out_dim) - align.dense()) @ (b.float() @ a.float())
        dense += float((residual ** 2).sum())
    got = basin_penalty(pairs)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(dense, rel=1e-5)


def test_setup_pairs_lora_factors_by_module_and_the_loss_adds_lambda_times_the_penalty(tmp_path):
    from peft import LoraConfig, get_peft_model

    from pact.model_rows import RowModel
    from pact.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    aligned, base = tiny_model(tok, seed=0), tiny_model(tok, seed=0)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    base.save_pretrained(tmp_path / "base")
    base_weights = dict(base.named_parameters())
    row_model = RowModel(get_peft_model(aligned, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])))
    for name, p in row_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.3)
    method = ASFT(str(tmp_path / "base"), lambda_=2.5)
    method.setup(row_model)
    assert method.modules == [f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")]
    named = dict(row_model.named_parameters())
    expected = 0.0
    for module in method.modules:
        a = named[f"model.base_model.model.{module}.lora_A.default.weight"]
        b = named[f"model.base_model.model.{module}.lora_B.default.weight"]
        w_aligned = named[f"model.base_model.model.{module}.base_layer.weight"]
        c = AlignmentMatrix.from_weights(w_aligned, base_weights[f"{module}.weight"]).dense()
        expected += float((((torch.eye(c.shape[0]) - c) @ (b @ a).detach()) ** 2).sum())
    logits = torch.randn(3, len(tok), requires_grad=True)

    class Batch:
        labels = torch.tensor([5, 6, 7])

    out = method.loss(Batch, logits)
    ce = torch.nn.functional.cross_entropy(logits, Batch.labels).item()
    assert out.penalty.item() == pytest.approx(2.5 * expected, rel=1e-5)
    assert out.loss.item() == pytest.approx(ce + 2.5 * expected, rel=1e-5)
    out.loss.backward()
    lora_b = named[f"model.base_model.model.{method.modules[0]}.lora_B.default.weight"]
    assert lora_b.grad is not None and lora_b.grad.abs().sum() > 0  # the penalty reaches the factors
