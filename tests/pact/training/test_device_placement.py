"""The safety ids, weights and the reference's K-row head live on the model's device from setup on, and a step
neither copies them nor waits for the device before its backward (pact/{reference,methods/base}.py,
pact/training/{metrics,step}.py)."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pact.data.collator import PACTCollator
from pact.data.views import ViewBuilder
from pact.methods.base import PACT
from pact.model_rows import RowModel
from pact.reference import OnlineReference
from pact.tiny import tiny_model, tiny_tokenizer
from pact.training.metrics import StepMetrics
from pact.training.step import micro_batch_loss
from pact_kernels import PACTConfig

IDS = [40, 41, 42, 80, 90, 100]
OURS = str(Path(__file__).resolve().parents[3] / "pact") + "/"


@pytest.fixture(scope="module")
def tk():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def batches(tk):
    builder = ViewBuilder(tk, max_length=100)
    pairs = [("how to pick a lock", "I cannot help with that.", False), ("hi", "Sure, here it is.", True),
             ("write a poem", "Roses are red.", False), ("steal a car", "First, find a car.", True)]
    views = [builder.build(p, a, harmful=h) for p, a, h in pairs]
    collate = PACTCollator(tk.pad_token_id)
    return [collate([(i, views[i]), (i + 1, views[i + 1])]) for i in (0, 2)]


def lora_row_model(tk):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(tk, seed=3), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                             lora_dropout=0.0))
    row_model = RowModel(model)
    row_model.set_safety_ids(torch.tensor(IDS))
    return row_model


def pact_method():
    return PACT(PACTConfig(), torch.tensor(IDS), torch.linspace(1.0, 0.5, len(IDS)))


def test_k_row_head_moves_with_the_model_and_is_not_saved(tk):
    """DeepSpeed places a model with ``module.to(device)``: the K-row head goes along (``meta`` stands for a GPU)."""
    row_model = lora_row_model(tk)
    head = row_model.model.get_output_embeddings().weight
    assert torch.equal(row_model.safety_head.weight, head[IDS])
    assert not any("safety_head" in k for k in row_model.state_dict())  # checkpoints hold the model only
    row_model.to("meta")
    assert row_model.safety_head.weight.device.type == "meta"
    assert all(b.device.type == "meta" for b in row_model.buffers())


def test_method_places_its_safety_set_once():
    method = pact_method()
    method.place(torch.device("meta"))
    assert method.safety_ids.device.type == "meta" and method.safety_weights.device.type == "meta"
    assert method.safety_ids.dtype == torch.int64 and method.safety_weights.dtype == torch.float32


class Counter:
    """Counts ``Tensor.to`` calls that name a device on given tensors, and host syncs (``item``, ``bool``,
    ``tolist``, all_reduce) made by the code of ``pact/`` itself (transformers' forward and the kernels' input
    checks are not this package's)."""

    def __init__(self, watched):
        self.watched = {id(t) for t in watched}
        self.to_calls = self.syncs = 0

    @contextlib.contextmanager
    def active(self, monkeypatch):
        to, item, as_bool, tolist = torch.Tensor.to, torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.tolist

        def counted_to(t, *a, **k):
            names_device = any(isinstance(x, (torch.device, str, torch.Tensor)) for x in a) or "device" in k
            self.to_calls += id(t) in self.watched and names_device
            return to(t, *a, **k)

        def sync(fn):
            def wrapped(t, *a, **k):
                self.syncs += sys._getframe(1).f_code.co_filename.startswith(OURS)
                return fn(t, *a, **k)
            return wrapped

        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "to", counted_to)
            m.setattr(torch.Tensor, "item", sync(item))
            m.setattr(torch.Tensor, "__bool__", sync(as_bool))
            m.setattr(torch.Tensor, "tolist", sync(tolist))
            m.setattr(torch.distributed, "all_reduce", lambda *a, **k: setattr(self, "syncs", self.syncs + 1))
            m.setattr(torch.distributed, "is_initialized", lambda: True)  # as under DeepSpeed
            yield


@pytest.mark.parametrize("fused", [True, False])
def test_a_step_copies_no_safety_tensor_and_waits_for_nothing_before_backward(tk, batches, fused, monkeypatch):
    row_model, method = lora_row_model(tk), pact_method()
    device = torch.device("cpu")
    method.place(device)  # what the driver does once DeepSpeed has placed the model
    ids = torch.tensor(IDS).to(device)
    watched = [method.safety_ids, method.safety_weights, ids, *row_model.safety_head.buffers()]
    counter = Counter(watched)
    cfg = SimpleNamespace(fused_linear=fused)
    metrics = StepMetrics(ids, device)
    losses = []
    for batch in batches:
        with counter.active(monkeypatch):
            with micro_batch_loss(cfg, row_model, method, OnlineReference(row_model), batch, metrics) as result:
                pass  # the backward would run here: nothing before it copied or synchronised
        result.loss.backward()
        metrics.add_loss(result.loss, result, batch)
        losses.append(result.loss.item())
    assert counter.to_calls == 0 and counter.syncs == 0
    assert all(torch.isfinite(torch.tensor(losses)))
    rec = metrics.reduce()
    assert rec["harmful"]["rows"] > 0 and rec["benign"]["safety_prob"] is not None
