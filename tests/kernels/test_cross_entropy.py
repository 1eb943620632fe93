"""Plain cross-entropy: its own kernels (torch row blocks, the Triton ``cross_entropy_kernel``), never the PACT one.

Against ``torch.nn.functional.cross_entropy`` in float64. The Triton cases run
under ``TRITON_INTERPRET=1`` (set here when missing).
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the first import of triton_kernels

import pytest  # noqa: E402
import torch  # noqa: E402

from pact_kernels import fused_linear_cross_entropy  # noqa: E402
from pact_kernels.backends import cross_entropy_forward, torch_blocks, triton_launch  # noqa: E402
from pact_kernels.precision import RELATIVE_TOLERANCE, held_gradient_dtype  # noqa: E402

from .inputs import rel_err  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def batch(rows=10, vocab=90, width=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, width, generator=g, dtype=torch.float64)
    weight = torch.randn(vocab, width, generator=g, dtype=torch.float64) * (3.0 / width**0.5)
    labels = torch.randint(0, vocab, (rows,), generator=g)
    labels[::4] = -100
    return hidden, weight, labels


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kernel_matches_torch_cross_entropy(backend, dtype):
    """``cross_entropy_with_grad``: per-row CE and ``(softmax − onehot)/n`` in the held dtype, in place when
    that dtype is the logits' (not float16, whose gradient is held in float32)."""
    _, _, labels = batch(seed=1)
    z64 = (2.0 * torch.randn(10, 90, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    z = z64.to(dtype)
    want = torch.nn.functional.cross_entropy(z.double().requires_grad_(), labels, reduction="none")
    leaf = z.double().requires_grad_()
    torch.nn.functional.cross_entropy(leaf, labels).backward()
    logits = z.clone()
    ce_rows, n, grad = cross_entropy_forward(backend)(logits, labels, -100, inplace_grad=True)
    assert int(n) == int((labels != -100).sum())
    assert rel_err(ce_rows, want.detach()) < 1e-5 and (ce_rows[labels == -100] == 0).all()
    assert grad.dtype == held_gradient_dtype(dtype)
    assert (grad.data_ptr() == logits.data_ptr()) == (dtype != torch.float16)
    assert rel_err(grad, leaf.grad) < RELATIVE_TOLERANCE[dtype] and (grad[labels == -100] == 0).all()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_never_runs_the_pact_kernel(backend, monkeypatch):
    """The plain CE path has no fake safety set: with every PACT ``forward_with_grad`` broken it still runs,
    and equals F.cross_entropy through the soft-capped head with a bias."""
    def broken(*args, **kwargs):
        raise AssertionError("the PACT kernel ran for plain cross-entropy")

    for module in (torch_blocks, triton_launch):
        monkeypatch.setattr(module, "forward_with_grad", broken)
    hidden, weight, labels = batch(seed=3)
    bias = torch.randn(90, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    leaves = [t.float().requires_grad_() for t in (hidden, weight, bias)]
    z = leaves[0] @ leaves[1].T + leaves[2]
    torch.nn.functional.cross_entropy(6.0 * torch.tanh(z / 6.0), labels).backward()
    got = [t.float().requires_grad_() for t in (hidden, weight, bias)]
    out = fused_linear_cross_entropy(got[0], got[1], labels, bias=got[2], softcap=6.0, backend=backend,
                                     chunk_rows=3)
    out.loss.backward()
    for mine, want in zip(got, leaves):
        assert rel_err(mine.grad, want.grad) < 1e-5
    assert int(out.num_rows) == 7 and float(out.kl) == 0.0 and (out.gate == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_head_in_half_precision(dtype):
    """bf16 / fp16 head and hidden rows through the Triton CE kernel, against the float64 oracle on the same
    rounded values; fp16 with GradScaler's 2**16 loss scale (the gradient held in float32 until backward)."""
    hidden, weight, labels = batch(seed=5)
    hidden = hidden * 0.25
    h, w = (t.to(dtype).requires_grad_() for t in (hidden, weight))
    out = fused_linear_cross_entropy(h, w, labels, backend="triton", chunk_rows=4)
    scale = 2.0**16 if dtype == torch.float16 else 1.0
    (out.loss * scale).backward()
    h64, w64 = (t.detach().double().requires_grad_() for t in (h, w))
    want = torch.nn.functional.cross_entropy(h64 @ w64.T, labels)
    (want * scale).backward()
    tol = RELATIVE_TOLERANCE[dtype]
    assert h.grad.dtype == w.grad.dtype == dtype and torch.isfinite(h.grad).all()
    assert rel_err(out.loss, want) < tol
    assert rel_err(h.grad, h64.grad) < tol and rel_err(w.grad, w64.grad) < tol


def test_bad_labels_named_before_any_work():
    hidden, weight, labels = batch(seed=6)
    labels[2] = 90
    with pytest.raises(ValueError, match=r"labels has values outside \[0, 90\) other than ignore_index=-100"):
        fused_linear_cross_entropy(hidden, weight, labels, backend="torch")
    with pytest.raises(ValueError, match=r"labels has shape \[9\]; expected \[10\]"):
        fused_linear_cross_entropy(hidden, weight, labels[:9], backend="torch")
