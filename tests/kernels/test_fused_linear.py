"""fused_linear_pact_loss / fused_linear_cross_entropy against the naive oracle on ``hidden @ weight.T`` logits.

The oracle materialises the float64 logits (bias and soft-cap included) and
differentiates :func:`naive_pact_loss` by autograd back to hidden, weight and
bias. The triton cases run under ``TRITON_INTERPRET=1`` (set here when missing).
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the first import of triton_kernels

import pytest  # noqa: E402
import torch  # noqa: E402

from pact_kernels import (VARIANTS, FusedLinearPACTLoss, PACTConfig, PACTInputs,  # noqa: E402
                          fused_linear_cross_entropy, fused_linear_pact_loss)
from pact_kernels.fused_linear import default_chunk_rows  # noqa: E402
from pact_kernels.backends.naive import naive_pact_loss  # noqa: E402

from .inputs import random_batch, rel_err  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

ROWS, WIDTH, VOCAB, K = 37, 16, 301, 11
CHUNK = 8  # 37 rows: the last chunk is partial
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}


def make_inputs(variant, seed=0, rows=ROWS, width=WIDTH, vocab=VOCAB, k=K, ref_width="k"):
    """A random batch (float64) with hidden ``[rows, H]``, weight ``[V, H]``, bias ``[V]`` instead of logits.

    Two labels fall inside S; every 5th row is unlabelled (``random_batch``).
    """
    b = random_batch(rows=rows, vocab=vocab, k=k, dtype=torch.float64, seed=seed, ignore_every=5,
                     ref_width="v" if variant == "full_vocab" else ref_width)
    del b["logits"]
    b["labels"][1] = b["safety_ids"][0]
    b["labels"][rows - 1] = b["safety_ids"][k - 1]
    g = torch.Generator().manual_seed(seed + 1000)
    b["hidden"] = torch.randn(rows, width, generator=g, dtype=torch.float64)
    b["weight"] = torch.randn(vocab, width, generator=g, dtype=torch.float64) * (3.0 / width**0.5)
    b["bias"] = torch.randn(vocab, generator=g, dtype=torch.float64) * 0.5
    return b


def head_logits(hidden, weight, bias, softcap):
    z = hidden @ weight.T + (0 if bias is None else bias)
    return softcap * torch.tanh(z / softcap) if softcap else z


def oracle(b, cfg, softcap=None, use_bias=True):
    """float64 naive loss on the materialised logits; (output, d hidden, d weight, d bias)."""
    h = b["hidden"].double().clone().requires_grad_()
    w = b["weight"].double().clone().requires_grad_()
    bias = b["bias"].double().clone().requires_grad_() if use_bias else None
    f64 = lambda t: None if t is None else t.double()  # noqa: E731
    inputs = PACTInputs(b["labels"], f64(b["ref_full"]), f64(b["ref_post"]), b["safety_ids"],
                        f64(b["safety_weights"]), b["answer_pos"])
    out = naive_pact_loss(head_logits(h, w, bias, softcap), inputs, cfg)
    out.loss.backward()
    return out, h.grad, w.grad, None if bias is None else bias.grad


def fused(b, cfg, dtype, backend="torch", softcap=None, use_bias=True, chunk_rows=CHUNK, **extra):
    """fused_linear_pact_loss on ``dtype`` copies; (output, d hidden, d weight, d bias)."""
    h = b["hidden"].to(dtype, copy=True).requires_grad_()
    w = b["weight"].to(dtype, copy=True).requires_grad_()
    bias = b["bias"].to(dtype, copy=True).requires_grad_() if use_bias else None
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    out = fused_linear_pact_loss(h, w, b["labels"], cast(b["ref_full"]), cast(b["ref_post"]), b["safety_ids"],
                                 b["safety_weights"].float(), b["answer_pos"], bias=bias, softcap=softcap,
                                 backend=backend, chunk_rows=chunk_rows, **cfg.as_kwargs(), **extra)
    out.loss.backward()
    return out, h.grad, w.grad, None if bias is None else bias.grad


def assert_close(got, want, tol, labels):
    out, *grads = got
    ref, *ref_grads = want
    for name in ("loss", "ce", "kl", "gate", "ce_rows", "kl_rows"):
        assert rel_err(getattr(out, name), getattr(ref, name)) < tol, name
    assert int(out.num_rows) == int((labels != -100).sum())
    for name, g, r in zip(("hidden", "weight", "bias"), grads, ref_grads):
        if r is None:  # no bias
            assert g is None
            continue
        assert g is not None, name
        assert rel_err(g, r) < tol, f"d {name}"


@pytest.mark.parametrize("softcap", [None, 4.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_backend_matches_oracle(variant, dtype, softcap):
    b = make_inputs(variant, seed=VARIANTS.index(variant))
    cfg = PACTConfig(variant=variant)
    want = oracle(b, cfg, softcap)
    got = fused(b, cfg, dtype, softcap=softcap)
    assert_close(got, want, TOL[dtype], b["labels"])
    assert got[1].dtype == dtype and got[2].dtype == dtype
    if cfg.uses_gate:
        assert (want[0].gate[b["labels"] != -100] > 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_backend_bfloat16(variant):
    b = make_inputs(variant, seed=7)
    cfg = PACTConfig(variant=variant)
    want = oracle(b, cfg, softcap=4.0)
    got = fused(b, cfg, torch.bfloat16, softcap=4.0)
    assert_close(got, want, TOL[torch.bfloat16], b["labels"])
    assert got[2].dtype == torch.bfloat16 and got[1].dtype == torch.bfloat16


def test_default_chunk_and_whole_call_agree_without_bias():
    """No bias, the default chunk (one chunk here) vs chunks of 5: the same numbers, and the oracle's."""
    b = make_inputs("pact", seed=3)
    cfg = PACTConfig.authors()
    want = oracle(b, cfg, use_bias=False)
    for chunk in (None, 5):
        got = fused(b, cfg, torch.float64, use_bias=False, chunk_rows=chunk)
        assert_close(got, want, 1e-10, b["labels"])


def test_default_chunk_rows_follow_the_budget():
    """One float32 [chunk, V] buffer within 32 MiB at SmolLM2's head; the input's size when that is larger."""
    assert default_chunk_rows(4096, 49152, torch.empty(4096, 576)) == (32 << 20) // (49152 * 4)
    big = torch.empty(16384, 4096, dtype=torch.bfloat16, device="meta")
    assert default_chunk_rows(16384, 152064, big) == 16384 * 4096 * 2 // (152064 * 2)
    assert default_chunk_rows(16384, 152064, big, buffers=2) == 16384 * 4096 * 2 // (152064 * 2 * 2)
    assert default_chunk_rows(3, 49152, torch.empty(3, 576)) == 3


@pytest.mark.parametrize("separate_head", [False, True])
def test_full_vocab_reference_from_hidden(separate_head):
    """``full_vocab`` with ``ref_hidden``: the reference logits are made per chunk from the reference head."""
    b = make_inputs("full_vocab", seed=5)
    g = torch.Generator().manual_seed(99)
    ref_hidden = torch.randn(ROWS, 12 if separate_head else WIDTH, generator=g, dtype=torch.float64)
    ref_weight = torch.randn(VOCAB, ref_hidden.shape[1], generator=g, dtype=torch.float64) if separate_head else None
    ref_bias = torch.randn(VOCAB, generator=g, dtype=torch.float64) if separate_head else None
    used_w = b["weight"] if ref_weight is None else ref_weight
    used_b = b["bias"] if ref_bias is None else ref_bias
    b["ref_full"] = head_logits(ref_hidden, used_w, used_b, 4.0)
    cfg = PACTConfig(variant="full_vocab", kl_temperature=2.0)
    want = oracle(b, cfg, softcap=4.0)
    b["ref_full"], b["ref_post"] = None, None
    got = fused(b, cfg, torch.float64, softcap=4.0, ref_hidden=ref_hidden, ref_weight=ref_weight, ref_bias=ref_bias)
    assert_close(got, want, 1e-10, b["labels"])


def test_frozen_head_gets_no_gradient_and_backward_scales():
    """weight/bias without requires_grad: no gradient made for them; ``2.5·loss`` scales d hidden by 2.5."""
    b = make_inputs("pact", seed=2)
    cfg = PACTConfig()
    _, want_h, _, _ = oracle(b, cfg)
    h = b["hidden"].clone().requires_grad_()
    out = fused_linear_pact_loss(h, b["weight"], b["labels"], b["ref_full"], b["ref_post"], b["safety_ids"],
                                 b["safety_weights"], b["answer_pos"], bias=b["bias"], backend="torch", chunk_rows=4)
    (2.5 * out.loss).backward()
    assert rel_err(h.grad, 2.5 * want_h) < 1e-10
    assert b["weight"].grad is None
    with pytest.raises(RuntimeError, match="second backward"):
        out.loss.backward()


def test_backward_hands_the_gradients_over_without_a_copy():
    """The gradients made in forward become the leaves' .grad themselves (no second [V, H] buffer)."""
    b = make_inputs("pact", seed=12)
    h, w = b["hidden"].clone().requires_grad_(), b["weight"].clone().requires_grad_()
    out = fused_linear_pact_loss(h, w, b["labels"], b["ref_full"], b["ref_post"], b["safety_ids"],
                                 b["safety_weights"], b["answer_pos"], backend="torch")
    pointers = [t.data_ptr() for t in out.loss.grad_fn.grads[:2]]  # what the forward made
    out.loss.backward()
    assert [h.grad.data_ptr(), w.grad.data_ptr()] == pointers


def test_module_matches_function():
    b = make_inputs("safety_weights", seed=4)
    cfg = PACTConfig(variant="safety_weights", lambda_kl=1.5)
    want = oracle(b, cfg)
    module = FusedLinearPACTLoss(b["safety_ids"], b["safety_weights"], cfg, backend="torch", chunk_rows=CHUNK)
    h = b["hidden"].clone().requires_grad_()
    out = module(h, b["weight"], b["labels"], b["ref_full"], None, bias=b["bias"])
    out.loss.backward()
    assert rel_err(out.loss, want[0].loss) < 1e-10 and rel_err(h.grad, want[1]) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cross_entropy_matches_torch(dtype):
    b = make_inputs("pact", seed=6)
    h = b["hidden"].clone().requires_grad_()
    w = b["weight"].clone().requires_grad_()
    bias = b["bias"].clone().requires_grad_()
    ref = torch.nn.functional.cross_entropy(head_logits(h, w, bias, 4.0), b["labels"])
    ref.backward()
    grads = [t.grad.clone() for t in (h, w, bias)]
    hh, ww, bb = (t.detach().to(dtype).requires_grad_() for t in (h, w, bias))
    out = fused_linear_cross_entropy(hh, ww, b["labels"], bias=bb, softcap=4.0, backend="torch", chunk_rows=CHUNK)
    out.loss.backward()
    assert rel_err(out.loss, ref) < TOL[dtype] and rel_err(out.ce, ref) < TOL[dtype]
    assert float(out.kl) == 0.0
    for got, want in zip((hh.grad, ww.grad, bb.grad), grads):
        assert rel_err(got, want) < TOL[dtype]


def test_cross_entropy_row_weights():
    """``row_weight`` from the chunk's own CE: loss ``Σ w·CE / n`` with w detached, as constrained SFT."""
    b = make_inputs("pact", seed=8)
    labels = b["labels"]

    def weights_of(ce_rows):
        return 2.0 * torch.sigmoid(-0.5 * ce_rows.detach()) + 0.1

    h = b["hidden"].clone().requires_grad_()
    w = b["weight"].clone().requires_grad_()
    ce = torch.nn.functional.cross_entropy(h @ w.T, labels, reduction="none")
    labelled = labels != -100
    ref = (weights_of(ce) * ce)[labelled].sum() / labelled.sum()
    ref.backward()
    hh, ww = (t.detach().clone().requires_grad_() for t in (b["hidden"], b["weight"]))
    seen = []

    def row_weight(ce_rows, rows):
        seen.append(rows)
        return weights_of(ce_rows)

    out = fused_linear_cross_entropy(hh, ww, labels, backend="torch", chunk_rows=CHUNK, row_weight=row_weight)
    out.loss.backward()
    assert [s.start for s in seen] == list(range(0, ROWS, CHUNK))
    assert rel_err(out.loss, ref) < 1e-6  # per-row CE reaches the weights in float32
    assert rel_err(hh.grad, h.grad) < 1e-6 and rel_err(ww.grad, w.grad) < 1e-6


def call(**changes):
    b = make_inputs("pact", seed=1, rows=6, vocab=40, k=4)
    kwargs = {k: changes.pop(k) for k in list(changes) if k not in b}
    b.update(changes)
    bias = b.pop("bias")
    args = [b[k] for k in ("hidden", "weight", "labels", "ref_full", "ref_post", "safety_ids", "safety_weights",
                           "answer_pos")]
    kwargs.setdefault("backend", "torch")
    kwargs.setdefault("bias", bias)
    return fused_linear_pact_loss(*args, **kwargs)


@pytest.mark.parametrize("changes,error,match", [
    (dict(weight=torch.randn(40, 9, dtype=torch.float64)), ValueError, r"weight has shape \[40, 9\] but hidden has width H = 16"),
    (dict(weight=torch.randn(16, 40, dtype=torch.float64)), ValueError, "not its transpose"),
    (dict(weight=torch.randint(0, 3, (40, 16))), TypeError, "weight has dtype torch.int64; use float32"),
    (dict(weight=torch.randn(40, 16, dtype=torch.float64, device="meta")), ValueError, "weight is on meta"),
    (dict(bias=torch.randn(41, dtype=torch.float64)), ValueError, r"bias has shape \[41\]"),
    (dict(labels=torch.tensor([1, 2, 40, 3, -100, 5])), ValueError, r"labels has values outside \[0, 40\)"),
    (dict(softcap=0.0), ValueError, "softcap=0.0 must be a finite number > 0"),
    (dict(softcap=-3.0), ValueError, "softcap=-3.0 must be"),
    (dict(chunk_rows=0), ValueError, "chunk_rows=0 must be"),
    (dict(ref_hidden=torch.randn(6, 16, dtype=torch.float64)), ValueError, "ref_hidden is for variant='full_vocab'"),
    (dict(backend="naive"), ValueError, "backend='naive' is not fused"),
])
def test_bad_input_named_before_any_work(changes, error, match, monkeypatch):
    import pact_kernels.fused_linear as fl

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the inputs were checked")

    monkeypatch.setattr(fl, "linear_forward_with_grad", no_work)
    with pytest.raises(error, match=match):
        call(**changes)


def test_full_vocab_needs_one_reference():
    b = make_inputs("full_vocab", seed=1, rows=6, vocab=40, k=4)
    args = dict(labels=b["labels"], safety_ids=b["safety_ids"], safety_weights=b["safety_weights"],
                answer_pos=b["answer_pos"], variant="full_vocab", backend="torch")
    with pytest.raises(ValueError, match="either ref_hidden .* or ref_full"):
        fused_linear_pact_loss(b["hidden"], b["weight"], ref_full=b["ref_full"], ref_post=None,
                               ref_hidden=b["hidden"], **args)
    with pytest.raises(ValueError, match=r"ref_weight has shape \[40, 16\]; expected \[40, 7\]"):
        fused_linear_pact_loss(b["hidden"], b["weight"], ref_full=None, ref_post=None,
                               ref_hidden=torch.randn(6, 7, dtype=torch.float64), **args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", VARIANTS)
def test_triton_backend_matches_oracle(variant, dtype):
    """The triton kernels under the chunk loop (interpreter on the CPU): small shapes, soft-cap and bias on."""
    b = make_inputs(variant, seed=20 + VARIANTS.index(variant), rows=11, vocab=150, k=6)
    cfg = PACTConfig(variant=variant)
    want = oracle(b, cfg, softcap=4.0)
    got = fused(b, cfg, dtype, backend="triton", softcap=4.0, chunk_rows=4)
    assert_close(got, want, TOL[dtype], b["labels"])


def test_triton_cross_entropy_matches_torch():
    b = make_inputs("pact", seed=9, rows=9, vocab=130, k=3)
    h, w = (b[k].float().requires_grad_() for k in ("hidden", "weight"))
    ref = torch.nn.functional.cross_entropy(h @ w.T, b["labels"])
    ref.backward()
    hh, ww = (b[k].float().requires_grad_() for k in ("hidden", "weight"))
    out = fused_linear_cross_entropy(hh, ww, b["labels"], backend="triton", chunk_rows=4)
    out.loss.backward()
    assert rel_err(out.loss, ref) < 1e-5
    assert rel_err(hh.grad, h.grad) < 1e-5 and rel_err(ww.grad, w.grad) < 1e-5


def test_readme_fused_linear_example_runs_and_matches_pact_loss(capsys):
    """docs/kernels.md's "Fused linear head" example runs as written and equals pact_loss on hidden @ weight.T."""
    from pact_kernels import pact_loss
    from tests.doc_text import marked_block

    block = marked_block("fused-linear-example")
    ns: dict = {}
    exec(compile(block.code, block.where, "exec"), ns)
    assert "loss " in capsys.readouterr().out
    h = ns["hidden"].detach().clone().requires_grad_()
    w = ns["lm_head"].weight.detach().clone().requires_grad_()
    want = pact_loss(h @ w.T, *(ns[k] for k in ("labels", "ref_full", "ref_post", "safety_ids", "safety_weights",
                                               "answer_pos")), backend="naive")
    want.loss.backward()
    assert rel_err(ns["out"].loss, want.loss) < 1e-5
    assert rel_err(ns["hidden"].grad, h.grad) < 1e-5 and rel_err(ns["lm_head"].weight.grad, w.grad) < 1e-5
