"""pact_kernels: the PACT objective as fused, autograd-aware kernels.

Depends on torch (and triton for the GPU backend) only; it knows nothing of
models, tokenizers or DeepSpeed.

    from pact_kernels import pact_loss
    out = pact_loss(logits, labels, ref_full, ref_post, safety_ids, safety_weights, answer_pos)
    out.loss.backward()

or from hidden states and the output head, never holding [rows, V] logits:

    out = fused_linear_pact_loss(hidden, lm_head.weight, labels, ref_full, ref_post, safety_ids,
                                 safety_weights, answer_pos)
"""
from .config import PRESETS, VARIANTS, PACTConfig
from .function import PACTLossFunction
from .fused_linear import FusedLinearPACTLoss, fused_linear_cross_entropy, fused_linear_pact_loss
from .loss import BACKENDS, PACTLoss, pact_loss, pact_loss_from_config, resolve_backend
from .output import PACTLossOutput

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "PRESETS",
    "VARIANTS",
    "FusedLinearPACTLoss",
    "PACTConfig",
    "PACTLoss",
    "PACTLossFunction",
    "PACTLossOutput",
    "fused_linear_cross_entropy",
    "fused_linear_pact_loss",
    "pact_loss",
    "pact_loss_from_config",
    "resolve_backend",
]
