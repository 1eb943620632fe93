"""The dispersion count at ties is the same on every backend (SPEC §3 step 2's tie rule).

``I(q) = min{k : sum of the k largest q ≥ τ_mass − 1e-6} / K``: at an exact tie
(all K safety logits equal, τ_mass·K whole) the cumulative mass reaches
τ_mass at k = τ_mass·K up to float32 rounding, which differs with the order of
the summation (sequential on the CPU, a tree scan in Triton, lane chunks and a
warp scan in CUDA); the 1e-6 margin makes that count k = τ_mass·K on all of
them. Near ties (the τ_mass·K − 1 largest hold τ_mass ± 3e-5) are counted
as the float64 rule counts them.

Read through the gate: variant ``response_only_ref`` with α = 1, β = 0 and a
one-hot ``r_post`` (I_post = 1/K) gives ``gate = sigmoid(I_ft − 1/K)``, so
``count = K·logit(gate) + 1``. Backends: naive, torch, triton (interpreter),
and the CUDA kernels compiled for the host (``test_cuda_emulated``).
"""
from __future__ import annotations

import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the first import of triton_kernels

import pytest  # noqa: E402
import torch  # noqa: E402

from pact_kernels import PACTConfig, pact_loss_from_config  # noqa: E402
from pact_kernels.formulas import dispersion  # noqa: E402

from .test_cuda_emulated import build, emulate  # noqa: E402

VOCAB = 1200
# (K, τ_mass): τ_mass·K whole, so an all-tie row sits exactly on the threshold.
TIES = [(10, 0.9), (20, 0.9), (50, 0.9), (50, 0.5), (100, 0.9), (300, 0.7), (520, 0.5), (1000, 0.9)]


@pytest.fixture(scope="module")
def cuda_lib(tmp_path_factory):
    return build(tmp_path_factory, 512)


def tie_batch(k, mass_threshold, seed=0):
    """Rows on S: 0 all tied; 1 the τK − 1 largest tied and holding τ + 3e-5, the rest tied lower; 2 the same
    holding τ − 3e-5; 3 random. ``r_post`` one-hot on S (I_post = 1/K)."""
    g = torch.Generator().manual_seed(seed)
    rows = 4
    ids = torch.randperm(VOCAB, generator=g)[:k]
    logits = torch.randn(rows, VOCAB, generator=g, dtype=torch.float64)
    top = round(mass_threshold * k) - 1
    on_s = torch.zeros(rows, k, dtype=torch.float64)
    for row, margin in ((1, 3e-5), (2, -3e-5)):
        # (k − top) entries at log(x) with top/(top + (k − top)·x) = τ + margin
        rest = top / (mass_threshold + margin) - top
        on_s[row, top:] = math.log(rest / (k - top))
    on_s[3] = torch.randn(k, generator=g, dtype=torch.float64)
    logits[:, ids] = on_s + 1.0
    labels = torch.randint(0, VOCAB, (rows,), generator=g)
    ref_full = torch.randn(rows, k, generator=g)
    ref_post = torch.full((rows, k), -30.0)
    ref_post[:, 0] = 30.0
    return dict(logits=logits.float(), labels=labels, ref_full=ref_full, ref_post=ref_post, safety_ids=ids,
                safety_weights=torch.ones(k), answer_pos=torch.zeros(rows, dtype=torch.long)), on_s


def counts_from_gate(gate, k):
    g = gate.double()
    return [round(k * math.log(x / (1 - x)) + 1) for x in g.tolist()]


def expected_counts(on_s, mass_threshold):
    """The rule in float64: count of the sorted cumulative mass below τ − 1e-6, plus one, at most K."""
    return [round(float(x) * on_s.shape[1]) for x in dispersion(torch.softmax(on_s, dim=-1), mass_threshold)]


@pytest.mark.parametrize("k,mass_threshold", TIES)
def test_every_backend_counts_ties_alike(k, mass_threshold, cuda_lib):
    b, on_s = tie_batch(k, mass_threshold)
    cfg = PACTConfig(variant="response_only_ref", gate_scale=1.0, gate_bias=0.0, mass_threshold=mass_threshold)
    tie = round(mass_threshold * k)
    want = expected_counts(on_s, mass_threshold)
    assert want[:3] == [tie, tie - 1, tie]  # the rule itself: a tie counts τK; τ ± 3e-5 in τK − 1 entries
    got = {}
    for backend in ("naive", "torch", "triton"):
        out = pact_loss_from_config(b["logits"], b["labels"], b["ref_full"], b["ref_post"], b["safety_ids"],
                                    b["safety_weights"], b["answer_pos"], cfg, backend=backend)
        got[backend] = counts_from_gate(out.gate, k)
    *_, gate, _ = emulate(cuda_lib, b, cfg)
    got["cuda"] = counts_from_gate(gate, k)
    for backend, counts in got.items():
        assert counts == want, f"{backend}: {counts} != {want} (K={k}, τ={mass_threshold})"
