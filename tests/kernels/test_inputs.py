"""PACTInputs: the targets and references as one value, its checks, its row slices, and the config overrides."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pact_kernels import PACTConfig, PACTInputs, fused_linear_pact_loss, pact_loss
from pact_kernels.backends import torch_blocks
from pact_kernels.backends.naive import naive_pact_loss

from .inputs import random_batch, rel_err


def inputs_of(b: dict) -> PACTInputs:
    return PACTInputs(**{k: v for k, v in b.items() if k != "logits"})


def test_rows_slices_every_per_row_tensor_and_shares_the_safety_set():
    b = random_batch(rows=11, vocab=50, k=5, ref_width="v", seed=21)
    inputs = inputs_of(b)
    part = inputs.rows(slice(3, 8))
    for name in ("labels", "ref_full", "ref_post", "answer_pos"):
        assert torch.equal(getattr(part, name), b[name][3:8])
        assert getattr(part, name).data_ptr() == b[name][3:].data_ptr()  # a view, no copy
    assert part.safety_ids is inputs.safety_ids and part.safety_weights is inputs.safety_weights
    swapped = inputs.rows(slice(0, 2), ref_full=None, answer_pos=None)
    assert swapped.ref_full is None and swapped.answer_pos is None and swapped.labels.shape == (2,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        inputs.labels = b["labels"]


def test_row_blocks_of_the_inputs_give_the_rows_of_the_whole():
    """The torch backend on the slices of ``rows`` gives the whole call's per-row terms and gate; each block's
    gradient is the whole one times n / n_block (each block averages over its own labelled rows)."""
    b = random_batch(rows=13, vocab=60, k=6, seed=22)
    inputs, cfg = inputs_of(b), PACTConfig()
    whole = torch_blocks.forward_with_grad(b["logits"], inputs, cfg)
    for block in (slice(0, 5), slice(5, 13)):
        part = torch_blocks.forward_with_grad(b["logits"][block], inputs.rows(block), cfg)
        assert torch.allclose(part.ce_rows, whole.ce_rows[block], rtol=1e-6, atol=0)
        assert torch.allclose(part.kl_rows, whole.kl_rows[block], rtol=1e-5, atol=1e-7)
        assert torch.equal(part.gate, whole.gate[block])
        ratio = int(whole.num_rows) / int(part.num_rows)
        assert rel_err(part.grad, whole.grad[block] * ratio) < 1e-6


@pytest.mark.parametrize("field,value,match", [
    ("labels", torch.zeros(5, dtype=torch.long), r"labels has shape \[5\]; expected \[6\]"),
    ("safety_weights", torch.tensor([0.5, -0.1, 0.2, 0.1]), "safety_weights has negative"),
    ("ref_post", None, "variant='pact' needs ref_post"),
    ("answer_pos", torch.tensor([0, 1, -2, 3, 4, 5]), "answer_pos is negative on a labelled row"),
])
def test_check_names_the_argument(field, value, match):
    b = random_batch(rows=6, vocab=20, k=4, seed=1, ignore_every=0)
    inputs = dataclasses.replace(inputs_of(b), **{field: value})
    with pytest.raises(ValueError, match=match):
        inputs.check(b["logits"], PACTConfig())


def test_config_and_overrides():
    """``config=`` is used as given; keywords override its fields; ``pact_loss`` with the keywords alone (the
    paper's config underneath) is the same call."""
    b = random_batch(rows=9, vocab=40, k=5, seed=23)
    authors = PACTConfig.authors()
    want = naive_pact_loss(b["logits"].double(), inputs_of(b), authors.replace(variant="response_only_ref"))
    got = pact_loss(*b.values(), config=authors, variant="response_only_ref", backend="torch")
    assert rel_err(got.loss, want.loss) < 1e-5 and rel_err(got.kl, want.kl) < 1e-5
    spelled = pact_loss(*b.values(), backend="torch", **authors.replace(variant="response_only_ref").as_kwargs())
    assert torch.equal(spelled.loss, got.loss)
    # the authors' λ = 1 differs from the paper's λ = 3: the config really reached the loss
    paper = pact_loss(*b.values(), variant="response_only_ref", backend="torch")
    assert rel_err(paper.loss, got.loss) > 1e-3


@pytest.mark.parametrize("call", ["pact_loss", "fused_linear_pact_loss"])
def test_unknown_keyword_is_named_with_the_valid_ones(call):
    b = random_batch(rows=6, vocab=20, k=4, seed=1)
    if call == "pact_loss":
        run = lambda **kw: pact_loss(*b.values(), **kw)  # noqa: E731
    else:
        hidden, weight = torch.randn(6, 8), torch.randn(20, 8)
        tensors = [v for k, v in b.items() if k != "logits"]
        run = lambda **kw: fused_linear_pact_loss(hidden, weight, *tensors, **kw)  # noqa: E731
    with pytest.raises(TypeError, match=rf"{call}\(\) got an unexpected keyword argument 'lamda_kl'; valid "
                                        r"keywords: config, .*backend.*lambda_kl, mass_threshold"):
        run(lamda_kl=1.0)
    with pytest.raises(TypeError, match="config must be a PACTConfig"):
        run(config={"lambda_kl": 1.0})
    with pytest.raises(ValueError, match="lambda_kl=-1.0 must be >= 0"):
        run(config=PACTConfig(), lambda_kl=-1.0)
