"""Input checks for :func:`pact_kernels.pact_loss`.

Every check runs before any work, and each error names the argument and says
how to fix it. The value checks (ids, weights, labels) read small tensors
only, on their device, and come back to the host together: on CUDA one
device synchronisation per call, the only one in ``pact_kernels``.
"""
from __future__ import annotations

import math

import torch

from .config import PACTConfig

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _check_float_matrix(name: str, t: torch.Tensor, rows: int, widths: tuple, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; use float32, bfloat16, float16 or float64")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but logits are on {device}; move it with .to(logits.device)")
    if t.dim() != 2 or t.shape[0] != rows or t.shape[1] not in widths:
        allowed = " or ".join(f"[{rows}, {w}]" for w in widths)
        raise ValueError(
            f"{name} has shape {list(t.shape)}; expected {allowed} (one row per logits row; "
            f"the reference gathered on the K safety ids, or over the whole vocabulary)"
        )


def _check_index_vector(name: str, t: torch.Tensor, length: int, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} has dtype {t.dtype}; use an integer dtype (torch.long)")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but logits are on {device}; move it with .to(logits.device)")
    if t.dim() != 1 or (length >= 0 and t.shape[0] != length):
        want = f"[{length}]" if length >= 0 else "a 1-D tensor"
        raise ValueError(f"{name} has shape {list(t.shape)}; expected {want}")


def check_inputs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_full: torch.Tensor | None,
    ref_post: torch.Tensor | None,
    safety_ids: torch.Tensor,
    safety_weights: torch.Tensor,
    answer_pos: torch.Tensor | None,
    cfg: PACTConfig,
) -> None:
    """Raise TypeError / ValueError for any input that :func:`pact_loss` cannot use.

    Shapes: ``logits [rows, V]``, ``labels [rows]``, ``ref_full`` / ``ref_post``
    ``[rows, K]`` or ``[rows, V]``, ``safety_ids [K]``, ``safety_weights [K]``,
    ``answer_pos [rows]``.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"logits has dtype {logits.dtype}; use float32, bfloat16, float16 or float64")
    if logits.dim() != 2:
        raise ValueError(
            f"logits has shape {list(logits.shape)}; expected [rows, V] "
            "(flatten batch and sequence first: logits.flatten(0, -2), labels.flatten())"
        )
    rows, vocab = logits.shape
    device = logits.device
    _check_index_vector("labels", labels, rows, device)
    _check_index_vector("safety_ids", safety_ids, -1, device)
    k = safety_ids.shape[0]
    if k == 0:
        raise ValueError("safety_ids is empty; pass at least one safety token id")
    if k > vocab:
        raise ValueError(f"safety_ids has {k} entries but the vocabulary has only {vocab} tokens")

    if not isinstance(safety_weights, torch.Tensor):
        raise TypeError(f"safety_weights must be a torch.Tensor, got {type(safety_weights).__name__}")
    if not safety_weights.dtype.is_floating_point:
        raise TypeError(f"safety_weights has dtype {safety_weights.dtype}; use a floating dtype (float32)")
    if safety_weights.device != device:
        raise ValueError(
            f"safety_weights is on {safety_weights.device} but logits are on {device}; "
            "move it with .to(logits.device)"
        )
    if safety_weights.shape != (k,):
        raise ValueError(f"safety_weights has shape {list(safety_weights.shape)}; expected [{k}], one per safety id")

    if cfg.variant == "full_vocab":
        if ref_full is None:
            raise ValueError("variant='full_vocab' needs ref_full, the reference logits over the whole vocabulary")
        _check_float_matrix("ref_full", ref_full, rows, (vocab,), device)
    else:
        if ref_full is None:
            raise ValueError("ref_full is None; pass the frozen reference's logits on the full context")
        _check_float_matrix("ref_full", ref_full, rows, (k, vocab), device)
    if cfg.uses_gate:
        if ref_post is None:
            raise ValueError(
                f"variant={cfg.variant!r} needs ref_post, the reference's logits on the no-prompt view; "
                "pass it, or use variant='safety_weights' for a reference without calibration"
            )
        _check_float_matrix("ref_post", ref_post, rows, (k, vocab), device)
    if cfg.uses_decay:
        if answer_pos is None:
            raise ValueError(
                "variant='pact' needs answer_pos, each row's 0-based index within its answer; "
                "pass it, or use variant='response_only_ref' for a gate without position decay"
            )
    if answer_pos is not None:
        _check_index_vector("answer_pos", answer_pos, rows, device)

    # Value checks, on the device and gathered into one host transfer (the call's only synchronisation).
    ids = safety_ids.long()
    w = safety_weights.float()
    labelled = labels != cfg.ignore_index
    flags = torch.stack(
        [
            ((ids < 0) | (ids >= vocab)).any(),
            (ids.sort().values.diff() == 0).any(),
            (~torch.isfinite(w)).any(),
            (w < 0).any(),
            ~(w > 0).any(),
            (labelled & ((labels < 0) | (labels >= vocab))).any(),
            (labelled & (answer_pos < 0)).any() if answer_pos is not None else labelled.new_zeros(()),
        ]
    ).tolist()
    bad_range, dupes, nonfinite_w, negative_w, no_positive_w, bad_labels, bad_pos = flags
    if bad_range:
        raise ValueError(f"safety_ids has ids outside [0, {vocab}); ids must index the logits' vocabulary")
    if dupes:
        raise ValueError("safety_ids has duplicate ids; each safety token must appear once")
    if nonfinite_w:
        raise ValueError("safety_weights has NaN or infinite entries; weights must be finite and >= 0")
    if negative_w:
        raise ValueError("safety_weights has negative entries; weights must be >= 0 (clip them with .clamp_min(0))")
    if no_positive_w:
        raise ValueError("safety_weights has no positive entry; at least one safety token must weigh more than 0")
    if bad_labels:
        raise ValueError(
            f"labels has values outside [0, {vocab}) other than ignore_index={cfg.ignore_index}; "
            "mask prompt and padding positions with ignore_index"
        )
    if bad_pos:
        raise ValueError("answer_pos is negative on a labelled row; it must be the 0-based index within the answer")


def _check_linear(name: str, t, shape: tuple, like: torch.Tensor, fix: str) -> None:
    """``t`` is a floating tensor of ``shape`` on ``like``'s device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape) or any(want is not None and got != want for got, want in zip(t.shape, shape)):
        want = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} has shape {list(t.shape)}; expected {want} ({fix})")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but hidden is on {like.device}; move it with .to(hidden.device)")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; use float32, bfloat16, float16 or float64 "
                        "(the head computes in one dtype, pact_kernels.precision)")


def check_linear_inputs(hidden, weight, bias, softcap, labels, ref_full, ref_post, ref_hidden, ref_weight, ref_bias,
                        safety_ids, safety_weights, answer_pos, cfg: PACTConfig, chunk_rows) -> None:
    """Raise TypeError / ValueError for any input :func:`pact_kernels.fused_linear_pact_loss` cannot use.

    Shapes: ``hidden [rows, H]``, ``weight [V, H]``, ``bias [V]``, ``ref_hidden
    [rows, H_ref]`` with ``ref_weight [V, H_ref]``, ``ref_bias [V]``; the rest as
    :func:`check_inputs`, which runs on a zero-stride stand-in for the
    ``[rows, V]`` logits (nothing of that size is allocated).
    """
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"hidden must be a torch.Tensor, got {type(hidden).__name__}")
    if hidden.dtype not in FLOAT_DTYPES:
        raise TypeError(f"hidden has dtype {hidden.dtype}; use float32, bfloat16, float16 or float64")
    if hidden.dim() != 2:
        raise ValueError(f"hidden has shape {list(hidden.shape)}; expected [rows, H] "
                         "(flatten batch and sequence first: hidden.flatten(0, -2), labels.flatten())")
    rows, width = hidden.shape
    if isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[1] != width:
        raise ValueError(f"weight has shape {list(weight.shape)} but hidden has width H = {width}; weight must be "
                         f"the output embedding [V, {width}] (lm_head.weight), not its transpose")
    _check_linear("weight", weight, (None, width), hidden, "the output embedding [V, H]")
    vocab = weight.shape[0]
    if bias is not None:
        _check_linear("bias", bias, (vocab,), hidden, "one bias per vocabulary entry")
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not math.isfinite(softcap) \
                or softcap <= 0:
            raise ValueError(f"softcap={softcap!r} must be a finite number > 0 (Gemma-2 uses 30.0), or None")
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise ValueError(f"chunk_rows={chunk_rows!r} must be a whole number >= 1, or None for the default")

    stand_in = hidden.new_empty(()).expand(rows, vocab)  # zero-stride: no [rows, V] memory
    if ref_hidden is not None:
        if cfg.variant != "full_vocab":
            raise ValueError(f"ref_hidden is for variant='full_vocab' only; variant={cfg.variant!r} takes the "
                             "reference logits on S as ref_full / ref_post")
        if ref_full is not None or ref_post is not None:
            raise ValueError("pass either ref_hidden (the reference head applied chunk by chunk) or ref_full, "
                             "not both; ref_post must be None with ref_hidden")
        if not isinstance(ref_hidden, torch.Tensor) or ref_hidden.dim() != 2 or ref_hidden.shape[0] != rows:
            shape = list(ref_hidden.shape) if isinstance(ref_hidden, torch.Tensor) else type(ref_hidden).__name__
            raise ValueError(f"ref_hidden has shape {shape}; expected [{rows}, H_ref], one row per hidden row")
        ref_weight = weight if ref_weight is None else ref_weight
        _check_linear("ref_weight", ref_weight, (vocab, ref_hidden.shape[1]), hidden,
                      "the reference's output embedding [V, H_ref], V as weight's")
        _check_linear("ref_hidden", ref_hidden, (rows, None), hidden, "the reference's hidden rows")
        if ref_bias is not None:
            _check_linear("ref_bias", ref_bias, (vocab,), hidden, "one bias per vocabulary entry")
        ref_full = stand_in
    elif ref_weight is not None or ref_bias is not None:
        raise ValueError("ref_weight / ref_bias need ref_hidden (the reference's hidden rows)")
    check_inputs(stand_in, labels, ref_full, ref_post, safety_ids, safety_weights, answer_pos, cfg)
