"""The ``triton`` backend: one fused kernel launch for loss, per-row terms and gradient.

:func:`forward_with_grad` follows the protocol of
:func:`pact_kernels.torch_backend.forward_with_grad` (the autograd wrapper is
:class:`pact_kernels.function.PACTLossFunction`). The kernels live in
:mod:`pact_kernels.triton_kernels`; they write per-row ``ce``, ``kl`` and
``gate`` and the gradient already scaled by ``1/n`` (``n``, the labelled
rows, is counted first from the labels alone, on the device, with no host
synchronisation); the means over labelled rows are two small torch sums.

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

from .config import PACTConfig
from .precision import held_gradient_dtype
from .triton_kernels import pact_full_vocab_kernel, pact_safety_set_kernel

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


def forward_with_grad(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_full: torch.Tensor | None,
    ref_post: torch.Tensor | None,
    safety_ids: torch.Tensor,
    safety_weights: torch.Tensor,
    answer_pos: torch.Tensor | None,
    cfg: PACTConfig,
    chunk_rows: int | None = None,
    inplace_grad: bool = False,
):
    """Loss terms and ``d loss / d logits`` in one kernel launch (inputs already checked).

    Args:
        logits: ``[rows, V]`` float32 / bfloat16 / float16 fine-tuned logits z.
        labels: ``[rows]`` integer targets, ``cfg.ignore_index`` on unlabelled rows.
        ref_full: ``[rows, K]`` or ``[rows, V]`` reference logits on the full
            context (``[rows, V]`` for ``full_vocab``), any float dtype.
        ref_post: ``[rows, K]`` or ``[rows, V]`` no-prompt reference logits
            (gated variants only; else ignored, may be None).
        safety_ids: ``[K]`` integer ids of S.
        safety_weights: ``[K]`` float weights (ignored by ``safety_tokens``).
        answer_pos: ``[rows]`` integer answer positions (``pact`` only).
        cfg: the hyper-parameters.
        chunk_rows: ignored (one program per row).
        inplace_grad: write the gradient into ``logits`` itself.

    Returns:
        ``(loss, ce, kl, gate, num_rows, grad, ce_rows, kl_rows)``: float32
        scalars ``loss``, ``ce``, ``kl``; ``gate`` float32 ``[rows]`` (0 on
        unlabelled rows and ungated variants); ``num_rows`` int64 scalar;
        ``grad`` ``[rows, V]`` in :func:`pact_kernels.precision.held_gradient_dtype`
        of the logits' dtype (float32 for float16; the logits tensor itself with
        ``inplace_grad`` otherwise); ``ce_rows``, ``kl_rows`` float32 ``[rows]``
        per-row terms (0 on unlabelled rows).
    """
    del chunk_rows
    _check_supported(logits)
    rows, vocab = logits.shape
    device = logits.device
    z = logits.detach()
    grad_dtype = held_gradient_dtype(z.dtype)
    if inplace_grad and grad_dtype == z.dtype:
        if z.shape[1] * abs(z.stride(1)) >= 2**31:
            raise ValueError("inplace_grad=True needs logits whose rows are contiguous enough for int32 column offsets")
        grad = z
    else:
        z = _column_strided(z)
        grad = torch.empty_like(z, dtype=grad_dtype, memory_format=torch.contiguous_format)

    labels64 = labels.to(torch.int64).contiguous()
    labelled = labels64 != cfg.ignore_index
    n = labelled.sum()
    inv_n = (1.0 / n.clamp_min(1).to(torch.float32)).reshape(1)
    ce_rows = torch.empty(rows, dtype=torch.float32, device=device)
    kl_rows = torch.empty(rows, dtype=torch.float32, device=device)
    gate = torch.empty(rows, dtype=torch.float32, device=device)

    if rows > 0:
        with on_device_of(z):
            _launch(z, grad, labels64, ref_full, ref_post, safety_ids, safety_weights, answer_pos, inv_n,
                    ce_rows, kl_rows, gate, cfg)

    ce = ce_rows.sum() * inv_n[0]
    kl = kl_rows.sum() * inv_n[0]
    loss = ce + cfg.lambda_kl * kl
    return loss, ce, kl, gate, n, grad, ce_rows, kl_rows


def _launch(z, grad, labels64, ref_full, ref_post, safety_ids, safety_weights, answer_pos, inv_n,
            ce_rows, kl_rows, gate, cfg: PACTConfig) -> None:
    """The kernel of ``cfg.variant`` over all rows (the current device is z's)."""
    if cfg.variant == "full_vocab":
        _launch_full_vocab(z, grad, _column_strided(ref_full.detach()), labels64, inv_n, ce_rows, kl_rows, gate, cfg)
    else:
        _launch_safety_set(z, grad, labels64, ref_full, ref_post, safety_ids, safety_weights, answer_pos, inv_n,
                           ce_rows, kl_rows, gate, cfg)


def _launch_safety_set(z, grad, labels64, ref_full, ref_post, safety_ids, safety_weights, answer_pos, inv_n,
                       ce_rows, kl_rows, gate, cfg: PACTConfig) -> None:
    """Launch :func:`pact_safety_set_kernel` over all rows.

    ``z``/``grad`` ``[rows, V]``; ``labels64`` int64 ``[rows]``; refs ``[rows, K]``
    or ``[rows, V]``; ``inv_n`` float32 ``[1]``; outputs float32 ``[rows]``.
    """
    rows, vocab = z.shape
    k = safety_ids.numel()
    ids = safety_ids.to(device=z.device, dtype=torch.int64).contiguous()
    if cfg.variant == "safety_tokens":
        weights = torch.ones(k, dtype=torch.float32, device=z.device)
    else:
        weights = safety_weights.detach().to(torch.float32).contiguous()
    r_full = _column_strided(ref_full.detach())
    # Ungated variants never read r_post / answer_pos: pass r_full / labels as placeholders.
    r_post = _column_strided(ref_post.detach()) if cfg.uses_gate else r_full
    pos = answer_pos.to(torch.int64).contiguous() if cfg.uses_decay else labels64
    block_v, num_warps = launch_config(vocab, two_streams=False, k_pad=padded_k(k))
    pact_safety_set_kernel[(rows,)](
        z, z.stride(0), z.stride(1),
        grad, grad.stride(0), grad.stride(1),
        labels64, ids, weights,
        r_full, r_full.stride(0), r_full.stride(1),
        r_post, r_post.stride(0), r_post.stride(1),
        pos, inv_n,
        ce_rows, kl_rows, gate,
        vocab, k, cfg.ignore_index,
        float(cfg.lambda_kl), float(cfg.mass_threshold), float(cfg.gate_scale), float(cfg.gate_bias),
        float(cfg.gate_temperature), float(cfg.decay_start), float(cfg.decay_tau), float(cfg.kl_temperature),
        RF_GATHER=_is_full_width(r_full, vocab), RP_GATHER=_is_full_width(r_post, vocab),
        USE_GATE=cfg.uses_gate, USE_DECAY=cfg.uses_decay,
        BLOCK_V=block_v, K_PAD=padded_k(k), num_warps=num_warps,
    )


def _is_full_width(ref: torch.Tensor, vocab_size: int) -> bool:
    """True for a ``[rows, V]`` reference (gathered in the kernel), as :func:`naive_backend.on_safety_set` decides."""
    return ref.shape[1] == vocab_size


def _launch_full_vocab(z, grad, ref_full, labels64, inv_n, ce_rows, kl_rows, gate, cfg: PACTConfig) -> None:
    """Launch :func:`pact_full_vocab_kernel` over all rows (``ref_full`` ``[rows, V]``)."""
    rows, vocab = z.shape
    block_v, num_warps = launch_config(vocab, two_streams=True)
    pact_full_vocab_kernel[(rows,)](
        z, z.stride(0), z.stride(1),
        grad, grad.stride(0), grad.stride(1),
        ref_full, ref_full.stride(0), ref_full.stride(1),
        labels64, inv_n,
        ce_rows, kl_rows, gate,
        vocab, cfg.ignore_index, float(cfg.lambda_kl), float(cfg.kl_temperature),
        UNIT_TEMPERATURE=cfg.kl_temperature == 1.0, BLOCK_V=block_v, num_warps=num_warps,
    )
