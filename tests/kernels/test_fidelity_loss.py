"""docs/fidelity.md: ``pact_loss(..., **PACTConfig.authors().as_kwargs())`` equals the loss of the authors'
``finetuning_pact.py`` (Glresearch1/PACT) on samples with one contiguous answer.

``authors_loss`` below re-derives their training step's loss from their code, written independently of
``pact_kernels``: CE on the labels, plus λ times the mean over answer tokens of
T²·KL(q ‖ softmax(z[S]/T)), q ∝ softmax(mix/T)·w, mix = (1 − c)·ref_full[S] + c·ref_post[S],
c = sigmoid(α·(I_trn − I_post − β))·exp(−max(t − N, 0)/τ), I = (1 + #{top-p cdf < 0.9}) / |S| of the
gate softmax at temperature 1, S = the nonzero entries of their v_dir (sorted by id), w = v_dir[S]
clipped at 0.
"""
from __future__ import annotations

import pytest
import torch

from pact_kernels import PACTConfig, pact_loss


def top_p_count(probs: torch.Tensor, p0: float) -> torch.Tensor:
    sorted_probs, _ = probs.sort(dim=-1, descending=True)
    return (sorted_probs.cumsum(-1) < p0).sum(-1) + 1


def authors_loss(z, labels, ref_full, ref_post, v_dir, answer_len, *, lam=1.0, alpha=2.0, bias=0.0, top_p=0.9,
                 n_prefix=8, tau=8.0, T=2.0):
    """One sample, answer rows 0..answer_len-1 (all labelled). z, ref_full, ref_post: [A, V] float64."""
    ce = torch.nn.functional.cross_entropy(z, labels)
    ids = (v_dir != 0).nonzero(as_tuple=True)[0].sort().values
    trn, full, post = z[:, ids], ref_full[:, ids], ref_post[:, ids]
    s_trn = top_p_count(torch.softmax(trn, -1), top_p).double()
    s_post = top_p_count(torch.softmax(post, -1), top_p).double()
    c = torch.sigmoid(alpha * (s_trn / len(ids) - s_post / len(ids) - bias))
    t = torch.arange(answer_len, dtype=torch.float64)
    c = (c * torch.exp(-(t - n_prefix).clamp_min(0.0) / tau)).unsqueeze(-1)
    mix = (1.0 - c) * full + c * post
    w = v_dir[ids].clamp_min(0.0).view(1, -1)
    q = torch.softmax(mix / T, -1) * w
    q = q / q.sum(-1, keepdim=True).clamp_min(1e-12)
    kl = (q * (q.clamp_min(1e-12).log() - torch.log_softmax(trn / T, -1))).sum(-1) * T ** 2
    return ce + lam * kl.mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_authors_preset_equals_the_authors_training_loss(seed):
    g = torch.Generator().manual_seed(seed)
    A, V, K = 20, 300, 24                      # answer rows past N = 8, so the decay matters
    z = (2 * torch.randn(A, V, generator=g, dtype=torch.float64)).requires_grad_()
    labels = torch.randint(0, V, (A,), generator=g)
    ref_full = 2 * torch.randn(A, V, generator=g, dtype=torch.float64)
    ref_post = ref_full + torch.randn(A, V, generator=g, dtype=torch.float64)
    ids = torch.randperm(V, generator=g)[:K]
    v_dir = torch.zeros(V, dtype=torch.float64)
    v_dir[ids] = torch.randn(K, generator=g, dtype=torch.float64)    # about half negative: weight 0, still in S
    want = authors_loss(z, labels, ref_full, ref_post, v_dir, A)
    (gz_want,) = torch.autograd.grad(want, z)

    order = ids.sort().values
    out = pact_loss(z, labels, ref_full, ref_post, order, v_dir[order].clamp_min(0.0), torch.arange(A),
                    backend="naive", **PACTConfig.authors().as_kwargs())
    (gz,) = torch.autograd.grad(out.loss, z)
    assert abs(out.loss.item() - want.item()) < 1e-6 * max(1.0, abs(want.item()))
    assert (gz - gz_want).abs().max().item() < 1e-6
    # the default CPU backend in float32: float32 precision
    z32 = z.detach().float().requires_grad_()
    out32 = pact_loss(z32, labels, ref_full.float(), ref_post.float(), order, v_dir[order].clamp_min(0.0).float(),
                      torch.arange(A), backend="torch", **PACTConfig.authors().as_kwargs())
    (gz32,) = torch.autograd.grad(out32.loss, z32)
    assert abs(out32.loss.item() - want.item()) < 1e-5 * max(1.0, abs(want.item()))
    assert (gz32.double() - gz_want).abs().max().item() < 1e-6
    # not a vacuous match: the paper preset gives another value
    paper = pact_loss(z, labels, ref_full, ref_post, order, v_dir[order].clamp_min(0.0), torch.arange(A),
                      backend="naive")
    assert abs(paper.loss.item() - want.item()) > 1e-3
