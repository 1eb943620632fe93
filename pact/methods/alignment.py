"""The alignment direction of SafeLoRA and AsFT: aligned minus base weights, per module, by name.

For every LoRA target module with weight ``W`` of shape ``[out, in]``:

    V = W_aligned - W_base              [out, in]
    C = V Vᵀ / ‖V‖_F                    [out, out]

``C`` divides by the Frobenius norm, not its square, so it is not a
projection (its one eigenvalue for a rank-1 ``V`` is ‖V‖_F, not 1): that is
the definition of the SafeLoRA code (Hsu et al. 2024, ``IBM/SafeLoRA``; the
``peft`` port is an unmerged pull request), which AsFT (Yang et al. 2025)
reuses. We keep it as is.

``C`` is never formed: :class:`AlignmentMatrix` keeps ``V`` and applies
``C M = V (Vᵀ M) / ‖V‖_F`` to an ``[out, k]`` matrix in O(out·in·k), so a
4096-wide layer costs a copy of its weight, not a 4096² matrix.

Modules are paired by name (``model.layers.0.self_attn.q_proj``), never by
the order of ``named_parameters`` (the public code zips two parameter lists,
which silently mispairs when a model has biases or a different layout).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_LORA_PARAM = re.compile(r"^(?:.*?base_model\.model\.)?(?P<module>.+?)\.lora_(?P<factor>[AB])(?:\.[^.]+)?\.weight$")


def lora_module_name(param_name: str) -> tuple[str, str] | None:
    """``(module, "A" | "B")`` of a LoRA factor's parameter name, or None for any other parameter.

    Accepts the names of a live peft model (``...q_proj.lora_A.default.weight``,
    with any prefix up to ``base_model.model.``) and of a saved adapter file
    (``base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight``); both
    give the module name of the plain ``transformers`` model
    (``model.layers.0.self_attn.q_proj``).
    """
    m = _LORA_PARAM.match(param_name)
    return (m.group("module"), m.group("factor")) if m else None


def lora_pairs(named_tensors) -> dict[str, dict[str, torch.Tensor]]:
    """Group LoRA factors by module: ``{module: {"A": [r, in], "B": [out, r]}}``.

    Args:
        named_tensors: ``(name, tensor)`` pairs (``named_parameters()`` or a state dict's items).

    Raises:
        ValueError: a module with only one of its two factors.
    """
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in named_tensors:
        found = lora_module_name(name)
        if found:
            module, factor = found
            pairs.setdefault(module, {})[factor] = tensor
    broken = sorted(m for m, p in pairs.items() if set(p) != {"A", "B"})
    if broken:
        raise ValueError(f"LoRA modules with only one factor (need lora_A and lora_B): {broken}")
    return pairs


def module_weights(model, names) -> dict[str, torch.Tensor]:
    """The ``[out, in]`` weights of the named linear modules of a ``transformers`` model, float32 copies.

    A peft-wrapped module (``base_layer``) gives its frozen base weight.

    Raises:
        ValueError: a name the model does not have, or a module without a 2-D weight.
    """
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        module = modules.get(name)
        if module is None:
            raise ValueError(f"the model has no module named {name!r}")
        module = getattr(module, "base_layer", module)
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() != 2:
            raise ValueError(f"module {name!r} has no [out, in] weight")
        out[name] = weight.detach().to(device="cpu", dtype=torch.float32).clone()
    return out


def load_module_weights(model_ref: str, names, *, gguf_file: str | None = None, dtype: str = "float32"):
    """Load a model on the CPU (in ``dtype``) and return :func:`module_weights` of ``names``; the model is freed."""
    from ..models import load_model

    model = load_model(model_ref, gguf_file=gguf_file, dtype=dtype)
    try:
        return module_weights(model, names)
    finally:
        del model


@dataclass
class AlignmentMatrix:
    """``C = V Vᵀ / ‖V‖_F`` of one module, kept as ``V``.

    Attributes:
        v: ``[out, in]`` float32, aligned minus base weight.
        norm: ‖V‖_F (a positive float).
    """

    v: torch.Tensor
    norm: float

    @classmethod
    def from_weights(cls, aligned: torch.Tensor, base: torch.Tensor, name: str = "?") -> "AlignmentMatrix":
        """From the two ``[out, in]`` weights of one module."""
        if aligned.shape != base.shape:
            raise ValueError(f"module {name!r}: aligned weight {tuple(aligned.shape)} and base weight "
                             f"{tuple(base.shape)} differ in shape; base_model must be the same architecture")
        v = aligned.detach().float() - base.detach().float()
        norm = float(torch.linalg.matrix_norm(v))
        if norm == 0.0:
            raise ValueError(f"module {name!r}: the aligned and base weights are identical, so there is no "
                             "alignment direction; base_model must be the unaligned model the aligned one came from")
        return cls(v, norm)

    def to(self, device) -> "AlignmentMatrix":
        return AlignmentMatrix(self.v.to(device), self.norm)

    def apply(self, m: torch.Tensor) -> torch.Tensor:
        """``C @ m`` for ``m`` of shape ``[out, k]`` (float32; differentiable in ``m``)."""
        v = self.v.to(device=m.device)
        return v @ (v.transpose(0, 1) @ m.float()) / self.norm

    def dense(self) -> torch.Tensor:
        """``C`` itself, ``[out, out]`` float32 (for checks on small modules)."""
        return self.v @ self.v.transpose(0, 1) / self.norm


def alignment_matrices(aligned: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict[str, AlignmentMatrix]:
    """One :class:`AlignmentMatrix` per module name of ``aligned``, paired with ``base`` by name.

    Raises:
        ValueError: a module missing from ``base``, a shape mismatch, or identical weights.
    """
    missing = sorted(set(aligned) - set(base))
    if missing:
        raise ValueError(f"base_model has no module(s) {missing}; it must be the same architecture as model")
    return {name: AlignmentMatrix.from_weights(aligned[name], base[name], name) for name in aligned}


def load_alignment(aligned_ref: str, base_ref: str, names, *, aligned_gguf: str | None = None,
                   base_gguf: str | None = None, dtype: str = "float32",
                   aligned_weights: dict[str, torch.Tensor] | None = None) -> dict[str, AlignmentMatrix]:
    """The alignment matrices of the modules ``names``, loading the two models one after the other on the CPU.

    ``aligned_weights``: the aligned model's weights when they are already in
    memory (then ``aligned_ref`` is not loaded).
    """
    names = sorted(names)
    if aligned_weights is None:
        aligned_weights = load_module_weights(aligned_ref, names, gguf_file=aligned_gguf, dtype=dtype)
    base_weights = load_module_weights(base_ref, names, gguf_file=base_gguf, dtype=dtype)
    return alignment_matrices(aligned_weights, base_weights)
