"""Training objectives of the driver: one class per method, one module each.

- :mod:`.base`: :class:`Method` (the interface), :class:`LossResult`,
  :class:`HeadRows` (the policy as hidden rows + output head, ``fused_linear``),
  :class:`SFT` and :class:`PACT` (every rung of the ablation ladder, and
  ``full_vocab_kl``);
- :mod:`.constrained_sft`: the token-wise constrained objective of Qi et al. 2024;
- :mod:`.safe_lora`: SafeLoRA (Hsu et al. 2024), a projection after training;
- :mod:`.asft`: AsFT (Yang et al. 2025), a regulariser during training;
- :mod:`.alignment`: aligned-minus-base weights per module, shared by the last two.

:func:`.build.build_method` maps ``method=`` to a class (for the driver and
:class:`pact.trl.PACTTrainer`); add a method by subclassing :class:`Method` in
its own module and naming it there.
"""
from .base import PACT, SFT, HeadRows, LossResult, Method, policy_cross_entropy
from .constrained_sft import ConstrainedSFT
from .safe_lora import SafeLoRA
from .asft import ASFT
from .build import build_method

__all__ = ["ASFT", "ConstrainedSFT", "HeadRows", "LossResult", "Method", "PACT", "SFT", "SafeLoRA",
           "build_method", "policy_cross_entropy"]
