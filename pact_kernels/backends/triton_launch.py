"""The ``triton`` backend: one fused kernel launch for loss, per-row terms and gradient.

:func:`forward_with_grad` follows the protocol of :mod:`pact_kernels.backends`
(the autograd wrapper is :class:`pact_kernels.autograd.PACTLossFunction`). The
kernels live in :mod:`pact_kernels.backends.triton_kernels`; they write per-row ``ce``, ``kl`` and
``gate`` and the gradient already scaled by ``1/n`` (``n``, the labelled
rows, is counted first from the labels alone, on the device, with no host
synchronisation); the means over labelled rows are the shared epilogue's
(:func:`pact_kernels.backends.common.finish`).

Inputs in float32 / bfloat16 / float16 (float32 accumulation). float64 is
refused: the kernels accumulate in float32, so they cannot honour a float64
caller's precision; use ``backend="torch"`` or ``"naive"`` for float64.

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1``.
Every launch is made on the logits' device and that device's current stream
(:func:`on_device_of`), as the CUDA backend's launches are: logits on
``cuda:1`` while ``cuda:0`` is current (a model spread with
``device_map="auto"``) run where they live.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton

from ..config import PACTConfig
from ..inputs import PACTInputs
from ..output import KernelResult
from .common import count_labelled, finish, gradient_buffer, writes_in_place
from .triton_kernels import cross_entropy_kernel, pact_full_vocab_kernel, pact_safety_set_kernel

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Columns of z one program holds per step of a sweep, with 32 warps (8 to 32
# columns a thread). Wide steps keep many bytes in flight per SM; these widths
# compile for sm_90 without register spills in the sweep loops, for rows
# aligned to 16 elements or not (python -m checks.compile_check): 32768 for
# the one-stream kernel (as Liger-Kernel's cross-entropy), 8192 for the
# two-stream full_vocab one. PACT_TRITON_BLOCK_V,
# PACT_TRITON_FULL_VOCAB_BLOCK_V and PACT_TRITON_NUM_WARPS override them
# (benchmarks/tune_triton.py compares settings on a GPU).
SAFETY_SET_BLOCK_V = int(os.environ.get("PACT_TRITON_BLOCK_V", "32768"))
# With more than 512 safety tokens (K_PAD 1024) the K values held across the sweeps leave too few of
# the 64 registers a thread has at 32 warps: 32768-column steps spill inside the sweep loops for rows
# not aligned to 16 elements or column-strided logits (bf16: 4 spill instructions in loops, fp16: 6;
# python -m checks.compile_check); 16384-column steps do not.
LARGE_K_PAD = 512
LARGE_K_BLOCK_V = 16384
FULL_VOCAB_BLOCK_V = int(os.environ.get("PACT_TRITON_FULL_VOCAB_BLOCK_V", "8192"))
NUM_WARPS = int(os.environ.get("PACT_TRITON_NUM_WARPS", "0"))  # 0: from the block size


def launch_config(vocab_size: int, two_streams: bool, k_pad: int = 2) -> tuple:
    """``(BLOCK_V, num_warps)``: the next power of two of V, capped (at :data:`LARGE_K_BLOCK_V` too when
    ``k_pad`` > :data:`LARGE_K_PAD`); 256 columns per warp (4 to 32 warps)."""
    cap = FULL_VOCAB_BLOCK_V if two_streams else SAFETY_SET_BLOCK_V
    if not two_streams and k_pad > LARGE_K_PAD:
        cap = min(cap, LARGE_K_BLOCK_V)
    block = min(cap, triton.next_power_of_2(vocab_size))
    warps = NUM_WARPS or min(32, max(4, block // 256))
    return block, warps


def padded_k(k: int) -> int:
    """K rounded up to a power of two (at least 2, the smallest width tl.sort takes)."""
    return max(2, triton.next_power_of_2(k))


def _check_supported(logits: torch.Tensor) -> None:
    if logits.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"backend='triton' takes float32, bfloat16 or float16 logits, got {logits.dtype}: its kernels "
            "accumulate in float32; use backend='torch' or backend='naive' for float64"
        )
    if not logits.is_cuda and not triton_interpreting():
        raise RuntimeError(
            "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the kernels on the CPU); "
            "use backend='torch' on the CPU"
        )


def on_device_of(t: torch.Tensor):
    """A context making ``t``'s CUDA device the current one (triton launches on the current device and its
    current stream); a no-op context for CPU tensors (the interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def triton_interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1`` makes triton run kernels on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _column_strided(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its column offsets fit in int32, else a contiguous copy."""
    if t.shape[1] * abs(t.stride(1)) < 2**31:
        return t
    return t.contiguous()


def forward_with_grad(logits: torch.Tensor, inputs: PACTInputs, cfg: PACTConfig, *, chunk_rows=None,
                      inplace_grad: bool = False) -> KernelResult:
    """Loss terms and ``d loss / d logits`` in one kernel launch (the protocol of :mod:`pact_kernels.backends`).

    ``logits`` ``[rows, V]`` float32 / bfloat16 / float16; the references in
    any float dtype. ``chunk_rows`` is ignored (one program per row);
    ``inplace_grad`` writes the gradient into ``logits`` itself (float16: a
    float32 buffer, :func:`pact_kernels.precision.held_gradient_dtype`).
    """
    del chunk_rows
    _check_supported(logits)
    z, grad = _logits_and_gradient(logits, inplace_grad)
    rows = z.shape[0]
    labels64 = inputs.labels.to(torch.int64).contiguous()
    labelled, n, inv_n = count_labelled(labels64, cfg.ignore_index, torch.float32)
    ce_rows, kl_rows, gate = (torch.empty(rows, dtype=torch.float32, device=z.device) for _ in range(3))
    if rows > 0:
        with on_device_of(z):
            out = (ce_rows, kl_rows, gate)
            if cfg.variant == "full_vocab":
                _launch_full_vocab(z, grad, _column_strided(inputs.ref_full.detach()), labels64, inv_n, out, cfg)
            else:
                _launch_safety_set(z, grad, labels64, inputs, inv_n.reshape(1), out, cfg)
    return finish(ce_rows, kl_rows, gate, labelled, n, cfg, grad)


def _logits_and_gradient(logits: torch.Tensor, inplace_grad: bool):
    """``(z, grad)``: the logits the kernel reads (a copy when column offsets overflow int32) and its gradient
    buffer (``z`` itself in place)."""
    z = logits.detach()
    if writes_in_place(z, inplace_grad):
        if z.shape[1] * abs(z.stride(1)) >= 2**31:
            raise ValueError("inplace_grad=True needs logits whose rows are contiguous enough for int32 column offsets")
    else:
        z = _column_strided(z)
    return z, gradient_buffer(z, inplace_grad, torch.contiguous_format)


def _launch_safety_set(z, grad, labels64, inputs: PACTInputs, inv_n, out, cfg: PACTConfig) -> None:
    """Launch :func:`pact_safety_set_kernel` over all rows.

    ``z``/``grad`` ``[rows, V]``; ``labels64`` int64 ``[rows]``; ``inv_n`` float32
    ``[1]``; ``out``: the ``ce``, ``kl``, ``gate`` float32 ``[rows]`` outputs.
    """
    rows, vocab = z.shape
    k = inputs.safety_ids.numel()
    ids = inputs.safety_ids.to(device=z.device, dtype=torch.int64).contiguous()
    weights = inputs.kl_weights(cfg, torch.float32).contiguous()
    r_full = _column_strided(inputs.ref_full.detach())
    # Ungated variants never read r_post / answer_pos: pass r_full / labels as placeholders.
    r_post = _column_strided(inputs.ref_post.detach()) if cfg.uses_gate else r_full
    pos = inputs.answer_pos.to(torch.int64).contiguous() if cfg.uses_decay else labels64
    block_v, num_warps = launch_config(vocab, two_streams=False, k_pad=padded_k(k))
    pact_safety_set_kernel[(rows,)](
        z, z.stride(0), z.stride(1),
        grad, grad.stride(0), grad.stride(1),
        labels64, ids, weights,
        r_full, r_full.stride(0), r_full.stride(1),
        r_post, r_post.stride(0), r_post.stride(1),
        pos, inv_n, *out,
        vocab, k, cfg.ignore_index,
        float(cfg.lambda_kl), float(cfg.mass_threshold), float(cfg.gate_scale), float(cfg.gate_bias),
        float(cfg.gate_temperature), float(cfg.decay_start), float(cfg.decay_tau), float(cfg.kl_temperature),
        RF_GATHER=_is_full_width(r_full, vocab), RP_GATHER=_is_full_width(r_post, vocab),
        USE_GATE=cfg.uses_gate, USE_DECAY=cfg.uses_decay,
        BLOCK_V=block_v, K_PAD=padded_k(k), num_warps=num_warps,
    )


def _is_full_width(ref: torch.Tensor, vocab_size: int) -> bool:
    """True for a ``[rows, V]`` reference (gathered in the kernel), as :func:`pact_kernels.inputs.on_safety_set`
    decides."""
    return ref.shape[1] == vocab_size


def _launch_full_vocab(z, grad, ref_full, labels64, inv_n, out, cfg: PACTConfig) -> None:
    """Launch :func:`pact_full_vocab_kernel` over all rows (``ref_full`` ``[rows, V]``)."""
    rows, vocab = z.shape
    block_v, num_warps = launch_config(vocab, two_streams=True)
    pact_full_vocab_kernel[(rows,)](
        z, z.stride(0), z.stride(1),
        grad, grad.stride(0), grad.stride(1),
        ref_full, ref_full.stride(0), ref_full.stride(1),
        labels64, inv_n.reshape(1), *out,
        vocab, cfg.ignore_index, float(cfg.lambda_kl), float(cfg.kl_temperature),
        UNIT_TEMPERATURE=cfg.kl_temperature == 1.0, BLOCK_V=block_v, num_warps=num_warps,
    )


def cross_entropy_with_grad(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, *,
                            inplace_grad: bool = False):
    """Plain cross-entropy of ``logits`` ``[rows, V]`` (float32 / bfloat16 / float16) in one launch.

    Returns ``(ce_rows, n, grad)``: ``ce_rows`` float32 ``[rows]`` (0 on
    ``ignore_index`` rows), ``n`` the labelled rows (int64 scalar), ``grad =
    (softmax(z) − onehot(y))/n`` (0 on ignored rows) in the held gradient dtype,
    ``logits`` itself with ``inplace_grad`` (as :func:`forward_with_grad`).
    """
    _check_supported(logits)
    z, grad = _logits_and_gradient(logits, inplace_grad)
    rows, vocab = z.shape
    labels64 = labels.to(torch.int64).contiguous()
    _, n, inv_n = count_labelled(labels64, ignore_index, torch.float32)
    ce_rows = torch.empty(rows, dtype=torch.float32, device=z.device)
    if rows > 0:
        block_v, num_warps = launch_config(vocab, two_streams=False)
        with on_device_of(z):
            cross_entropy_kernel[(rows,)](
                z, z.stride(0), z.stride(1), grad, grad.stride(0), grad.stride(1),
                labels64, inv_n.reshape(1), ce_rows, vocab, ignore_index,
                BLOCK_V=block_v, num_warps=num_warps,
            )
    return ce_rows, n, grad
