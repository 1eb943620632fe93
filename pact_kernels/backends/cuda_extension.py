"""The ``cuda`` backend: the fused kernel of ``csrc/`` (CUDA C++), one launch for loss and gradient.

:func:`forward_with_grad` follows the protocol of :mod:`pact_kernels.backends`
and mirrors :mod:`pact_kernels.backends.triton_launch`: the kernel writes
per-row ``ce``, ``kl`` and ``gate`` and the gradient already scaled by ``1/n``
(``n`` counted on the device from the labels, no host synchronisation); the
means are the shared epilogue's (:func:`pact_kernels.backends.common.finish`).

The kernels live in the optional extension ``pact_kernels._cuda``, built only
on request::

    PACT_BUILD_CUDA=1 pip install --no-build-isolation -e .

on a machine with a CUDA build of torch and ``nvcc``. Without it, importing
this module works and :func:`forward_with_grad` raises
:class:`CUDABackendNotBuilt` saying so.

Inputs in float32 / bfloat16 / float16 (float32 accumulation); K ≤ 1024 for
the safety-set variants (the K values live in shared memory).
"""
from __future__ import annotations

import torch

from ..config import PACTConfig
from ..inputs import PACTInputs
from ..output import KernelResult
from .common import count_labelled, finish, gradient_buffer, writes_in_place

try:
    from .. import _cuda  # the compiled extension (csrc/)
except ImportError as error:  # not built: reported when the backend is used
    _cuda = None
    _IMPORT_ERROR: ImportError | None = error
else:
    _IMPORT_ERROR = None

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_K = 1024  # pact::kMaxK in csrc/pact_loss.h
BUILD_COMMAND = "PACT_BUILD_CUDA=1 pip install --no-build-isolation -e ."


class CUDABackendNotBuilt(RuntimeError):
    """``backend='cuda'`` was asked for but the ``pact_kernels._cuda`` extension is not built."""


def is_built() -> bool:
    """True when the compiled extension ``pact_kernels._cuda`` is importable."""
    return _cuda is not None


def _require_extension():
    if _cuda is None:
        raise CUDABackendNotBuilt(
            "backend='cuda' needs the compiled extension pact_kernels._cuda, which was not built "
            f"(import failed: {_IMPORT_ERROR}). Build it on a machine with a CUDA build of torch and nvcc: "
            f"`{BUILD_COMMAND}` (or `PACT_BUILD_CUDA=1 python setup.py build_ext --inplace`); "
            "or use backend='triton' or backend='torch'."
        )
    return _cuda


def _check_supported(logits: torch.Tensor, cfg: PACTConfig, k: int) -> None:
    if logits.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"backend='cuda' takes float32, bfloat16 or float16 logits, got {logits.dtype}: its kernels "
            "accumulate in float32; use backend='torch' or backend='naive' for float64"
        )
    if cfg.variant != "full_vocab" and k > MAX_K:
        raise ValueError(f"backend='cuda' takes at most K = {MAX_K} safety tokens, got {k}; use backend='triton'")
    if not logits.is_cuda:
        raise RuntimeError("backend='cuda' needs CUDA tensors; use backend='torch' on the CPU")


def _unit_columns(t: torch.Tensor) -> torch.Tensor:
    """``t`` when its columns are adjacent in memory, else a contiguous copy."""
    if t.shape[1] <= 1 or t.stride(1) == 1:
        return t
    return t.contiguous()


def _kernel_ref(t: torch.Tensor) -> torch.Tensor:
    """A reference input the kernel reads: float32/bf16/fp16 (float64 becomes float32), unit column stride."""
    t = t.detach()
    if t.dtype not in SUPPORTED_DTYPES:
        t = t.to(torch.float32)
    return _unit_columns(t)


def forward_with_grad(logits: torch.Tensor, inputs: PACTInputs, cfg: PACTConfig, *, chunk_rows=None,
                      inplace_grad: bool = False) -> KernelResult:
    """Loss terms and ``d loss / d logits`` in one kernel launch (the protocol of :mod:`pact_kernels.backends`).

    ``chunk_rows`` is ignored (one block per row); ``inplace_grad`` writes the
    gradient into ``logits`` itself (float16: a float32 buffer).
    """
    del chunk_rows
    ext = _require_extension()
    k = inputs.safety_ids.numel()
    _check_supported(logits, cfg, k)
    rows, vocab = logits.shape
    z = logits.detach()
    if writes_in_place(z, inplace_grad):
        if vocab > 1 and z.stride(1) != 1:
            raise ValueError("inplace_grad=True with backend='cuda' needs logits with a unit column stride")
    else:
        z = _unit_columns(z)
    grad = gradient_buffer(z, inplace_grad, torch.contiguous_format)  # float32 for float16 (csrc: HeldGrad)
    labels64 = inputs.labels.to(torch.int64).contiguous()
    labelled, n, inv_n = count_labelled(labels64, cfg.ignore_index, torch.float32)
    full_vocab = cfg.variant == "full_vocab"
    r_full = _kernel_ref(inputs.ref_full)
    # Ungated variants never read r_post / answer_pos: pass r_full / labels as placeholders.
    r_post = _kernel_ref(inputs.ref_post) if cfg.uses_gate and not full_vocab else r_full
    r_post = r_post.to(r_full.dtype)
    pos = inputs.answer_pos.to(torch.int64).contiguous() if cfg.uses_decay else labels64
    if rows == 0:
        empty = torch.zeros(0, dtype=torch.float32, device=z.device)
        return finish(empty, empty, empty, labelled, n, cfg, grad)
    ce_rows, kl_rows, gate, grad = ext.forward(
        z, grad, labels64, inputs.safety_ids.to(device=z.device, dtype=torch.int64).contiguous(),
        inputs.kl_weights(cfg, torch.float32).to(z.device).contiguous(), r_full, r_post, pos,
        inv_n.reshape(1), r_full.shape[1] == vocab, r_post.shape[1] == vocab, cfg.uses_gate and not full_vocab,
        cfg.uses_decay, full_vocab, int(cfg.ignore_index),
        float(cfg.lambda_kl), float(cfg.mass_threshold), float(cfg.gate_scale), float(cfg.gate_bias),
        float(cfg.gate_temperature), float(cfg.decay_start), float(cfg.decay_tau), float(cfg.kl_temperature),
    )
    return finish(ce_rows, kl_rows, gate, labelled, n, cfg, grad)
