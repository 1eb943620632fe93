"""The triton backend against the float64 naive oracle: loss terms, gate and gradient.

Runs the kernels on the CPU under ``TRITON_INTERPRET=1`` (set here when
missing), or on a GPU with ``PACT_TEST_DEVICE=cuda`` (benchmarks/gpu_check.sh).
Tolerances are SPEC's: relative error < 1e-5 for float32 inputs, < 1e-2 for
bfloat16 / float16 (the gradient is rounded to the logits' dtype once). The
interpreter truncates float32 → bfloat16 casts where a GPU rounds to nearest,
so bfloat16 gradient errors here (~3e-3) are about twice a GPU's.
"""
from __future__ import annotations

import json
import os

DEVICE = os.environ.get("PACT_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    # Must precede the first import of triton_kernels: @triton.jit reads it.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from pact_kernels import VARIANTS, PACTConfig, pact_loss_from_config  # noqa: E402
from pact_kernels import PACTInputs  # noqa: E402
from pact_kernels.backends.naive import naive_pact_loss  # noqa: E402
from pact_kernels.precision import held_gradient_dtype  # noqa: E402
from pact_kernels.backends import triton_launch as triton_backend  # noqa: E402
from pact_kernels.backends.triton_launch import forward_with_grad  # noqa: E402

from .inputs import random_batch, rel_err  # noqa: E402

# The interpreter warns on −inf − (−inf) in lanes that tl.where then discards.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
GATED = ("response_only_ref", "pact")


def make_batch(variant, rows=10, vocab=1000, k=7, dtype=torch.float32, ref_width="k", seed=0):
    """A random batch (``[rows, V]`` logits of ``dtype``), with two labels inside S.

    ``full_vocab`` always gets ``[rows, V]`` references. Row 0, 5 are unlabelled.
    """
    width = "v" if variant == "full_vocab" else ref_width
    b = random_batch(rows=rows, vocab=vocab, k=k, dtype=dtype, ref_width=width, seed=seed, ignore_every=5)
    b["labels"][1] = b["safety_ids"][0]
    b["labels"][rows - 1] = b["safety_ids"][k - 1]
    return b


def oracle(b, cfg):
    """The naive backend on float64 copies: (output, gradient of the logits [rows, V] float64)."""
    z = b["logits"].detach().cpu().double().requires_grad_()
    f64 = lambda t: None if t is None else t.detach().cpu().double()  # noqa: E731
    cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
    out = naive_pact_loss(z, PACTInputs(cpu(b["labels"]), f64(b["ref_full"]), f64(b["ref_post"]),
                                        cpu(b["safety_ids"]), f64(b["safety_weights"]), cpu(b["answer_pos"])), cfg)
    out.loss.backward()
    return out, z.grad


def on_device(b):
    return {name: t.to(DEVICE) for name, t in b.items()}


def triton(b, cfg, inplace_grad=False):
    """``forward_with_grad`` of the triton backend on a device copy of ``b``.

    Returns ``(loss, ce, kl, gate, n, grad, ce_rows, kl_rows)``, all but ``grad`` on the CPU.
    """
    d = on_device(b)
    logits = d.pop("logits").clone()
    result = forward_with_grad(logits, PACTInputs(**d), cfg, inplace_grad=inplace_grad)
    return tuple(t if i == 5 else t.cpu() for i, t in enumerate(result))


def assert_matches_oracle(b, cfg, inplace_grad=False):
    """Loss, ce, kl, gate, num_rows and gradient of the triton backend against the oracle."""
    dtype = b["logits"].dtype
    tol = TOL[dtype]
    want, want_grad = oracle(b, cfg)
    loss, ce, kl, gate, n, grad, ce_rows, kl_rows = triton(b, cfg, inplace_grad)
    assert grad.dtype == held_gradient_dtype(dtype) and grad.shape == b["logits"].shape
    assert loss.dtype == ce.dtype == kl.dtype == gate.dtype == torch.float32
    assert int(n) == int(want.num_rows)
    assert rel_err(loss, want.loss) < tol
    assert rel_err(ce, want.ce) < tol
    assert rel_err(kl, want.kl) < tol
    assert rel_err(grad.cpu(), want_grad) < tol
    assert rel_err(ce_rows, want.ce_rows) < tol and rel_err(kl_rows, want.kl_rows) < tol
    # The gate is piecewise constant in its inputs: equal up to float32 rounding.
    assert torch.allclose(gate.double(), want.gate.double(), rtol=1e-5, atol=1e-6)
    unlabelled = b["labels"] == cfg.ignore_index
    assert (grad.cpu()[unlabelled] == 0).all()
    return want, grad


# Every variant × float32/bfloat16 × references gathered ([rows, K]) or full ([rows, V]).
VARIANT_WIDTHS = [(v, w) for v in VARIANTS for w in ("k", "v") if not (v == "full_vocab" and w == "k")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant,ref_width", VARIANT_WIDTHS)
def test_matches_oracle(variant, ref_width, dtype):
    b = make_batch(variant, dtype=dtype, ref_width=ref_width, seed=1)
    cfg = PACTConfig(variant=variant, decay_start=8)
    want, _ = assert_matches_oracle(b, cfg)
    if variant in GATED:
        # The inputs exercise the gate: it varies across rows, and pact decays it after N.
        labelled = want.gate[b["labels"] != -100]
        assert labelled.unique().numel() > 2
        late = (b["answer_pos"] >= 9) & (b["labels"] != -100)
        if variant == "pact":
            assert late.any() and ((b["answer_pos"] < 8) & (b["labels"] != -100)).any()


@pytest.mark.parametrize("k", [1, 7, 50, 64])
@pytest.mark.parametrize("variant", ["safety_tokens", "pact"])
def test_safety_set_sizes(variant, k):
    b = make_batch(variant, rows=6, vocab=1000, k=k, seed=k)
    assert_matches_oracle(b, PACTConfig(variant=variant))


@pytest.mark.parametrize("variant", ["safety_weights", "response_only_ref", "pact", "full_vocab"])
def test_other_hyper_parameters(variant):
    # authors preset (T = 2, α = 2, λ = 1) with a cooler gate softmax, another τ_mass and a bias.
    cfg = PACTConfig.authors(variant=variant, gate_temperature=0.5, mass_threshold=0.7, gate_bias=0.1,
                             decay_start=3, decay_tau=2.5)
    b = make_batch(variant, rows=8, vocab=1000, k=50, seed=7)
    assert_matches_oracle(b, cfg)


@pytest.mark.parametrize("k", [41, 47, 50, 55, 61])
def test_dispersion_counts_and_caps_at_k(k):
    # τ_mass = 1: a uniform q needs all K entries (float32 rounding may leave the total
    # just under 1: the count is capped at K), a one-hot q needs one. So
    # I(q_ft) = 1, I(q_post) = 1/K and the gate is sigmoid(α·(1 − 1/K − β)) exactly.
    b = make_batch("response_only_ref", rows=3, vocab=200, k=k, seed=k)
    b["logits"][:, b["safety_ids"]] = 0.5
    b["ref_post"].zero_()
    b["ref_post"][:, 3] = 100.0
    cfg = PACTConfig(variant="response_only_ref", mass_threshold=1.0, gate_scale=2.0, gate_bias=0.25)
    gate = triton(b, cfg)[3]
    want = torch.sigmoid(torch.tensor(2.0 * (1 - 1 / k - 0.25)))
    labelled = b["labels"] != -100
    assert torch.allclose(gate[labelled], want.expand(int(labelled.sum())), rtol=1e-6)


def test_zero_weights_stay_in_the_softmax_only():
    b = make_batch("pact", rows=8, vocab=1000, k=50, seed=5)
    b["safety_weights"][::2] = 0.0  # authors-style weights: half of S weighs 0
    want, grad = assert_matches_oracle(b, PACTConfig())
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", VARIANTS)
def test_in_place_gradient(variant, dtype):
    b = make_batch(variant, rows=6, vocab=1000, k=7, dtype=dtype, seed=2)
    cfg = PACTConfig(variant=variant)
    fresh_grad = triton(b, cfg)[5]
    logits = b["logits"].clone().to(DEVICE)
    d = on_device(b)
    d.pop("logits")
    grad = forward_with_grad(logits, PACTInputs(**d), cfg, inplace_grad=True)[5]
    assert grad.data_ptr() == logits.data_ptr()
    assert torch.equal(grad, fresh_grad)  # the same values as the out-of-place buffer, bit for bit
    assert_matches_oracle(b, cfg, inplace_grad=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", VARIANTS)
def test_minus_inf_outside_the_safety_set(variant, dtype):
    b = make_batch(variant, rows=6, vocab=1000, k=7, dtype=dtype, seed=3)
    keep = torch.zeros(1000, dtype=torch.bool)
    keep[b["safety_ids"]] = True
    keep[b["labels"][b["labels"] >= 0]] = True
    masked = ~keep & (torch.arange(1000) % 3 != 0)  # two thirds of the other columns
    b["logits"][:, masked] = float("-inf")
    if variant == "full_vocab":  # a reference that is −inf there too keeps the KL finite
        b["ref_full"][:, masked] = float("-inf")
    _, grad = assert_matches_oracle(b, PACTConfig(variant=variant))
    assert torch.isfinite(grad).all() and (grad[:, masked] == 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_many_small_blocks(variant, monkeypatch):
    # 128-column blocks: V = 1000 takes eight steps per sweep, the last one partial.

    monkeypatch.setattr(triton_backend, "SAFETY_SET_BLOCK_V", 128)
    monkeypatch.setattr(triton_backend, "FULL_VOCAB_BLOCK_V", 128)
    assert triton_backend.launch_config(1000, two_streams=variant == "full_vocab") == (128, 4)
    b = make_batch(variant, rows=6, vocab=1000, k=50, seed=12)
    b["logits"][:, :300] = float("-inf")  # the first blocks hold only −inf
    b["logits"][:, b["safety_ids"]] = torch.randn(6, 50, dtype=torch.float64).to(b["logits"].dtype)
    b["labels"] = torch.where(b["labels"] < 300, b["safety_ids"][2], b["labels"])
    b["labels"][0] = -100
    if variant == "full_vocab":
        b["ref_full"][:, :300] = float("-inf")
        b["ref_full"][:, b["safety_ids"]] = 1.0
    assert_matches_oracle(b, PACTConfig(variant=variant))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_more_than_512_safety_tokens_take_narrower_steps(dtype):
    """513 ≤ K ≤ 1024 (K_PAD 1024): 16384-column steps (32768 spill in the sweep loops on sm_90,
    checks/compile_check.py); the loss still matches the oracle, with column-strided logits too."""

    assert triton_backend.launch_config(152064, two_streams=False, k_pad=512) == (32768, 32)
    assert triton_backend.launch_config(152064, two_streams=False, k_pad=1024) == (16384, 32)
    assert triton_backend.launch_config(152064, two_streams=True, k_pad=1024) == (8192, 32)
    b = make_batch("pact", rows=3, vocab=1500, k=600, dtype=dtype, seed=14)
    assert_matches_oracle(b, PACTConfig())
    cfg = PACTConfig()
    want, want_grad = oracle(b, cfg)
    wide = torch.zeros(1500, 3, dtype=dtype).t()  # column stride 3
    wide.copy_(b["logits"])
    d = on_device(dict(b, logits=wide))
    loss, *_, grad, _, _ = forward_with_grad(d.pop("logits"), PACTInputs(**d), cfg)
    assert rel_err(loss.cpu(), want.loss) < TOL[dtype] and rel_err(grad.cpu(), want_grad) < TOL[dtype]


def test_whole_minus_inf_blocks_large_vocab():
    # V = 50257 spans two 32768-wide blocks; the first is all −inf, so the online
    # log-sum-exp starts from an empty prefix. S and the labels lie in the second block.
    vocab, k = 50257, 50
    b = make_batch("pact", rows=4, vocab=vocab, k=k, seed=4)
    ids = 40000 + torch.randperm(vocab - 40000, generator=torch.Generator().manual_seed(0))[:k]
    b["safety_ids"] = ids
    b["labels"] = torch.tensor([-100, int(ids[3]), 45000, 50256])
    b["logits"][:, :40000] = float("-inf")
    assert_matches_oracle(b, PACTConfig())


@pytest.mark.parametrize("variant,dtype,ref_width", [
    ("pact", torch.float32, "k"),
    ("pact", torch.bfloat16, "v"),
    ("full_vocab", torch.float32, "v"),
])
def test_large_vocab(variant, dtype, ref_width):
    b = make_batch(variant, rows=4, vocab=50257, k=50, dtype=dtype, ref_width=ref_width, seed=6)
    assert_matches_oracle(b, PACTConfig(variant=variant))


@pytest.mark.parametrize("variant", ["pact", "full_vocab"])
def test_float16(variant):
    b = make_batch(variant, rows=6, vocab=1000, k=50, dtype=torch.float16, seed=8)
    assert_matches_oracle(b, PACTConfig(variant=variant))


def test_strided_logits_and_references():
    b = make_batch("pact", rows=6, vocab=1000, k=7, ref_width="v", seed=9)
    cfg = PACTConfig()
    want, want_grad = oracle(b, cfg)
    wide = torch.randn(6, 1100)
    wide[:, 50:1050] = b["logits"]
    ref = torch.randn(1000, 6).t()  # column stride 6
    ref.copy_(b["ref_post"])
    d = on_device(dict(b, logits=wide[:, 50:1050], ref_post=ref))
    loss, ce, kl, gate, n, grad, *_ = forward_with_grad(d.pop("logits"), PACTInputs(**d), cfg)
    assert rel_err(loss.cpu(), want.loss) < 1e-5
    assert rel_err(grad.cpu(), want_grad) < 1e-5


@pytest.mark.parametrize("variant", ["pact", "full_vocab"])
def test_autograd_scales_the_gradient(variant):
    # Through pact_loss and PACTLossFunction: backward of 2.5·loss gives 2.5× the oracle's gradient.
    b = on_device(make_batch(variant, rows=6, vocab=1000, k=7, seed=10))
    cfg = PACTConfig(variant=variant)
    want, want_grad = oracle(b, cfg)
    args = dict(b)
    logits = args.pop("logits").clone().requires_grad_()
    out = pact_loss_from_config(logits, *args.values(), cfg, backend="triton")
    (2.5 * out.loss).backward()
    assert rel_err(out.loss.detach().cpu(), want.loss) < 1e-5
    assert rel_err(out.kl_rows.cpu(), want.kl_rows) < 1e-5
    assert rel_err(logits.grad.cpu(), 2.5 * want_grad) < 1e-5


@pytest.mark.parametrize("inplace_grad", [False, True])
@pytest.mark.parametrize("variant", ["pact", "full_vocab"])
def test_no_labelled_row_gives_zero(variant, inplace_grad):
    b = make_batch(variant, rows=4, vocab=1000, k=7, seed=11)
    b["labels"][:] = -100
    loss, ce, kl, gate, n, grad, ce_rows, kl_rows = triton(b, PACTConfig(variant=variant), inplace_grad=inplace_grad)
    assert (ce_rows == 0).all() and (kl_rows == 0).all()
    assert float(loss) == 0.0 and float(ce) == 0.0 and float(kl) == 0.0 and int(n) == 0
    assert (grad == 0).all() and (gate == 0).all()


@pytest.mark.skipif(DEVICE == "cpu" or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("variant", ["pact", "full_vocab"])
def test_logits_on_another_device_than_the_current_one(variant):
    """Logits on the last device while device 0 is current (``device_map="auto"``): the launch follows the
    tensor (loss and gradient as the oracle's, on that device), and the current device is left as it was."""
    other = torch.device("cuda", torch.cuda.device_count() - 1)
    b = make_batch(variant, rows=6, vocab=1000, k=7, seed=21)
    cfg = PACTConfig(variant=variant)
    want, want_grad = oracle(b, cfg)
    torch.cuda.set_device(0)
    d = {name: t.to(other) for name, t in b.items()}
    logits = d.pop("logits").clone().requires_grad_()
    out = pact_loss_from_config(logits, *d.values(), cfg, backend="triton")
    out.loss.backward()
    torch.cuda.synchronize(other)
    assert torch.cuda.current_device() == 0
    assert logits.grad.device == other and out.loss.device == other
    assert rel_err(out.loss.detach().cpu(), want.loss) < 1e-5
    assert rel_err(logits.grad.cpu(), want_grad) < 1e-5


def test_float64_is_refused():
    b = make_batch("pact", rows=2, vocab=100, k=7, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        triton(b, PACTConfig())


# The Python parts of checks/gpu_check.sh, smoke-run on the CPU so that a typo
# cannot wait for the next GPU session to show.


@pytest.mark.skipif(DEVICE != "cpu", reason="the GPU run covers these scripts itself")
def test_gpu_correctness_script_small(tmp_path):
    from checks import gpu_correctness

    out = tmp_path / "correctness.json"
    assert gpu_correctness.main(["--device", "cpu", "--small", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["failed"] == 0 and len(report["cases"]) == 108 + 9
    assert sum(c.get("check") == "precision" for c in report["cases"]) == 9  # the precision matrix, triton
    assert {c["backend"] for c in report["cases"]} == {"naive", "torch", "triton", "triton+inplace"}


@pytest.mark.skipif(DEVICE != "cpu", reason="the GPU run covers these scripts itself")
def test_gpu_benchmark_runner_small(tmp_path):
    from benchmarks import run_gpu_bench

    out = tmp_path / "bench"
    code = run_gpu_bench.main(["--device", "cpu", "--dtypes", "float32", "-k", "forward_backward or copy",
                               "-o", str(out)])
    assert code == 0
    shapes = json.loads(out.with_suffix(".json").read_text())["shapes"]
    assert len(shapes) == 1 and shapes[0]["vocab"] == 1000
    assert {"naive forward_backward", "torch forward_backward", "triton forward_backward",
            "triton_inplace forward_backward", "copy floor"} <= set(shapes[0]["ms"])
    table = out.with_suffix(".md").read_text()
    assert "| 8 | 1000 | float32 |" in table and "Acceptance shape" in table


def test_benchmark_summary_ratios_and_acceptance():
    from benchmarks import run_gpu_bench

    logits_bytes = 16384 * 152064 * 2

    def bench(case, mode, ms, peak, grad):
        info = dict(case=case, mode=mode, rows=16384, vocab=152064, k=50, dtype="bfloat16", device="H100",
                    logits_bytes=logits_bytes, peak_bytes=peak, grad_bytes=grad, beyond_grad_bytes=peak - grad)
        return {"extra_info": info, "stats": {"median": ms / 1e3}}

    raw = {"benchmarks": [
        bench("naive", "forward_backward", 100.0, 6 * logits_bytes, logits_bytes),
        bench("triton", "forward_backward", 10.0, logits_bytes + logits_bytes // 50, logits_bytes),
        bench("triton_inplace", "forward_backward", 9.0, logits_bytes // 20, 0),
        bench("liger_ce", "forward_backward", 8.0, 0, 0),
        bench("copy", "floor", 5.0, 0, 0),
    ]}
    (summary,) = [run_gpu_bench.summarise(k, c) for k, c in run_gpu_bench.collect(raw).items()]
    assert summary["triton_speedup_vs_naive"] == pytest.approx(10.0)
    assert summary["triton_over_floor"] == pytest.approx(2.0)
    assert summary["triton_over_liger_ce"] == pytest.approx(1.25)
    assert summary["triton_beyond_grad_pct_of_logits"] == pytest.approx(2.0, rel=1e-3)
    assert summary["triton_inplace_beyond_logits_pct"] == pytest.approx(5.0, rel=1e-3)
    assert summary["copy_gb_per_s"] == pytest.approx(2 * logits_bytes / 5e-3 / 1e9)
    lines = run_gpu_bench.acceptance_lines([summary])
    assert "- PASS: triton fwd+bwd at least 8x faster than naive (10.00)" in lines
    assert "- FAIL: triton within 1.5x of the bandwidth floor (2.00)" in lines
    assert "- FAIL: triton within 1.15x of Liger's cross-entropy (1.25)" in lines
    assert "- PASS: in-place extra memory under 10% of the logits (5.00)" in lines


@pytest.mark.skipif(DEVICE != "cpu", reason="on a GPU the kernels compile for real")
def test_kernels_compile_for_h100_without_spills_in_loops():
    # The interpreter cannot see CUDA compile errors or register spills: compile for
    # sm_90 with triton's bundled ptxas (no GPU needed) in a process without TRITON_INTERPRET.
    import subprocess
    import sys
    from pathlib import Path

    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this triton build ships no ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-m", "checks.compile_check"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=450)
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert run.returncode == 0, run.stdout + run.stderr
    assert all(r["spills_in_loops"] == 0 for r in records)
    # the plain cross-entropy kernel: bf16 (aligned, unaligned, column-strided rows), fp16 with its fp32 gradient
    cross_entropy = [r for r in records if r["kernel"] == "cross_entropy"]
    assert [(r["dtype"], r["grad_dtype"], r["strided_logits"]) for r in cross_entropy] == [
        ("bf16", "bf16", False), ("bf16", "bf16", False), ("bf16", "bf16", True),
        ("fp16", "fp32", False), ("fp16", "fp32", False)]
    records = [r for r in records if r["kernel"] != "cross_entropy"]
    assert len(records) == 18
    assert {r["aligned_rows"] for r in records} == {True, False}
    # K between 513 and 1024 in bf16 / fp16 (the fp16 gradient in float32), column-strided logits too
    large_k = [r for r in records if r.get("K_PAD") == 1024]
    assert {(r["dtype"], r["grad_dtype"]) for r in large_k} == {("bf16", "bf16"), ("fp16", "fp32")}
    assert sum(r["strided_logits"] for r in large_k) == 2
