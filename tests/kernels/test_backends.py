"""The backend protocol: every backend's ``forward_with_grad(logits, inputs, cfg)`` and its named result.

The naive backend's ``forward_with_grad`` takes the gradient by autograd; the
fused ones make it in the forward. Each against the float64 oracle, field by
field, on the same :class:`PACTInputs`.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the first import of triton_kernels

import pytest  # noqa: E402
import torch  # noqa: E402

from pact_kernels import VARIANTS, PACTConfig, PACTInputs  # noqa: E402
from pact_kernels.backends import FUSED_BACKENDS, fused_forward, naive  # noqa: E402
from pact_kernels.output import KernelResult  # noqa: E402

from .inputs import random_batch, rel_err  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def oracle(b, cfg):
    z = b["logits"].double().requires_grad_()
    inputs = PACTInputs(**{k: (v.double() if v.is_floating_point() else v) for k, v in b.items() if k != "logits"})
    out = naive.naive_pact_loss(z, inputs, cfg)
    out.loss.backward()
    return out, z.grad


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("backend", ["naive", "torch", "triton"])
def test_forward_with_grad_of_every_backend(backend, variant):
    b = random_batch(rows=9, vocab=70, k=5, seed=30 + VARIANTS.index(variant),
                     ref_width="v" if variant == "full_vocab" else "k")
    cfg = PACTConfig(variant=variant)
    want, want_grad = oracle(b, cfg)
    forward = naive.forward_with_grad if backend == "naive" else fused_forward(backend)
    logits = b.pop("logits")
    r = forward(logits.clone(), PACTInputs(**b), cfg, chunk_rows=4)
    assert isinstance(r, KernelResult) and r._fields == (
        "loss", "ce", "kl", "gate", "num_rows", "grad", "ce_rows", "kl_rows")
    assert not r.loss.requires_grad and r.grad.shape == logits.shape and r.grad.dtype == logits.dtype
    assert int(r.num_rows) == int(want.num_rows)
    for name in ("loss", "ce", "kl", "ce_rows", "kl_rows"):
        assert rel_err(getattr(r, name), getattr(want, name)) < 1e-5, name
    assert torch.allclose(r.gate.double(), want.gate.double(), rtol=1e-5, atol=1e-6)
    assert rel_err(r.grad, want_grad) < 1e-5


def test_the_fused_backends_are_registered_by_name():
    assert set(FUSED_BACKENDS) == {"torch", "triton", "cuda"}
    with pytest.raises(ValueError, match="backend='naive' is not a fused backend; use one of torch, triton, cuda"):
        fused_forward("naive")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_nonfinite_policy_is_every_backends_epilogue(backend):
    """+inf in a labelled row's logits: that row's CE, and the loss, are NaN (never inf); an unlabelled row's
    NaN changes nothing (the shared epilogue)."""
    b = random_batch(rows=8, vocab=40, k=4, seed=33)
    labelled = (b["labels"] != -100).nonzero().flatten()
    b["logits"][labelled[0], 3] = float("inf")
    b["logits"][0, 5] = float("nan")  # row 0 is unlabelled (random_batch: every 5th row)
    logits = b.pop("logits")
    r = fused_forward(backend)(logits, PACTInputs(**b), PACTConfig())
    assert torch.isnan(r.loss) and torch.isnan(r.ce) and torch.isnan(r.ce_rows[labelled[0]])
    others = torch.ones(8, dtype=torch.bool)
    others[labelled[0]] = False
    assert torch.isfinite(r.ce_rows[others]).all() and r.ce_rows[0] == 0 and (r.grad[0] == 0).all()
