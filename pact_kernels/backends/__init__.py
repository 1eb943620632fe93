"""The backends of the PACT loss, one protocol for all.

Each backend module exposes ``forward_with_grad(logits, inputs, cfg, *,
chunk_rows=None, inplace_grad=False)`` taking ``logits [rows, V]``, a
:class:`pact_kernels.inputs.PACTInputs` (already checked) and a
:class:`pact_kernels.config.PACTConfig`, and returning a
:class:`pact_kernels.output.KernelResult`: the loss terms and ``d loss / d
logits``, made in the forward so that backward only scales it.

* ``naive`` (:mod:`.naive`): SPEC §3 line by line, autograd; the oracle.
* ``torch`` (:mod:`.torch_blocks`): row blocks in PyTorch.
* ``triton`` (:mod:`.triton_launch`, kernels in :mod:`.triton_kernels`).
* ``cuda`` (:mod:`.cuda_extension`, kernels in ``csrc/``).

The prologue and epilogue they share (labelled-row count, gradient buffer,
means, non-finite policy) are :mod:`.common`.

Plain cross-entropy (:func:`pact_kernels.fused_linear_cross_entropy`) has its
own kernels, ``cross_entropy_with_grad(logits, labels, ignore_index, *,
inplace_grad)`` returning ``(ce_rows, n, grad)`` (:func:`cross_entropy_forward`).
"""
from __future__ import annotations

import importlib

# The backends whose gradient is made in the forward (pact_kernels.autograd.PACTLossFunction).
FUSED_BACKENDS = {
    "torch": "pact_kernels.backends.torch_blocks",
    "triton": "pact_kernels.backends.triton_launch",
    "cuda": "pact_kernels.backends.cuda_extension",
}


# Plain CE kernels; the cuda backend has no CUDA C++ one and runs the Triton kernel.
CROSS_ENTROPY_BACKENDS = {
    "torch": "pact_kernels.backends.torch_blocks",
    "triton": "pact_kernels.backends.triton_launch",
    "cuda": "pact_kernels.backends.triton_launch",
}


def fused_forward(backend: str):
    """The ``forward_with_grad`` of a fused backend, imported on first use."""
    return _entry(FUSED_BACKENDS, backend, "forward_with_grad", "is not a fused backend")


def cross_entropy_forward(backend: str):
    """The ``cross_entropy_with_grad`` of ``backend`` (``torch``, ``triton``, ``cuda``), imported on first use."""
    return _entry(CROSS_ENTROPY_BACKENDS, backend, "cross_entropy_with_grad", "has no cross-entropy kernel")


def _entry(table: dict, backend: str, function: str, refusal: str):
    """``function`` of the module ``table[backend]``; a ValueError naming the choices for another ``backend``."""
    try:
        module_name = table[backend]
    except KeyError:
        raise ValueError(f"backend={backend!r} {refusal}; use one of {', '.join(table)}") from None
    return getattr(importlib.import_module(module_name), function)
