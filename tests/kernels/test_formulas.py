"""Hand-checked values of the dispersion I(q), the gate and the position decay."""
from __future__ import annotations

import math

import pytest
import torch

from pact_kernels import PACTConfig, pact_loss
from pact_kernels.formulas import dispersion, position_decay


@pytest.mark.parametrize("k", [1, 4, 50])
def test_one_hot_gives_one_over_k(k):
    q = torch.zeros(3, k, dtype=torch.float64)
    q[0, 0] = q[1, k - 1] = q[2, k // 2] = 1.0
    assert torch.allclose(dispersion(q, 0.9), torch.full((3,), 1.0 / k, dtype=torch.float64))


def test_dispersion_counts_the_largest_entries_to_the_threshold():
    q = torch.tensor([
        [0.05, 0.5, 0.15, 0.3],    # sorted 0.5, 0.8, 0.95 -> 3 entries
        [0.25, 0.25, 0.25, 0.25],  # 0.25, 0.5, 0.75, 1.0 -> 4
        [0.92, 0.04, 0.02, 0.02],  # 0.92 -> 1
        [0.45, 0.46, 0.05, 0.04],  # 0.46, 0.91 -> 2
    ], dtype=torch.float64)
    assert dispersion(q, 0.9).tolist() == [0.75, 1.0, 0.25, 0.5]
    # a lower threshold needs fewer entries
    assert dispersion(q, 0.5).tolist() == [0.25, 0.5, 0.25, 0.5]
    # τ_mass = 1 with a total that rounds just below 1 still counts at most K
    assert dispersion(torch.full((1, 3), 1 / 3, dtype=torch.float32), 1.0).tolist() == [1.0]


def test_position_decay_values():
    t = torch.tensor([0, 7, 8, 9, 16, 40])
    got = position_decay(t, 8, 8.0, torch.float64)
    want = [1.0, 1.0, 1.0, math.exp(-1 / 8), math.exp(-1.0), math.exp(-4.0)]
    assert got.tolist() == pytest.approx(want, rel=1e-15)


def _gate(q_ft_logits, q_post_logits, t, **cfg):
    k = len(q_ft_logits)
    z = torch.full((1, 10), -3.0, dtype=torch.float64)
    ids = torch.arange(k)
    z[0, :k] = torch.tensor(q_ft_logits, dtype=torch.float64)
    rp = torch.tensor([q_post_logits], dtype=torch.float64)
    rf = torch.zeros(1, k, dtype=torch.float64)
    out = pact_loss(z, torch.tensor([0]), rf, rp, ids, torch.ones(k), torch.tensor([t]), backend="naive", **cfg)
    return out.gate.item()


def test_gate_is_sigmoid_of_the_dispersion_gap():
    # fine-tuned spread over 3 of 4 tokens (I = 0.75), reference one-hot (I = 0.25): gap 0.5
    ft = [math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)]
    post = [20.0, 0.0, 0.0, 0.0]
    assert _gate(ft, post, 0) == pytest.approx(1 / (1 + math.exp(-0.5)), rel=1e-6)
    # α = 2, β = 0.1 (the authors' α): sigmoid(2·(0.5 − 0.1))
    assert _gate(ft, post, 0, gate_scale=2.0, gate_bias=0.1) == pytest.approx(1 / (1 + math.exp(-0.8)), rel=1e-6)
    # swapped views: gap −0.5
    assert _gate(post, ft, 3) == pytest.approx(1 / (1 + math.exp(0.5)), rel=1e-6)
    # after the decay start N = 8, τ = 8: times exp(−(12 − 8)/8)
    assert _gate(ft, post, 12) == pytest.approx(math.exp(-0.5) / (1 + math.exp(-0.5)), rel=1e-6)
    # the gate temperature flattens both restricted softmaxes: T_g = 100 makes both near uniform (I = 1)
    assert _gate(ft, post, 0, gate_temperature=100.0) == pytest.approx(0.5, rel=1e-6)


def test_kl_temperature_scales_by_t_squared():
    """With one positive weight p_ref is one-hot on it, so KL_row = −T²·log p_ft(v*) exactly."""
    z = torch.tensor([[0.4, -1.0, 2.5, 0.0]], dtype=torch.float64)
    ids = torch.tensor([0, 2, 3])
    w = torch.tensor([0.0, 1.0, 0.0])
    rf = torch.randn(1, 3, dtype=torch.float64)
    for temp in (1.0, 2.0):
        out = pact_loss(z, torch.tensor([1]), rf, None, ids, w, None, variant="safety_weights",
                        kl_temperature=temp, backend="naive")
        zs = z[0, ids] / temp
        expected = -temp**2 * (zs[1] - torch.logsumexp(zs, 0))
        assert out.kl.item() == pytest.approx(expected.item(), rel=1e-12)


def test_authors_preset_values():
    cfg = PACTConfig.authors()
    assert (cfg.lambda_kl, cfg.gate_scale, cfg.kl_temperature, cfg.decay_start, cfg.decay_tau) == (1.0, 2.0, 2.0, 8, 8.0)
    assert (cfg.mass_threshold, cfg.gate_bias, cfg.gate_temperature, cfg.variant) == (0.9, 0.0, 1.0, "pact")
    paper = PACTConfig()
    assert (paper.lambda_kl, paper.mass_threshold, paper.gate_scale, paper.kl_temperature) == (3.0, 0.9, 1.0, 1.0)
    assert PACTConfig.preset("authors", lambda_kl=0.5).lambda_kl == 0.5
