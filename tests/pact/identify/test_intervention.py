"""The boost / ablate logits processor and the random control set (SPEC §2)."""
from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList

from tests.conftest import PROMPTS
from pact.identify.generation import encode_chat_prompt, pad_left
from pact.identify.intervention import ABLATE_VALUE, TokenSetLogitsProcessor, random_control_set

S = [5, 9, 14, 20, 33]


def _generate(model, tok, proc, steps=8):
    ids, mask = pad_left([encode_chat_prompt(tok, p) for p in PROMPTS[1:4]], tok.pad_token_id)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
                         do_sample=False, logits_processor=LogitsProcessorList([proc]), output_scores=True,
                         output_logits=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
    # scores: after the processors; logits: the model's raw logits at the same step
    return out, torch.stack(out.scores), torch.stack(out.logits)


def _set_mass(x: torch.Tensor) -> torch.Tensor:
    return x.float().softmax(-1)[..., S].sum(-1)


@pytest.mark.parametrize("alpha", [5.0, 1.5])
def test_boost_raises_set_probability_at_every_step(tok, safe_model, alpha):
    out, scores, raw = _generate(safe_model, tok, TokenSetLogitsProcessor(S, "boost", alpha=alpha))
    assert scores.shape[0] == 8
    on = torch.zeros(raw.shape[-1], dtype=torch.bool)
    on[S] = True
    off = ~on
    off[tok.eos_token_id] = False                      # min_new_tokens' own processor masks EOS
    diff = scores - raw
    assert torch.allclose(diff[..., on], torch.full_like(diff[..., on], alpha))
    assert torch.equal(diff[..., off], torch.zeros_like(diff[..., off]))
    before, after = _set_mass(raw), _set_mass(scores)
    assert (after > before).all()                      # every step, every sequence
    # exact value: the set's mass m becomes m e^a / (m e^a + 1 - m) (m without EOS, masked by min_new_tokens)
    no_eos = raw.clone()
    no_eos[..., tok.eos_token_id] = float("-inf")
    before = _set_mass(no_eos)
    expect = before * alpha_exp(alpha) / (before * alpha_exp(alpha) + 1 - before)
    assert torch.allclose(after, expect, atol=1e-5)


def alpha_exp(a: float) -> float:
    return float(torch.tensor(a).exp())


def test_ablate_zeroes_set_probability_at_every_step(tok, safe_model):
    out, scores, raw = _generate(safe_model, tok, TokenSetLogitsProcessor(S, "ablate"))
    assert scores.shape[0] == 8
    assert (_set_mass(raw) > 1e-3).all()
    assert torch.equal(_set_mass(scores), torch.zeros_like(_set_mass(scores)))
    assert (scores[..., S] == ABLATE_VALUE).all()
    gen = out.sequences[:, -8:]
    assert not torch.isin(gen, torch.tensor(S)).any()  # never generated


def test_ablate_changes_the_greedy_path_and_none_does_not(tok, safe_model):
    plain, _, raw = _generate(safe_model, tok, TokenSetLogitsProcessor(S, "none"))
    top = raw.argmax(-1)[0]                            # the greedy token at the first step
    proc = TokenSetLogitsProcessor([int(top[0])], "ablate")
    abl, _, _ = _generate(safe_model, tok, proc)
    assert not torch.equal(plain.sequences[0], abl.sequences[0])


def test_first_k_limits_the_intervention(tok, safe_model):
    _, scores, raw = _generate(safe_model, tok, TokenSetLogitsProcessor(S, "boost", alpha=5.0, first_k=3))
    diff = (scores - raw)[..., S]
    assert diff.shape[0] == 8
    assert torch.allclose(diff[:3], torch.full_like(diff[:3], 5.0))
    assert torch.equal(diff[3:], torch.zeros_like(diff[3:]))


def test_processor_does_not_modify_its_input():
    scores = torch.zeros(2, 40)
    out = TokenSetLogitsProcessor(S, "boost", 2.0)(torch.zeros(2, 3, dtype=torch.long), scores)
    assert scores.abs().sum() == 0 and out[:, S].eq(2.0).all()
    half = TokenSetLogitsProcessor(S, "ablate")(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 40).half())
    assert (half[:, S] == torch.finfo(torch.float16).min).all()   # -1e9 does not fit float16: its lowest value
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TokenSetLogitsProcessor([50], "boost")(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 40))
    with pytest.raises(ValueError):
        TokenSetLogitsProcessor(S, "amplify")


def test_random_control_set_disjoint_sized_and_seeded():
    V = 1000
    safety = list(range(0, 100, 2))
    a = random_control_set(safety, V, seed=7)
    b = random_control_set(safety, V, seed=7)
    c = random_control_set(safety, V, seed=8)
    assert a == b and a != c
    assert len(a) == len(set(a)) == len(safety)
    assert not set(a) & set(safety)
    assert all(0 <= i < V for i in a)
    ex = random_control_set(safety, V, seed=7, exclude=[a[0], a[1]])
    assert a[0] not in ex and a[1] not in ex and len(ex) == len(safety)
    # the draw is uniform over the allowed ids: about half of 50 draws land above 550
    many = [i for s in range(40) for i in random_control_set(safety, V, seed=s)]
    assert 0.35 < sum(i >= 550 for i in many) / len(many) < 0.65
    with pytest.raises(ValueError):
        random_control_set(range(10), 12, seed=0)
