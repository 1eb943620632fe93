"""Every bad input gets a clear error that names the argument."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pact_kernels import PACTConfig, pact_loss

from .inputs import random_batch


def call(**changes):
    b = random_batch(rows=6, vocab=20, k=4, seed=1)
    kwargs = {k: changes.pop(k) for k in list(changes) if k not in b}
    b.update(changes)
    kwargs.setdefault("backend", "torch")
    return pact_loss(*b.values(), **kwargs)


@pytest.mark.parametrize("weights,match", [
    (torch.tensor([0.5, float("nan"), 0.2, 0.1]), "safety_weights has NaN or infinite"),
    (torch.tensor([0.5, float("inf"), 0.2, 0.1]), "safety_weights has NaN or infinite"),
    (torch.tensor([0.5, -0.1, 0.2, 0.1]), "safety_weights has negative"),
    (torch.zeros(4), "safety_weights has no positive"),
    (torch.ones(3), r"safety_weights has shape \[3\]; expected \[4\]"),
    (torch.ones(4, dtype=torch.long), "safety_weights has dtype"),
])
def test_bad_weights(weights, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(safety_weights=weights)


@pytest.mark.parametrize("ids,match", [
    (torch.tensor([1, 2, 2, 3]), "safety_ids has duplicate"),
    (torch.tensor([1, 2, 20, 3]), r"safety_ids has ids outside \[0, 20\)"),
    (torch.tensor([1, -1, 5, 3]), r"safety_ids has ids outside"),
    (torch.tensor([], dtype=torch.long), "safety_ids is empty"),
    (torch.tensor([1.0, 2.0, 3.0, 4.0]), "safety_ids has dtype"),
])
def test_bad_ids(ids, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(safety_ids=ids, safety_weights=torch.ones(max(1, ids.numel())) if ids.numel() != 4 else torch.ones(4))


def test_labels_outside_vocabulary():
    with pytest.raises(ValueError, match=r"labels has values outside \[0, 20\) other than ignore_index=-100"):
        call(labels=torch.tensor([0, 1, 20, -100, 3, 4]))
    with pytest.raises(ValueError, match="labels has values outside"):
        call(labels=torch.tensor([0, 1, -5, -100, 3, 4]))
    # -5 is fine when it is the ignore index
    assert torch.isfinite(call(labels=torch.tensor([0, 1, -5, -5, 3, 4]), ignore_index=-5).loss)


@pytest.mark.parametrize("changes,match", [
    (dict(logits=torch.randn(6, 4, 20)), r"logits has shape \[6, 4, 20\]; expected \[rows, V\]"),
    (dict(labels=torch.zeros(5, dtype=torch.long)), r"labels has shape \[5\]; expected \[6\]"),
    (dict(ref_full=torch.randn(6, 5)), r"ref_full has shape \[6, 5\]; expected \[6, 4\] or \[6, 20\]"),
    (dict(ref_post=torch.randn(5, 4)), r"ref_post has shape \[5, 4\]"),
    (dict(answer_pos=torch.zeros(4, dtype=torch.long)), r"answer_pos has shape \[4\]; expected \[6\]"),
    (dict(answer_pos=None), "variant='pact' needs answer_pos"),
    (dict(ref_post=None), "needs ref_post"),
    (dict(ref_full=None), "ref_full is None"),
    (dict(variant="full_vocab"), r"ref_full has shape \[6, 4\]; expected \[6, 20\]"),
    (dict(variant="pact_v2"), "variant='pact_v2' is not a PACT variant"),
    (dict(backend="cuda_graphs"), "backend='cuda_graphs' is unknown"),
    (dict(logits=torch.randint(0, 3, (6, 20))), "logits has dtype torch.int64"),
    (dict(labels=torch.zeros(6)), "labels has dtype torch.float32"),
    # position -1 on row 2, which is labelled in this batch (row 0 is ignored)
    (dict(answer_pos=torch.tensor([0, 1, -1, 2, 3, 4])), "answer_pos is negative on a labelled row"),
    (dict(lambda_kl=-1.0), "lambda_kl=-1.0 must be >= 0"),
    (dict(mass_threshold=1.5), r"mass_threshold=1.5 must be in \(0, 1\]"),
    (dict(kl_temperature=0.0), "kl_temperature=0.0 must be > 0"),
    (dict(decay_tau=float("nan")), "decay_tau=nan must be a finite number"),
    (dict(decay_start=-1), "decay_start=-1 must be a whole number >= 0"),
])
def test_bad_inputs(changes, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(**changes)


def test_device_mismatch_is_reported():
    meta = torch.empty(4, device="meta")
    with pytest.raises(ValueError, match=r"safety_weights is on meta but logits are on cpu; move it"):
        call(safety_weights=meta)


def test_inplace_needs_a_fused_backend():
    b = random_batch(rows=6, vocab=20, k=4, seed=1)
    with pytest.raises(ValueError, match="inplace_grad=True needs a fused backend"):
        pact_loss(*b.values(), backend="naive", inplace_grad=True)


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset='trl' is unknown"):
        PACTConfig.preset("trl")


def test_full_vocab_kl_alias():
    assert PACTConfig(variant="full_vocab_kl").variant == "full_vocab"


def test_pact_kernels_imports_no_model_libraries():
    code = (
        "import sys, pact_kernels; "
        "bad = [m for m in ('transformers', 'deepspeed', 'peft') if m in sys.modules]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, f"pact_kernels imported {result.stdout.strip()}"
