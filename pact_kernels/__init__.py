"""pact_kernels: the PACT objective as fused, autograd-aware kernels.

Depends on torch (and triton for the GPU backend) only; it knows nothing of
models, tokenizers or DeepSpeed.

    from pact_kernels import pact_loss
    out = pact_loss(logits, labels, ref_full, ref_post, safety_ids, safety_weights, answer_pos)
    out.loss.backward()

or from hidden states and the output head, never holding [rows, V] logits:

    out = fused_linear_pact_loss(hidden, lm_head.weight, labels, ref_full, ref_post, safety_ids,
                                 safety_weights, answer_pos)

Layout: :mod:`.api` (``pact_loss``), :mod:`.inputs` (:class:`PACTInputs`, the
targets and references with their checks), :mod:`.config`, :mod:`.autograd`
(the Function of the fused backends), :mod:`.backends` (naive, torch, triton,
cuda: one ``forward_with_grad`` protocol), :mod:`.fused_linear` and
:mod:`.cross_entropy` (from hidden states, through :mod:`.linear_head`),
:mod:`.formulas`, :mod:`.nonfinite`, :mod:`.precision`.
"""
from .api import BACKENDS, PACTLoss, pact_loss, pact_loss_from_config, resolve_backend
from .autograd import PACTLossFunction
from .config import PRESETS, VARIANTS, PACTConfig
from .cross_entropy import fused_linear_cross_entropy
from .fused_linear import FusedLinearPACTLoss, fused_linear_pact_loss
from .inputs import PACTInputs
from .output import PACTLossOutput

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "PRESETS",
    "VARIANTS",
    "FusedLinearPACTLoss",
    "PACTConfig",
    "PACTInputs",
    "PACTLoss",
    "PACTLossFunction",
    "PACTLossOutput",
    "fused_linear_cross_entropy",
    "fused_linear_pact_loss",
    "pact_loss",
    "pact_loss_from_config",
    "resolve_backend",
]
