"""The precision matrix: {pact_loss, fused_linear_pact_loss} × {float32, bf16 autocast over float32 weights,
bf16 weights, float32 hidden rows on a bf16 head, fp16 with a loss scale of 2**16} × {torch, triton}.

Each cell runs the head ``hidden @ weight.T`` and the PACT loss as a user's
training step would (``pact_loss`` on logits made by ``F.linear``; the fused
head straight from hidden and weight), backward with the loss scale, and
compares loss and gradients (hidden, weight; logits too for ``pact_loss``)
with the float64 oracle on the same inputs (the float64 values of what the
cell was given), times the scale: within
:data:`pact_kernels.precision.RELATIVE_TOLERANCE` of the dtype the head
computes in, every gradient finite, the logits chunk in that dtype. Triton
runs under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import contextlib
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the first import of triton_kernels

import pytest  # noqa: E402
import torch  # noqa: E402

import pact_kernels.fused_linear as fused_linear_module  # noqa: E402
from pact_kernels import PACTConfig, fused_linear_pact_loss, pact_loss  # noqa: E402
from pact_kernels import PACTInputs  # noqa: E402
from pact_kernels.backends.naive import naive_pact_loss  # noqa: E402
from pact_kernels.precision import RELATIVE_TOLERANCE  # noqa: E402

from .inputs import random_batch, rel_err  # noqa: E402

ROWS, WIDTH, VOCAB, K = 10, 16, 96, 7
CFG = PACTConfig()  # variant pact: gate, decay, weights

# mode: (hidden dtype, weight dtype, autocast dtype or None, loss scale, dtype the head computes in)
MODES = {
    "float32": (torch.float32, torch.float32, None, 1.0, torch.float32),
    "bf16_autocast": (torch.float32, torch.float32, torch.bfloat16, 1.0, torch.bfloat16),
    "bf16_weights": (torch.bfloat16, torch.bfloat16, None, 1.0, torch.bfloat16),
    "fp32_hidden_bf16_head": (torch.float32, torch.bfloat16, None, 1.0, torch.bfloat16),
    "fp16_scaled": (torch.float16, torch.float16, None, 2.0**16, torch.float16),
}


def make_inputs(seed, hidden_std=1.0):
    """float64 hidden ``[rows, H]``, weight ``[V, H]`` and a PACT batch (refs ``[rows, K]``); logits std ~3·hidden_std."""
    b = random_batch(rows=ROWS, vocab=VOCAB, k=K, dtype=torch.float64, seed=seed, ignore_every=4)
    del b["logits"]
    b["labels"][1] = b["safety_ids"][0]  # one target inside S
    g = torch.Generator().manual_seed(seed + 77)
    b["hidden"] = torch.randn(ROWS, WIDTH, generator=g, dtype=torch.float64) * hidden_std
    b["weight"] = torch.randn(VOCAB, WIDTH, generator=g, dtype=torch.float64) * (3.0 / WIDTH**0.5)
    return b


def refs(b, dtype):
    return dict(ref_full=b["ref_full"].to(dtype), ref_post=b["ref_post"].to(dtype), safety_ids=b["safety_ids"],
                safety_weights=b["safety_weights"], answer_pos=b["answer_pos"])


def run_cell(api, mode, backend, seed=0, device="cpu", no_sync_backward=False):
    """Run one cell on ``device``; returns ``(output, grads, oracle output, oracle grads × scale, chunk dtypes)``.

    ``no_sync_backward`` (CUDA): backward runs under ``torch.cuda.set_sync_debug_mode("error")``.
    """
    h_dtype, w_dtype, amp, scale, _ = MODES[mode]
    # With 7 labelled rows the gradients are ~1/7; times 2**16 they must stay below float16's 65504,
    # as GradScaler's scale does for a real batch (its n is thousands of rows): smaller hidden rows.
    b = make_inputs(seed, hidden_std=0.25 if scale > 1 else 1.0)
    hidden = b["hidden"].to(device, h_dtype).requires_grad_()
    weight = b["weight"].to(device, w_dtype).requires_grad_()
    r = {name: t.to(device) for name, t in refs(b, h_dtype).items()}
    labels = b["labels"].to(device)
    chunk_dtypes = []
    autocast = torch.autocast(torch.device(device).type, dtype=amp) if amp else contextlib.nullcontext()
    logits = None
    real = fused_linear_module.fused_forward

    def spying_fused_forward(name):
        forward = real(name)

        def spy(z, *args, **kwargs):
            chunk_dtypes.append(z.dtype)
            return forward(z, *args, **kwargs)

        return spy

    fused_linear_module.fused_forward = spying_fused_forward
    try:
        with autocast:
            if api == "pact_loss":
                logits = torch.nn.functional.linear(hidden, weight)
                logits.retain_grad()
                chunk_dtypes.append(logits.dtype)
                out = pact_loss(logits, labels, **r, backend=backend, **CFG.as_kwargs())
            else:
                out = fused_linear_pact_loss(hidden, weight, labels, **r, backend=backend, chunk_rows=4,
                                             **CFG.as_kwargs())
    finally:
        fused_linear_module.fused_forward = real
    scaled = out.loss * scale
    if no_sync_backward:
        torch.cuda.set_sync_debug_mode("error")
    try:
        scaled.backward()
    finally:
        if no_sync_backward:
            torch.cuda.set_sync_debug_mode("default")
    grads = {"hidden": hidden.grad, "weight": weight.grad}
    if logits is not None:
        grads["logits"] = logits.grad

    # The oracle: float64 on the CPU, on the values the cell was given (autocast's rounding of them is the
    # cell's error).
    h64 = hidden.detach().cpu().double().requires_grad_()
    w64 = weight.detach().cpu().double().requires_grad_()
    z64 = h64 @ w64.T
    z64.retain_grad()
    want = naive_pact_loss(z64, PACTInputs(b["labels"], **{k: (v.cpu().double() if k.startswith("ref") else v.cpu())
                                                            for k, v in r.items()}), CFG)
    want.loss.backward()
    want_grads = {"hidden": h64.grad * scale, "weight": w64.grad * scale, "logits": z64.grad * scale}
    return out, grads, want, want_grads, chunk_dtypes


def check_cell(api, mode, out, grads, want, want_grads, chunk_dtypes) -> dict:
    """The cell's errors (``loss``, ``gate``, ``d <name>``), each with its bound; raises AssertionError on a miss."""
    h_dtype, w_dtype, _, _, compute = MODES[mode]
    tol = RELATIVE_TOLERANCE[compute]
    # The head's GEMM ran in the compute dtype (autocast's when on).
    assert chunk_dtypes and set(chunk_dtypes) == {compute}, f"logits chunks in {set(chunk_dtypes)}, not {compute}"
    errors = {}
    for name in ("loss", "ce", "kl"):
        errors[name] = rel_err(getattr(out, name).cpu(), getattr(want, name))
        assert errors[name] < tol, f"{name}: {errors[name]:.2e} >= {tol}"
    gate_diff = float((out.gate.cpu().double() - want.gate.double()).abs().max())
    if compute == torch.float32:
        assert rel_err(out.gate.cpu(), want.gate) < tol
    else:  # a rounded logit may move a dispersion count by one step: α·(1/K) through a sigmoid of slope ≤ 1/4
        assert gate_diff <= CFG.gate_scale / (4 * K) + 1e-3, f"gate moved by {gate_diff}"
    for name, g in grads.items():
        assert g is not None, name
        assert g.dtype == {"hidden": h_dtype, "weight": w_dtype, "logits": compute}[name]
        assert torch.isfinite(g).all(), f"d {name} has non-finite entries"
        errors[f"d {name}"] = rel_err(g.cpu(), want_grads[name])
        assert errors[f"d {name}"] < tol, f"d {name}: {errors[f'd {name}']:.2e} >= {tol}"
    return errors


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("api", ["pact_loss", "fused_linear_pact_loss"])
def test_precision_matrix(api, mode, backend):
    h_dtype, w_dtype, amp, _, _ = MODES[mode]
    if api == "pact_loss" and h_dtype != w_dtype and amp is None:
        pytest.skip("F.linear itself refuses a float32 input on a bf16 weight; the fused head takes it")
    check_cell(api, mode, *run_cell(api, mode, backend))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_float16_gradient_keeps_entries_below_float16_range(backend):
    """softmax(z)/n below float16's smallest subnormal (2**-24) survives until the loss scale lifts it.

    Logits spread to ±20 put many probabilities near e**-40; times the scale
    2**16 their gradients are normal float16 numbers, and each must be within
    float16 rounding (2**-10 relative) of the oracle's.
    """
    b = random_batch(rows=6, vocab=80, k=5, dtype=torch.float64, seed=3, ignore_every=0, scale=8.0)
    logits = b["logits"].to(torch.float16).requires_grad_()
    r = {k: (v.to(torch.float16) if k.startswith("ref") else v) for k, v in b.items() if k != "logits"}
    scale = 2.0**16
    out = pact_loss(logits, **r, backend=backend, inplace_grad=True)
    (out.loss * scale).backward()
    z64 = logits.detach().double().requires_grad_()
    want = naive_pact_loss(z64, PACTInputs(r["labels"], r["ref_full"].double(), r["ref_post"].double(),
                                           r["safety_ids"], r["safety_weights"], r["answer_pos"]), CFG)
    want.loss.backward()
    expected = z64.grad * scale
    representable = expected.abs() > 2.0**-14  # normal float16 numbers
    tiny = (z64.grad.abs() < 2.0**-24) & representable  # zero in a float16 gradient before the scale
    assert tiny.sum() > 20, "the input must have gradient entries below float16's range before the scale"
    got = logits.grad.double()
    assert torch.isfinite(got).all()
    assert ((got - expected).abs() <= 2.0**-10 * expected.abs() + 2.0**-24)[representable].all()
    assert logits.grad.dtype == torch.float16
