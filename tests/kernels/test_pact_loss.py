"""pact_loss: the naive oracle and the torch backend against each other, gradcheck, edge cases."""
from __future__ import annotations

import math

import pytest
import torch

from pact_kernels import VARIANTS, PACTConfig, PACTLoss, pact_loss, pact_loss_from_config

from .inputs import random_batch, rel_err

CONFIGS = {"paper": PACTConfig(), "authors": PACTConfig.authors()}


def run(backend, b, cfg=None, dtype=None, chunk_rows=None, inplace_grad=False, **overrides):
    """pact_loss on a copy of batch ``b``; returns (output, gradient of logits)."""
    cfg = (cfg or PACTConfig()).replace(**overrides) if overrides else (cfg or PACTConfig())
    args = dict(b)
    logits = args.pop("logits").detach().clone()
    if dtype is not None:
        logits = logits.to(dtype)
        args["ref_full"] = args["ref_full"].to(dtype)
        args["ref_post"] = args["ref_post"].to(dtype)
    logits.requires_grad_()
    out = pact_loss_from_config(logits, *args.values(), cfg, backend=backend, chunk_rows=chunk_rows,
                                inplace_grad=inplace_grad)
    out.loss.backward()
    return out, logits.grad


def oracle(b, cfg=None, **overrides):
    """The float64 oracle: the naive backend on float64 copies."""
    return run("naive", b, cfg, dtype=torch.float64, **overrides)


@pytest.mark.parametrize("preset", sorted(CONFIGS))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("backend", ["naive", "torch"])
def test_gradcheck_float64(backend, variant, preset):
    b = random_batch(rows=6, vocab=23, k=5, dtype=torch.float64, ref_width="v" if variant == "full_vocab" else "k",
                     seed=3, ignore_every=4, max_pos=20)
    cfg = CONFIGS[preset].replace(variant=variant, decay_start=4)
    args = dict(b)
    logits = args.pop("logits").requires_grad_()

    def f(z):
        return pact_loss_from_config(z, *args.values(), cfg, backend=backend, chunk_rows=4).loss

    assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-8, rtol=1e-6)


# full_vocab needs [rows, V] references; its K-width case is an input error (test_validation.py).
VARIANT_WIDTHS = [(v, w) for v in VARIANTS for w in ("k", "v") if not (v == "full_vocab" and w == "k")]


@pytest.mark.parametrize("preset", sorted(CONFIGS))
@pytest.mark.parametrize("variant,ref_width", VARIANT_WIDTHS)
def test_torch_backend_matches_oracle_float32(variant, ref_width, preset):
    b = random_batch(rows=37, vocab=301, k=11, ref_width=ref_width, seed=11)
    cfg = CONFIGS[preset].replace(variant=variant)
    want, want_grad = oracle(b, cfg)
    got, got_grad = run("torch", b, cfg, chunk_rows=8)  # 37 rows: the last block is partial
    naive32, naive32_grad = run("naive", b, cfg)
    for out in (got, naive32):
        assert rel_err(out.loss, want.loss) < 1e-5
        assert rel_err(out.ce, want.ce) < 1e-5
        assert rel_err(out.kl, want.kl) < 1e-5
        assert rel_err(out.gate, want.gate) < 1e-5
        assert rel_err(out.ce_rows, want.ce_rows) < 1e-5
        assert rel_err(out.kl_rows, want.kl_rows) < 1e-5
        assert (out.ce_rows[b["labels"] == -100] == 0).all()
    assert rel_err(got_grad, want_grad) < 1e-5
    assert rel_err(naive32_grad, want_grad) < 1e-5
    assert got_grad.dtype == torch.float32
    assert int(got.num_rows) == int((b["labels"] != -100).sum())
    if cfg.uses_gate:
        assert (want.gate[b["labels"] != -100] > 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", VARIANTS)
def test_half_precision_logits(variant, dtype):
    b = random_batch(rows=20, vocab=257, k=9, dtype=dtype, ref_width="v" if variant == "full_vocab" else "k", seed=5)
    cfg = PACTConfig(variant=variant)
    want, want_grad = oracle(b, cfg)  # float64 on the same rounded values
    got, got_grad = run("torch", b, cfg, chunk_rows=6)
    naive, naive_grad = run("naive", b, cfg)
    assert got_grad.dtype == dtype and naive_grad.dtype == dtype
    assert rel_err(got.loss, want.loss) < 1e-5  # float32 accumulation of the same inputs
    assert rel_err(naive.loss, want.loss) < 1e-5
    assert rel_err(got_grad, want_grad) < 1e-2  # the gradient is rounded to the logits' dtype
    assert rel_err(got_grad, naive_grad) < 1e-2


def test_gradient_is_the_spec_formula():
    """d L / d z = (softmax(z) − onehot(y))/n + λ·T/n·(p_ft − p_ref) on S (SPEC §3)."""
    b = random_batch(rows=9, vocab=31, k=6, dtype=torch.float64, seed=2)
    cfg = PACTConfig.authors()  # T = 2, λ = 1
    out, grad = oracle(b, cfg)
    z, y, ids = b["logits"], b["labels"], b["safety_ids"]
    lab = y != -100
    n = lab.sum()
    expected = torch.softmax(z, -1)
    expected[torch.arange(9)[lab], y[lab]] -= 1
    # p_ref from the gate the loss reports, p_ft at temperature T.
    rf, rp, w, t = b["ref_full"].double(), b["ref_post"].double(), b["safety_weights"].double(), cfg.kl_temperature
    gate = out.gate.double()[:, None]
    mixed = (1 - gate) * rf + gate * rp
    p_ref = w * torch.exp(mixed / t)
    p_ref = p_ref / p_ref.sum(-1, keepdim=True)
    p_ft = torch.softmax(z[:, ids] / t, -1)
    expected[:, ids] += cfg.lambda_kl * t * (p_ft - p_ref)
    expected[~lab] = 0
    expected /= n
    # the reported gate is float32, hence rtol 1e-6 rather than float64 round-off
    assert torch.allclose(grad, expected, atol=1e-10, rtol=1e-6)
    got, got_grad = run("torch", b, cfg)
    assert torch.allclose(got_grad, expected, atol=1e-10, rtol=1e-6)


def test_hand_computed_row():
    """One row, V = 5, S = {1, 3}: every quantity by hand."""
    z = torch.tensor([[0.3, 1.2, -0.4, 2.0, 0.1]], dtype=torch.float64)
    y = torch.tensor([3])
    ids = torch.tensor([1, 3])
    w = torch.tensor([0.25, 1.0], dtype=torch.float64)
    rf = torch.tensor([[0.5, -0.5]], dtype=torch.float64)
    rp = torch.tensor([[3.0, -1.0]], dtype=torch.float64)
    t_pos = torch.tensor([10])
    cfg = PACTConfig(lambda_kl=3.0, mass_threshold=0.9, decay_start=8, decay_tau=8.0)
    # q_ft = softmax([1.2, 2.0]) = [0.310, 0.690] -> the top one is < 0.9, so I_ft = 2/2 = 1.
    # q_post = softmax([3, -1]) = [0.982, 0.018] -> I_post = 1/2.
    c = 1 / (1 + math.exp(-(1.0 - 0.5)))
    c_tilde = c * math.exp(-(10 - 8) / 8)
    m = [(1 - c_tilde) * 0.5 + c_tilde * 3.0, (1 - c_tilde) * -0.5 + c_tilde * -1.0]
    u = [0.25 * math.exp(m[0]), 1.0 * math.exp(m[1])]
    p_ref = [u[0] / sum(u), u[1] / sum(u)]
    e = [math.exp(1.2), math.exp(2.0)]
    p_ft = [e[0] / sum(e), e[1] / sum(e)]
    kl = sum(p * math.log(p / q) for p, q in zip(p_ref, p_ft))
    ce = -2.0 + math.log(sum(math.exp(v) for v in z[0].tolist()))
    for backend in ("naive", "torch"):
        out = pact_loss(z, y, rf, rp, ids, w, t_pos, backend=backend)
        assert out.gate.item() == pytest.approx(c_tilde, rel=1e-6)
        assert out.kl.item() == pytest.approx(kl, rel=1e-12)
        assert out.ce.item() == pytest.approx(ce, rel=1e-12)
        assert out.loss.item() == pytest.approx(ce + 3.0 * kl, rel=1e-12)
        # before the decay start the gate is c itself
        early = pact_loss(z, y, rf, rp, ids, w, torch.tensor([7]), backend=backend)
        assert early.gate.item() == pytest.approx(c, rel=1e-6)
        # response_only_ref never decays
        no_decay = pact_loss(z, y, rf, rp, ids, w, t_pos, variant="response_only_ref", backend=backend)
        assert no_decay.gate.item() == pytest.approx(c, rel=1e-6)


def test_k_equals_one():
    """K = 1: both restricted distributions are [1], so KL = 0, I = 1 on both sides, c = sigmoid(−αβ)."""
    b = random_batch(rows=8, vocab=40, k=1, seed=4)
    for backend in ("naive", "torch"):
        out, grad = run(backend, b, gate_bias=0.3, gate_scale=2.0)
        assert out.kl.item() == pytest.approx(0.0, abs=1e-7)
        lab = b["labels"] != -100
        expected_gate = 1 / (1 + math.exp(0.6))
        decay = torch.exp(-(b["answer_pos"].double() - 8).clamp_min(0) / 8)
        assert torch.allclose(out.gate[lab].double(), expected_gate * decay[lab], rtol=1e-6)
        ce_only, ce_grad = run(backend, b, lambda_kl=0.0)
        assert torch.allclose(grad, ce_grad, atol=1e-7)


def test_zero_weights_inside_s():
    """Zero-weight tokens stay in S (softmax, dispersion) but carry no reference mass."""
    b = random_batch(rows=15, vocab=64, k=8, seed=6)
    b["safety_weights"] = torch.tensor([0.0, 0.7, 0.0, 0.2, 0.0, 1.3, 0.0, 0.4])
    want, want_grad = oracle(b)
    assert torch.isfinite(want.loss)
    for backend in ("naive", "torch"):
        got, got_grad = run(backend, b, chunk_rows=4)
        assert rel_err(got.loss, want.loss) < 1e-5 and rel_err(got_grad, want_grad) < 1e-5
    # Zero-weight tokens: p_ref = 0, so their KL gradient is λ·T/n·p_ft > 0 (pushed down only by the KL).
    ids, lab = b["safety_ids"], b["labels"] != -100
    no_kl, no_kl_grad = oracle(b, lambda_kl=0.0)
    diff = (want_grad - no_kl_grad)[lab][:, ids]
    assert (diff[:, b["safety_weights"] == 0] > 0).all()
    # Changing the reference of a zero-weight token changes nothing.
    b2 = dict(b, ref_full=b["ref_full"].clone(), ref_post=b["ref_post"].clone())
    b2["ref_full"][:, 0] += 5.0
    b2["ref_post"][:, 0] -= 5.0
    assert oracle(b2, variant="safety_weights")[0].loss.item() == pytest.approx(
        oracle(b, variant="safety_weights")[0].loss.item(), rel=1e-12)


def test_minus_inf_logits_outside_s():
    b = random_batch(rows=10, vocab=50, k=6, seed=7, ignore_every=3)
    outside = torch.ones(50, dtype=torch.bool)
    outside[b["safety_ids"]] = False
    outside[b["labels"][b["labels"] != -100]] = False
    b["logits"][:, outside] = float("-inf")
    want, want_grad = oracle(b)
    assert torch.isfinite(want.loss) and torch.isfinite(want_grad).all()
    assert (want_grad[:, outside] == 0).all()
    for backend in ("naive", "torch"):
        got, got_grad = run(backend, b, chunk_rows=3)
        assert torch.isfinite(got_grad).all()
        assert rel_err(got.loss, want.loss) < 1e-5 and rel_err(got_grad, want_grad) < 1e-5
    # the same holds for full_vocab when the reference is -inf at the same places
    b["ref_full"] = b["logits"].clone()
    b["ref_full"][:, ~outside] += torch.randn(10, int((~outside).sum()))
    want, want_grad = oracle(b, variant="full_vocab")
    got, got_grad = run("torch", b, variant="full_vocab")
    assert torch.isfinite(want.loss) and rel_err(got.loss, want.loss) < 1e-5 and rel_err(got_grad, want_grad) < 1e-5


@pytest.mark.parametrize("backend", ["naive", "torch"])
def test_all_rows_ignored(backend):
    b = random_batch(rows=6, vocab=30, k=4, seed=8)
    b["labels"][:] = -100
    out, grad = run(backend, b)
    assert out.loss.item() == 0.0 and out.ce.item() == 0.0 and out.kl.item() == 0.0
    assert int(out.num_rows) == 0
    assert torch.equal(grad, torch.zeros_like(grad))
    assert torch.equal(out.gate, torch.zeros(6))


def test_rows_past_decay_start():
    """Rows at t ≥ N get the gate times exp(−(t − N)/τ); far rows use r_full almost alone."""
    b = random_batch(rows=40, vocab=80, k=10, seed=9, ignore_every=0, max_pos=200)
    full, _ = oracle(b)
    no_decay, _ = oracle(b, variant="response_only_ref")
    t = b["answer_pos"].double()
    decay = torch.where(t < 8, 1.0, torch.exp(-(t - 8) / 8))
    assert torch.allclose(full.gate.double(), no_decay.gate.double() * decay, rtol=1e-6)
    assert ((t >= 8) & (full.gate.double() < no_decay.gate.double())).any()
    got, _ = run("torch", b, chunk_rows=7)
    assert rel_err(got.gate, full.gate) < 1e-6


def test_torch_backend_inplace_gradient():
    b = random_batch(rows=19, vocab=120, k=9, seed=10)
    want, want_grad = run("torch", b, chunk_rows=5)
    logits = b["logits"].clone().requires_grad_()
    args = {k: v for k, v in b.items() if k != "logits"}
    out = pact_loss_from_config(logits, *args.values(), PACTConfig(), backend="torch", chunk_rows=5, inplace_grad=True)
    out.loss.backward()
    assert torch.equal(logits.grad, want_grad)
    assert logits.grad.data_ptr() == logits.data_ptr()  # the gradient lives in the logits buffer
    assert out.loss.item() == want.loss.item()


def test_backward_scales_by_incoming_gradient():
    b = random_batch(rows=9, vocab=60, k=5, seed=12)
    _, want_grad = run("naive", b)
    logits = b["logits"].clone().requires_grad_()
    args = {k: v for k, v in b.items() if k != "logits"}
    out = pact_loss(logits, *args.values(), backend="torch")
    (0.25 * out.loss).backward()
    assert rel_err(logits.grad, 0.25 * want_grad) < 1e-6
    with pytest.raises(RuntimeError, match="second backward"):
        torch.autograd.grad(out.loss * 0.5, logits)  # buffer already scaled in place


def test_references_get_no_gradient():
    b = random_batch(rows=8, vocab=40, k=5, seed=13)
    args = {k: v for k, v in b.items()}
    args["logits"] = args["logits"].requires_grad_()
    args["ref_full"] = args["ref_full"].requires_grad_()
    args["ref_post"] = args["ref_post"].requires_grad_()
    for backend in ("naive", "torch"):
        out = pact_loss(*args.values(), backend=backend)
        grads = torch.autograd.grad(out.loss, [args["logits"], args["ref_full"], args["ref_post"]], allow_unused=True)
        assert grads[0] is not None and grads[1] is None and grads[2] is None


def test_k_width_and_v_width_references_agree():
    b = random_batch(rows=12, vocab=70, k=6, seed=14, ref_width="v")
    b_k = dict(b, ref_full=b["ref_full"][:, b["safety_ids"]], ref_post=b["ref_post"][:, b["safety_ids"]])
    for backend in ("naive", "torch"):
        out_v, grad_v = run(backend, b)
        out_k, grad_k = run(backend, b_k)
        assert out_v.loss.item() == pytest.approx(out_k.loss.item(), rel=1e-6)
        assert rel_err(grad_v, grad_k) < 1e-6


def test_optional_inputs_per_variant():
    b = random_batch(rows=8, vocab=40, k=5, seed=15)
    for variant in ("safety_tokens", "safety_weights"):
        out = pact_loss(b["logits"], b["labels"], b["ref_full"], None, b["safety_ids"], b["safety_weights"], None,
                        variant=variant, backend="torch")
        assert torch.isfinite(out.loss) and (out.gate == 0).all()
    out = pact_loss(b["logits"], b["labels"], b["ref_full"], b["ref_post"], b["safety_ids"], b["safety_weights"],
                    None, variant="response_only_ref", backend="torch")
    assert torch.isfinite(out.loss)


def test_safety_tokens_variant_ignores_weights():
    b = random_batch(rows=10, vocab=40, k=5, seed=16)
    b_ones = dict(b, safety_weights=torch.ones(5))
    b_other = dict(b, safety_weights=torch.rand(5) + 0.1)
    a = oracle(b_ones, variant="safety_tokens")[0].loss.item()
    assert oracle(b_other, variant="safety_tokens")[0].loss.item() == pytest.approx(a, rel=1e-12)
    assert oracle(b_other, variant="safety_weights")[0].loss.item() != pytest.approx(a, rel=1e-6)


def test_pact_loss_module_and_auto_backend():
    b = random_batch(rows=10, vocab=50, k=5, seed=17)
    module = PACTLoss(b["safety_ids"], b["safety_weights"], PACTConfig.authors())
    logits = b["logits"].clone().requires_grad_()
    out = module(logits, b["labels"], b["ref_full"], b["ref_post"], b["answer_pos"])
    out.loss.backward()
    want, want_grad = oracle(b, PACTConfig.authors())
    assert rel_err(out.loss, want.loss) < 1e-5 and rel_err(logits.grad, want_grad) < 1e-5
    assert "k=5" in repr(module)
    # unpacking works as well as attributes
    loss, ce, kl, gate, n = out
    assert loss is out.loss and int(n) == 8
