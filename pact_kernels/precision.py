"""The dtype policy of every loss in ``pact_kernels``, in one place.

* **Compute dtype of the fused head** (:func:`head_compute_dtype`): with
  autocast on for the tensors' device type, the autocast dtype (bfloat16 /
  float16), as ``torch.nn.functional.linear`` would run; else the head
  weight's dtype (``hidden`` and ``weight`` of one dtype: that dtype). The
  hidden rows, the weight (and bias, and the reference head of ``full_vocab``)
  are cast to it, so every GEMM of the head (the logits ``hidden @ weight.T``,
  ``d hidden = g @ weight``, ``d weight = gᵀ @ hidden``) runs in it. float64
  inputs are never lowered (autocast does not touch float64 either).
* **Accumulation** (:func:`accumulate_dtype`): float32 (float64 for float64
  inputs). Log-sum-exp, softmaxes, the K-column work, per-row terms, the
  means and the fused head's ``d weight`` / ``d bias`` across chunks are
  float32; gradients are cast to their input's dtype once, at the end.
* **Gradient held between forward and backward** (:func:`held_gradient_dtype`):
  the fused backends make ``d loss / d input`` in the forward and backward
  multiplies it by the incoming gradient (a loss scale, ``1/accumulation``).
  For float16 that gradient is held in float32, so entries below float16's
  range (``softmax(z)/n`` at V = 32000, n = 4096 is ~1e-8) survive until the
  loss scale (GradScaler's 2**16) lifts them, and 2**16 itself (above
  float16's maximum, 65504) never becomes inf; it is cast to float16 after
  the multiplication. bfloat16 and float32 gradients are held in their own
  dtype (bfloat16 has float32's range).
* **pact_loss** (logits given) computes in float32 from logits of any of
  float32 / bfloat16 / float16 (float64 from float64) and hands back a
  gradient of the logits' dtype.
* Autocast is switched off inside the losses: the policy above, not the
  ambient autocast, decides the dtype of each op.

Tolerances against the float64 oracle that the tests hold
(:data:`RELATIVE_TOLERANCE`, norm-wise relative error of the loss and of each
gradient) follow from the rounding of the inputs and of the GEMMs.
"""
from __future__ import annotations

import contextlib

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)

# Norm-wise relative error of loss and gradients against the float64 oracle
# on the same (rounded) inputs, by compute dtype; what tests/kernels/test_precision.py asserts.
# Measured (CPU, torch and triton interpreter, rows 10, H 16, V 96, K 7): float32 ≤ 2.3e-7,
# bfloat16 ≤ 6.3e-3 (autocast, bf16 weights, float32 hidden on a bf16 head), float16 with a 2**16
# loss scale ≤ 3.7e-4.
RELATIVE_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type`` (``"cuda"``, ``"cpu"``), or None when autocast is off."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def head_compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the fused head's GEMMs run in, for ``hidden [rows, H]`` and ``weight [V, H]``.

    The autocast dtype of their device type when autocast is on and neither is
    float64; else ``weight``'s dtype (the head's own precision: casting the
    ``[rows, H]`` hidden rows is cheap, casting the ``[V, H]`` head is not).
    """
    if torch.float64 not in (hidden.dtype, weight.dtype):
        amp = autocast_dtype(hidden.device.type)
        if amp is not None:
            return amp
    return weight.dtype


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64, else float32: the dtype sums and gradient accumulators use."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def held_gradient_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a gradient of an input of ``dtype`` is held in between forward and backward (float16: float32)."""
    return torch.float32 if dtype == torch.float16 else dtype


def autocast_off(device_type: str):
    """A context with autocast disabled on ``device_type`` (a no-op context when it is already off)."""
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)
