"""Checks of single tensor arguments; each error names the argument and the fix.

:class:`pact_kernels.inputs.PACTInputs` and :mod:`pact_kernels.linear_head`
compose them.
"""
from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def require_tensor(name: str, t) -> None:
    """``t`` is a torch.Tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def require_float_dtype(name: str, t: torch.Tensor, why: str = "") -> None:
    """``t`` is float32, bfloat16, float16 or float64."""
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; use float32, bfloat16, float16 or float64{why}")


def require_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    """``t`` lives on ``device``, the logits'."""
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but logits are on {device}; move it with .to(logits.device)")


def require_rows_matrix(name: str, t: torch.Tensor, width: str = "V") -> None:
    """``t`` is 2-D, ``[rows, width]``."""
    if t.dim() != 2:
        raise ValueError(
            f"{name} has shape {list(t.shape)}; expected [rows, {width}] "
            f"(flatten batch and sequence first: {name}.flatten(0, -2), labels.flatten())"
        )


def check_float_matrix(name: str, t, rows: int, widths: tuple, device: torch.device) -> None:
    """``t`` is a float ``[rows, w]`` tensor on ``device`` with ``w`` in ``widths`` (a reference's logits)."""
    require_tensor(name, t)
    require_float_dtype(name, t)
    require_device(name, t, device)
    if t.dim() != 2 or t.shape[0] != rows or t.shape[1] not in widths:
        allowed = " or ".join(f"[{rows}, {w}]" for w in widths)
        raise ValueError(
            f"{name} has shape {list(t.shape)}; expected {allowed} (one row per logits row; "
            f"the reference gathered on the K safety ids, or over the whole vocabulary)"
        )


def check_index_vector(name: str, t, length: int, device: torch.device) -> None:
    """``t`` is an integer ``[length]`` tensor on ``device`` (any length when ``length`` < 0)."""
    require_tensor(name, t)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} has dtype {t.dtype}; use an integer dtype (torch.long)")
    require_device(name, t, device)
    if t.dim() != 1 or (length >= 0 and t.shape[0] != length):
        want = f"[{length}]" if length >= 0 else "a 1-D tensor"
        raise ValueError(f"{name} has shape {list(t.shape)}; expected {want}")


def check_weight_vector(name: str, t, length: int, device: torch.device) -> None:
    """``t`` is a floating ``[length]`` tensor on ``device`` (the safety weights)."""
    require_tensor(name, t)
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} has dtype {t.dtype}; use a floating dtype (float32)")
    require_device(name, t, device)
    if t.shape != (length,):
        raise ValueError(f"{name} has shape {list(t.shape)}; expected [{length}], one per safety id")


def check_positive_number(name: str, value, example: str) -> None:
    """``value`` is None or a finite number > 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a finite number > 0 ({example}), or None")


def check_chunk_rows(chunk_rows) -> None:
    """``chunk_rows`` is None or a whole number ≥ 1."""
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise ValueError(f"chunk_rows={chunk_rows!r} must be a whole number >= 1, or None for the default")


def labels_outside_vocabulary(vocab: int, ignore_index: int) -> str:
    """The error for labels outside ``[0, vocab)`` on labelled rows."""
    return (f"labels has values outside [0, {vocab}) other than ignore_index={ignore_index}; "
            "mask prompt and padding positions with ignore_index")
