"""AsFT (Yang et al. 2025, "AsFT: Anchoring Safety During LLM Fine-Tuning Within Narrow Safety Basin";
public code ``PKU-YuanGroup/AsFT``).

SFT plus, every micro-batch, a penalty on the part of each LoRA update that
leaves the alignment direction (the "narrow safety basin"):

    L = CE + λ · Σ_modules ‖(I - C) B A‖²_F,      C = V Vᵀ / ‖V‖_F

with ``C`` of :mod:`pact.methods.alignment` (the same matrix as SafeLoRA's)
and λ = 1 (the paper's default). ``ΔW = B A`` is the raw product of the
LoRA factors, as in the authors' code: peft's scaling α/r is not applied
(it would multiply the penalty by (α/r)²; fold that into λ if wanted).

The penalty is computed without forming C or ``B A``:

    X = (I - C) B = B - V (Vᵀ B) / ‖V‖_F                  [out, r]
    ‖X A‖²_F = Σ_ij (Xᵀ X)_ij (A Aᵀ)_ij                   (two r×r matrices)

Scaling with gradient accumulation (``scale``): the driver's loss is
divided by the number of micro-batches per optimizer step (GAS) before the
gradients add up, so with ``per_step`` (default) the penalty weighs λ per
optimizer step, whatever GAS is (the equation above). The authors' code adds
the penalty unscaled to each micro-batch's ``loss / GAS``, so its weight per
optimizer step is GAS·λ: ``per_micro_batch`` reproduces that (the penalty is
multiplied by GAS before the driver's division). The two agree at GAS = 1.

It reads the LoRA factors outside the model's forward, so it needs them
whole on every rank: ZeRO stages 0-2 (config check refuses stage 3).
"""
from __future__ import annotations

import torch

from .alignment import AlignmentMatrix, load_alignment, lora_pairs, module_weights
from .base import SFT, LossResult


def basin_penalty_term(a: torch.Tensor, b: torch.Tensor, align: AlignmentMatrix) -> torch.Tensor:
    """``‖(I - C) B A‖²_F`` of one module (float32 scalar, differentiable in ``a`` and ``b``).

    Args:
        a: ``[r, in]`` lora_A weight; b: ``[out, r]`` lora_B weight (any float dtype).
        align: the module's ``C``.
    """
    a32, b32 = a.float(), b.float()
    x = b32 - align.apply(b32)
    return ((x.transpose(0, 1) @ x) * (a32 @ a32.transpose(0, 1))).sum()


def basin_penalty(pairs) -> torch.Tensor:
    """``Σ ‖(I - C) B A‖²_F`` over ``(a, b, align)`` triples (float32 scalar)."""
    terms = [basin_penalty_term(a, b, align) for a, b, align in pairs]
    if not terms:
        raise ValueError("AsFT has no LoRA module to regularise")
    return torch.stack(terms).sum()


class ASFT(SFT):
    """SFT with AsFT's safety-basin regulariser on the LoRA factors.

    Args:
        base_model, base_gguf_file: the unaligned model; the aligned weights
            are the policy's own frozen base weights (the run's ``model``).
        lambda_: λ, the weight of the penalty (default 1, the paper's).
        dtype: the dtype the base model is loaded in (differences in float32).
        scale: ``per_step`` (λ per optimizer step) or ``per_micro_batch`` (the
            authors' code: GAS·λ per optimizer step); see the module doc.
        gradient_accumulation_steps: GAS, the micro-batches per optimizer step.
    """

    name = "asft"
    needs_base_model = True
    SCALES = ("per_step", "per_micro_batch")

    def __init__(self, base_model: str, *, base_gguf_file: str | None = None, lambda_: float = 1.0,
                 dtype: str = "float32", scale: str = "per_step", gradient_accumulation_steps: int = 1):
        if scale not in self.SCALES:
            raise ValueError(f"scale={scale!r}: use one of {self.SCALES}")
        if gradient_accumulation_steps < 1:
            raise ValueError("gradient_accumulation_steps must be >= 1")
        self.base_model, self.base_gguf_file, self.lambda_, self.dtype = base_model, base_gguf_file, lambda_, dtype
        self.scale, self.gradient_accumulation_steps = scale, gradient_accumulation_steps
        self.pairs: list[tuple[torch.Tensor, torch.Tensor, AlignmentMatrix]] = []
        self.modules: list[str] = []

    def setup(self, model) -> None:
        """Pair every LoRA module of ``model`` (a RowModel around a peft model) with its alignment matrix."""
        pairs = lora_pairs(model.named_parameters())
        if not pairs:
            raise ValueError("asft regularises LoRA factors, and the model has none (set lora=true)")
        from ..model_rows import causal_lm_of

        aligned = module_weights(causal_lm_of(model.model), pairs)
        alignment = load_alignment("", self.base_model, pairs, base_gguf=self.base_gguf_file, dtype=self.dtype,
                                   aligned_weights=aligned)
        self.modules = sorted(pairs)
        self.pairs = [(pairs[m]["A"], pairs[m]["B"], alignment[m]) for m in self.modules]

    @property
    def weight(self) -> float:
        """The factor of Σ‖(I - C) B A‖²_F in each micro-batch's loss: λ, or GAS·λ with ``per_micro_batch``."""
        return self.lambda_ * (self.gradient_accumulation_steps if self.scale == "per_micro_batch" else 1)

    def penalty(self) -> torch.Tensor:
        """``weight`` · Σ ‖(I - C) B A‖²_F over the model's LoRA modules (float32 scalar with gradient)."""
        if not self.pairs:
            raise RuntimeError("ASFT.penalty() before setup(): call setup(model) with the LoRA model first")
        device = self.pairs[0][1].device
        if self.pairs[0][2].v.device != device:  # DeepSpeed moved the model: move V once
            self.pairs = [(a, b, align.to(device)) for a, b, align in self.pairs]
        return self.weight * basin_penalty(self.pairs)

    def loss(self, batch, policy, reference=None) -> LossResult:
        sft = super().loss(batch, policy)
        penalty = self.penalty()
        return LossResult(sft.loss + penalty.to(sft.loss.dtype), sft.ce_rows, sft.kl_rows, sft.row_weight,
                          penalty.detach())
