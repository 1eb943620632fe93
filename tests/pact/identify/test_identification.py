"""identify() against a direct float64 full-vocabulary computation of SPEC §1."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from tests.conftest import PROMPTS, make_model
from pact.data import ListSource, PromptRecord
from pact.identify import identify, select_tokens


def _chat_ids(tok, prompt):
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def _plain_ids(tok, prompt):
    return tok(f"User: {prompt}\n\nAssistant: ", add_special_tokens=True)["input_ids"]


@torch.no_grad()
def direct_reference(safe, base, tok, prompts, responses, base_format="chat", average="token"):
    """SPEC §1 line by line: one unpadded sequence at a time, float64 models, float64 softmax over all of V."""
    safe64, base64 = copy.deepcopy(safe).double(), copy.deepcopy(base).double()
    deltas, psafe = [], []
    for p, r in zip(prompts, responses):
        if not r:
            continue
        sp = _chat_ids(tok, p)
        bp = sp if base_format == "chat" else _plain_ids(tok, p)
        ls = safe64(torch.tensor([sp + r])).logits[0, len(sp) - 1: len(sp) - 1 + len(r)]
        lb = base64(torch.tensor([bp + r])).logits[0, len(bp) - 1: len(bp) - 1 + len(r)]
        ps, pb = ls.softmax(-1), lb.softmax(-1)
        deltas.append(ps - pb)
        psafe.append(ps)
    if average == "token":
        return torch.cat(deltas).mean(0), torch.cat(psafe).mean(0)
    return torch.stack([x.mean(0) for x in deltas]).mean(0), torch.stack([x.mean(0) for x in psafe]).mean(0)


def reference_selection(d: np.ndarray, p: np.ndarray, k: int, selection: str):
    order = sorted(range(len(d)), key=lambda v: (-d[v], v))
    if selection == "paper":
        ids = [v for v in order[:k] if d[v] > 0]
        return ids, [d[v] for v in ids]
    top = sorted(range(len(p)), key=lambda v: (-p[v], v))[:k]
    ids = sorted(top, key=lambda v: (-d[v], v))
    z = np.array([d[v] for v in ids])
    z = (z - z.mean()) / z.std(ddof=1)
    z = z / np.linalg.norm(z)
    return ids, list(np.maximum(z, 0.0))


@pytest.mark.parametrize("base_format", ["chat", "plain"])
@pytest.mark.parametrize("selection", ["paper", "authors"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_identify_matches_direct_float64(tok, safe_model, base_model, batch_size, selection, base_format):
    k = 8
    res = identify(safe_model, base_model, tok, PROMPTS, k=k, selection=selection, base_format=base_format,
                   max_new_tokens=7, batch_size=batch_size, progress=False)
    V = safe_model.config.vocab_size
    assert res.d.shape == (V,) and res.d.dtype == torch.float64
    lens = [len(r) for r in res.responses]
    assert len(set(len(_chat_ids(tok, p)) for p in PROMPTS)) == len(PROMPTS)  # prompts of different lengths
    assert res.num_steps == sum(lens) and res.num_prompts == len(PROMPTS)
    d_ref, p_ref = direct_reference(safe_model, base_model, tok, PROMPTS, res.responses, base_format)
    assert (res.d - d_ref).abs().max().item() < 1e-6
    assert (res.mean_safe_prob - p_ref).abs().max().item() < 1e-6
    assert abs(res.mean_safe_prob.sum().item() - 1.0) < 1e-9      # a mean of distributions
    assert abs(res.d.sum().item()) < 1e-9                          # differences of two distributions

    ids, w = reference_selection(d_ref.numpy(), p_ref.numpy(), k, selection)
    st = res.tokens
    assert st.ids == ids
    np.testing.assert_allclose(st.weights, w, atol=1e-5)
    np.testing.assert_allclose(st.scores, d_ref[ids].numpy(), atol=1e-6)
    np.testing.assert_allclose(st.mean_safe_prob, p_ref[ids].numpy(), atol=1e-6)
    assert st.scores == sorted(st.scores, reverse=True)
    assert st.vocab_size == V and st.num_steps == sum(lens) and st.selection == selection
    assert st.strings == [tok.decode([i]) if i < len(tok) else "" for i in ids]
    if selection == "authors":
        assert len(st.ids) == k
        assert any(x == 0.0 for x in st.weights) and any(x > 0 for x in st.weights)
        assert abs(np.linalg.norm(np.array(w)) - 1) < 1  # clipped unit vector


def test_batch_sizes_agree_and_generation_is_batch_independent(tok, safe_model, base_model):
    r1 = identify(safe_model, base_model, tok, PROMPTS, k=5, max_new_tokens=6, batch_size=1, progress=False)
    r3 = identify(safe_model, base_model, tok, PROMPTS, k=5, max_new_tokens=6, batch_size=3, progress=False)
    assert r1.responses == r3.responses
    assert (r1.d - r3.d).abs().max().item() < 1e-6
    eos = tok.eos_token_id
    for r in r1.responses:  # ends at (and keeps) the end-of-turn token, or is max_new_tokens long
        assert (r[-1] == eos and eos not in r[:-1]) or (len(r) == 6 and eos not in r)


@pytest.mark.parametrize("average", ["token", "prompt"])
def test_given_responses_max_resp_len_and_average(tok, safe_model, base_model, average):
    answers = ["sorry i cannot help with that", "sure", "i'm unable to help you with the bank hack please",
               "cannot", "sorry"]
    src = ListSource([PromptRecord(p, response=a) for p, a in zip(PROMPTS, answers)], name="pairs")
    res = identify(safe_model, base_model, tok, src, k=6, responses="given", max_resp_len=5, batch_size=2,
                   average=average, base_format="plain", progress=False)
    eos = tok.eos_token_id
    expect = [(tok(a, add_special_tokens=False)["input_ids"] + [eos])[:5] for a in answers]
    assert res.responses == expect
    assert res.num_steps == sum(len(e) for e in expect) == 5 + 2 + 5 + 2 + 2
    d_ref, p_ref = direct_reference(safe_model, base_model, tok, PROMPTS, expect, "plain", average)
    assert (res.d - d_ref).abs().max().item() < 1e-6
    assert (res.mean_safe_prob - p_ref).abs().max().item() < 1e-6
    assert res.tokens.prompts == "pairs:all" and res.tokens.extra["average"] == average
    # the two averages differ when answers differ in length
    other = direct_reference(safe_model, base_model, tok, PROMPTS, expect, "plain",
                             "prompt" if average == "token" else "token")[0]
    assert (other - d_ref).abs().max().item() > 1e-4


def _with_bias(model, bias: torch.Tensor):
    """A copy of ``model`` whose output logits are the original ones plus ``bias`` ([V])."""
    m = copy.deepcopy(model)
    old = m.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.copy_(bias)
    m.lm_head = head.requires_grad_(False)
    return m


def test_constructed_pair_uniform_base_analytic_gap(tok):
    """Base = uniform next-token distribution; aligned = base + bias b on three tokens.

    Then at every step p_safe(v) = e^{b_v} / Z and p_base(v) = 1/V, so
    d(v) = e^{b_v}/Z − 1/V exactly; only the three biased tokens have d > 0.
    """
    base = make_model(tok, seed=5)
    with torch.no_grad():
        base.lm_head.weight.zero_()
    V = base.config.vocab_size
    bias = torch.zeros(V)
    planted = {17: 3.0, 9: 2.0, 30: 1.0}
    for i, b in planted.items():
        bias[i] = b
    safe = _with_bias(base, bias)
    res = identify(safe, base, tok, PROMPTS, k=10, selection="paper", max_new_tokens=5, batch_size=2,
                   progress=False)
    Z = (V - 3) + sum(math.exp(b) for b in planted.values())
    st = res.tokens
    assert st.ids == [17, 9, 30]                      # exactly the planted tokens, by bias; fewer than k
    for i, s, w, p in zip(st.ids, st.scores, st.weights, st.mean_safe_prob):
        assert abs(s - (math.exp(planted[i]) / Z - 1 / V)) < 1e-7
        assert w == s and abs(p - math.exp(planted[i]) / Z) < 1e-7
    others = torch.ones(V, dtype=torch.bool)
    others[list(planted)] = False
    assert (res.d[others] - (1 / Z - 1 / V)).abs().max().item() < 1e-7
    # the aligned model greedily repeats its most boosted token
    assert all(set(r) == {17} for r in res.responses)


def test_constructed_pair_random_base_recovers_planted_tokens(tok, base_model):
    """Aligned = a random base + bias on four tokens: those four come out on top, with the
    probability gap computed from the base's logits alone: mean_t softmax(z_t + b) − softmax(z_t)."""
    V = base_model.config.vocab_size
    bias = torch.zeros(V)
    planted = [25, 4, 38, 12]
    bias[planted] = torch.tensor([4.0, 3.5, 3.0, 2.5])
    safe = _with_bias(base_model, bias)
    answers = ["sorry i cannot help", "i cannot", "sure here is the car", "no", "help me"]
    res = identify(safe, base_model, tok, list(zip(PROMPTS, answers)), k=4, responses="given", batch_size=3,
                   progress=False)
    assert sorted(res.tokens.ids) == sorted(planted)
    rows = []
    b64 = copy.deepcopy(base_model).double()
    with torch.no_grad():
        for p, r in zip(PROMPTS, res.responses):
            sp = _chat_ids(tok, p)
            z = b64(torch.tensor([sp + r])).logits[0, len(sp) - 1: len(sp) - 1 + len(r)]
            rows.append((z + bias.double()).softmax(-1) - z.softmax(-1))
    gap = torch.cat(rows).mean(0)
    np.testing.assert_allclose(res.tokens.scores, gap[res.tokens.ids].numpy(), atol=1e-6)
    assert (res.d - gap).abs().max().item() < 1e-6


def test_select_tokens_edge_cases():
    d = torch.tensor([0.3, -0.1, 0.3, 0.0, 0.2], dtype=torch.float64)
    p = torch.tensor([0.1, 0.5, 0.2, 0.15, 0.05], dtype=torch.float64)
    ids, w = select_tokens(d, p, k=4, selection="paper")
    assert ids.tolist() == [0, 2, 4] and w.tolist() == [0.3, 0.3, 0.2]   # ties: lower id first; d=0 excluded
    ids, w = select_tokens(d, p, k=3, selection="authors")                 # top-3 by p: 1, 2, 3
    assert ids.tolist() == [2, 3, 1]
    z = np.array([0.3, 0.0, -0.1]) - np.mean([0.3, 0.0, -0.1])
    z = z / np.linalg.norm(z)
    np.testing.assert_allclose(w.numpy(), np.maximum(z, 0), atol=1e-12)
    with pytest.raises(ValueError, match="d\\(v\\) > 0"):
        select_tokens(-d.abs(), p, k=3, selection="paper")
    with pytest.raises(ValueError):
        select_tokens(d, p, k=3, selection="bogus")


def test_identify_rejects_vocab_mismatch(tok, safe_model):
    other = make_model(tok, seed=3, vocab_size=len(tok) + 7)
    with pytest.raises(ValueError, match="vocabulary"):
        identify(safe_model, other, tok, PROMPTS[:2], progress=False)
