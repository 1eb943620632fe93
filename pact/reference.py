"""The frozen reference of PACT: forwards that return logits on the K safety tokens only.

- :class:`SafetyHead`: the K rows of the output embedding (gathered once,
  also under ZeRO-3), so the reference never computes the full vocabulary.
- :func:`decoder_rows`: hidden states of a causal LM at selected positions.
- :class:`RowModel`: the module DeepSpeed wraps; policy logits at the loss
  rows, or the reference's K-token logits. With LoRA the reference is the
  policy network with its adapter disabled (peft ``disable_adapter``): no
  second copy. For full fine-tuning it is a second frozen model in its own
  DeepSpeed engine (ZeRO-3 shards it).
- :func:`label_log_probs`: the full-vocabulary log-probability of each
  row's label, through the fused linear cross-entropy (the reference of
  constrained SFT).
- :func:`output_head`: the output head's parameters (gathered under ZeRO-3)
  for the fused linear losses (``fused_linear: true``).
- :class:`OnlineReference`: both views through such an engine, every step.
- :class:`ReferenceCache`: both views' K-token logits computed once and
  memory-mapped from disk.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pact_kernels import fused_linear_cross_entropy

from .atomic_files import write_json_atomic
from .data.collator import PACTBatch


def _gathered(params):
    """Context gathering ZeRO-3-partitioned parameters (a no-op otherwise)."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)


def causal_lm_of(model):
    """The ``transformers`` causal LM inside a peft model / DeepSpeed engine / plain model."""
    model = getattr(model, "module", model)  # DeepSpeed engine
    if hasattr(model, "get_base_model"):      # peft
        model = model.get_base_model()
    return model


def final_logit_softcap(causal_lm) -> float | None:
    """Gemma-2 style ``final_logit_softcapping`` of the model's config (None when absent)."""
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    return float(cap) if cap else None


def decoder_rows(causal_lm, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Final hidden states at the loss rows.

    Args:
        causal_lm: a ``transformers`` causal LM (``get_decoder()`` gives the trunk).
        input_ids: ``[B, L]`` int64.
        attention_mask: ``[B, L]`` int64.
        rows: ``[rows]`` int64 flat indices into ``[B*L]``.

    Returns:
        ``[rows, H]`` hidden states in the model's dtype.
    """
    hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return hidden.flatten(0, 1)[rows]


def full_logits(causal_lm, hidden: torch.Tensor) -> torch.Tensor:
    """``[rows, V]`` logits of the output head on ``[rows, H]`` hidden states (soft-cap applied)."""
    logits = causal_lm.get_output_embeddings()(hidden)
    cap = final_logit_softcap(causal_lm)
    return cap * torch.tanh(logits / cap) if cap else logits


def label_log_probs(causal_lm, hidden: torch.Tensor, labels: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """``log softmax(head(hidden))[label]`` per row, through the fused linear cross-entropy's row chunks.

    The head's weight is gathered once (ZeRO-3), so every rank makes the same
    collective calls whatever its number of rows; no ``[rows, V]`` logits exist.

    Args:
        causal_lm: the ``transformers`` causal LM (its output head and soft-cap).
        hidden: ``[rows, H]`` final hidden states (model dtype).
        labels: ``[rows]`` int64 target ids.
        chunk_rows: rows per chunk (default: :func:`pact_kernels.fused_linear.default_chunk_rows`).

    Returns:
        ``[rows]`` float32 log-probabilities (no gradient).
    """
    with output_head(causal_lm) as head, torch.no_grad():
        h = hidden.detach()
        weight = head.weight.detach().to(h.dtype)
        bias = None if head.bias is None else head.bias.detach().to(h.dtype)
        out = fused_linear_cross_entropy(h, weight, labels.to(h.device), bias=bias, softcap=head.softcap,
                                         chunk_rows=chunk_rows)
    return -out.ce_rows


@dataclass
class OutputHead:
    """The output head of a causal LM: ``weight`` ``[V, H]``, ``bias`` ``[V]`` or None, the soft-cap or None."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    softcap: float | None


@contextlib.contextmanager
def output_head(model):
    """The :class:`OutputHead` of ``model`` (causal LM, peft model, RowModel or engine), gathered under ZeRO-3.

    The parameters themselves (not copies), so a gradient computed from them
    inside the block reaches them (and DeepSpeed) in backward. Raises
    ValueError for a head that is not a plain ``nn.Linear`` (a LoRA adapter on
    the head): the fused head would leave its update out.
    """
    model = getattr(model, "module", model)  # DeepSpeed engine
    lm = causal_lm_of(model.model if isinstance(model, RowModel) else model)
    head = lm.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        raise ValueError(f"fused_linear needs a plain nn.Linear output head, got {type(head).__name__} (an adapter on "
                         "the head?); drop the head from lora_target_modules or set fused_linear=false")
    params = [head.weight] + ([head.bias] if head.bias is not None else [])
    with _gathered(params):
        yield OutputHead(head.weight, head.bias, final_logit_softcap(lm))


class SafetyHead(torch.nn.Module):
    """The output head restricted to the K safety ids.

    ``weight`` and ``bias`` are buffers (not saved in a state dict): as a
    submodule of :class:`RowModel` they move with the model (``.to(device)``,
    DeepSpeed's placement), so the reference never copies them per call.

    Args:
        weight: ``[K, H]`` rows of the output embedding.
        bias: ``[K]`` or None.
        softcap: the model's final-logit soft-cap, or None.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, softcap: float | None = None):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.softcap = softcap

    @classmethod
    def from_model(cls, model, safety_ids: torch.Tensor) -> "SafetyHead":
        """Copy the K rows of ``model``'s output embedding (gathered under ZeRO-3)."""
        lm = causal_lm_of(model)
        head = lm.get_output_embeddings()
        params = [head.weight] + ([head.bias] if getattr(head, "bias", None) is not None else [])
        with _gathered(params), torch.no_grad():
            ids = safety_ids.to(head.weight.device)
            weight = head.weight[ids].detach().clone()
            bias = head.bias[ids].detach().clone() if getattr(head, "bias", None) is not None else None
        return cls(weight, bias, final_logit_softcap(lm))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[rows, H]`` hidden -> ``[rows, K]`` float32 logits on S."""
        if self.weight.device != hidden.device:  # a model moved outside the module tree: follow it, once
            self.to(hidden.device)
        weight, bias = self.weight, self.bias
        if weight.dtype != hidden.dtype:  # a cast on the device, never stored (the rows keep their precision)
            weight, bias = weight.to(hidden.dtype), None if bias is None else bias.to(hidden.dtype)
        logits = torch.nn.functional.linear(hidden, weight, bias).float()
        return self.softcap * torch.tanh(logits / self.softcap) if self.softcap else logits


class RowModel(torch.nn.Module):
    """A causal LM (plain or peft) that returns logits at the loss rows only.

    DeepSpeed wraps this module, so every forward (policy and reference) goes
    through the engine and its ZeRO-3 hooks. Modes:

    - ``policy``: ``[rows, V]`` logits of the trainable model (with gradient);
    - ``policy_hidden``: ``[rows, H]`` final hidden states of the trainable
      model (with gradient), for the fused linear losses;
    - ``reference``: ``[rows, K]`` float32 logits on S of the frozen model (no
      gradient, eval mode, LoRA adapter disabled when there is one);
    - ``reference_full``: ``[rows, V]`` float32 logits of the frozen model
      (the ``full_vocab`` variant);
    - ``reference_hidden``: ``[rows, H]`` final hidden states of the frozen
      model (the fused ``full_vocab`` variant makes its logits chunk by chunk);
    - ``reference_label_logprob``: ``[rows]`` float32 log-probability of
      ``labels`` under the frozen model (constrained SFT), full-vocabulary
      log-softmax computed row-chunked.

    Args:
        model: a ``transformers`` causal LM, or a peft model around one.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.safety_head: SafetyHead | None = None

    @property
    def is_peft(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    def set_safety_ids(self, safety_ids: torch.Tensor) -> None:
        """Copy the K rows of the output embedding for the reference modes (a submodule: moves with the model)."""
        self.safety_head = SafetyHead.from_model(self.model, safety_ids)

    MODES = ("policy", "policy_hidden", "reference", "reference_full", "reference_hidden", "reference_label_logprob")

    def forward(self, input_ids, attention_mask, rows, mode: str = "policy", labels=None):
        """``input_ids``/``attention_mask`` ``[B, L]`` int64, ``rows`` ``[rows]`` int64 flat indices;
        ``labels`` ``[rows]`` int64 (mode ``reference_label_logprob`` only)."""
        lm = causal_lm_of(self.model)
        if mode == "policy":
            return full_logits(lm, decoder_rows(lm, input_ids, attention_mask, rows))
        if mode == "policy_hidden":
            return decoder_rows(lm, input_ids, attention_mask, rows)
        if mode not in self.MODES:
            raise ValueError(f"mode={mode!r}: use one of {', '.join(self.MODES)}")
        if mode == "reference_label_logprob" and labels is None:
            raise ValueError("mode='reference_label_logprob' needs labels: the [rows] target ids")
        adapter_off = self.model.disable_adapter() if self.is_peft else contextlib.nullcontext()
        was_training = self.model.training
        self.eval()
        try:
            with torch.no_grad(), adapter_off:
                hidden = decoder_rows(lm, input_ids, attention_mask, rows)
                if mode == "reference_full":
                    return full_logits(lm, hidden).float()
                if mode == "reference_hidden":
                    return hidden
                if mode == "reference_label_logprob":
                    return label_log_probs(lm, hidden, labels)
                return self.safety_head(hidden)
        finally:
            self.train(was_training)


def patch_row_forward(causal_lm, owner=None) -> RowModel:
    """Give ``causal_lm`` the :class:`RowModel` forward behind keyword arguments, the way TRL adds its fused head.

    ``model(input_ids=..., attention_mask=..., pact_rows=rows, pact_mode=mode)``
    then returns :meth:`RowModel.forward`'s output; without ``pact_mode`` the
    forward is the original one (generation is unchanged). The call enters
    the outermost wrapper (DeepSpeed engine, DDP, peft), so ZeRO-3 gathers
    parameters as for any forward. ``owner``: the peft model around
    ``causal_lm`` (its adapter is disabled for the reference modes), or None.

    Returns the :class:`RowModel` the forward delegates to (call
    :meth:`RowModel.set_safety_ids` on it).
    """
    import functools
    import types

    original = causal_lm.forward
    holder = {"rows": RowModel(owner if owner is not None else causal_lm)}  # kept out of the module tree

    @functools.wraps(type(causal_lm).forward)
    def forward(self, *args, pact_rows=None, pact_mode=None, pact_labels=None, **kwargs):
        if pact_mode is None:
            return original(*args, **kwargs)
        return holder["rows"](kwargs["input_ids"], kwargs["attention_mask"], pact_rows, pact_mode, pact_labels)

    causal_lm.forward = types.MethodType(forward, causal_lm)
    causal_lm._pact_rows = holder
    return holder["rows"]


class OnlineReference:
    """The reference computed every step through a DeepSpeed engine around a :class:`RowModel`.

    With LoRA pass the policy's own engine (the reference is the same network
    with the adapter off); for full fine-tuning, the frozen reference's engine
    and ``separate_head=True`` (its output head is not the policy's).
    """

    def __init__(self, engine, separate_head: bool = False):
        self.engine = engine
        self.separate_head = separate_head

    def hidden(self, batch: PACTBatch) -> torch.Tensor:
        """``[rows, H]`` the frozen model's final hidden states at the full view's rows (fused ``full_vocab``)."""
        return self.engine(batch.full_ids, batch.full_mask, batch.full_rows, mode="reference_hidden")

    def head(self):
        """Context giving the reference's :class:`OutputHead`, or None when it is the policy's own head (LoRA)."""
        return output_head(self.engine) if self.separate_head else contextlib.nullcontext()

    def __call__(self, batch: PACTBatch, full_vocab: bool = False):
        """``(r_full, r_post)`` ``[rows, K]`` float32; with ``full_vocab``, ``(r_full [rows, V], None)``."""
        if full_vocab:
            return self.engine(batch.full_ids, batch.full_mask, batch.full_rows, mode="reference_full"), None
        r_full = self.engine(batch.full_ids, batch.full_mask, batch.full_rows, mode="reference")
        r_post = self.engine(batch.post_ids, batch.post_mask, batch.post_rows, mode="reference")
        return r_full, r_post

    def label_logprobs(self, batch: PACTBatch) -> torch.Tensor:
        """``[rows]`` float32: the frozen model's log-probability of each label, on the full view."""
        return self.engine(batch.full_ids, batch.full_mask, batch.full_rows, mode="reference_label_logprob",
                           labels=batch.labels)


@torch.no_grad()
def fill_reference_cache(cache, online, views, collator, micro_batch, rank, world, device):
    """Compute every sample's reference into ``cache`` and make it valid.

    ``online``: ``batch -> (r_full, r_post)``; ``views``: the dataset's
    :class:`~pact.data.views.TwoViews` in order; ``collator``: a
    :class:`~pact.data.collator.PACTCollator`. Every rank computes its share
    of samples; all ranks run the same number of forwards (ZeRO-3). Works
    without a process group too (one process).

    One filler at a time: rank 0 holds the cache directory's lock
    (:class:`pact.locks.DirectoryLock`) from before the data file is created
    until the manifest is written, and every rank learns whether it got it
    (a second filler raises :class:`ReferenceCacheBusyError` naming the
    first). The rows go to a temporary file that becomes ``logits.f32`` by
    an atomic rename just before the manifest: the cache is never valid with
    another fill's rows. A cache another process finished meanwhile is
    reused when it fits (or refused when it does not), not refilled.
    """
    from tqdm import tqdm

    lock, verdict = None, "fill"
    if rank == 0:
        try:
            lock = cache.lock()
            status = cache.status()  # another process may have finished it while this one prepared
            verdict = "fill" if status == "missing" else "ready" if status == "valid" else status
            if verdict == "fill":
                cache.create()
        except ReferenceCacheBusyError as e:
            verdict = f"busy:{e}"
    verdict = _from_rank0(verdict)
    if verdict.startswith("busy:"):
        raise ReferenceCacheBusyError(verdict[5:])
    if verdict == "ready":
        if lock is not None:
            lock.release()
        return
    if verdict != "fill":
        if lock is not None:
            lock.release()
        raise ValueError(verdict)
    try:
        mine = list(range(rank, len(views), world))
        batches = [mine[i:i + micro_batch] for i in range(0, len(mine), micro_batch)]
        rounds = math.ceil(math.ceil(len(views) / world) / micro_batch)
        for j in tqdm(range(rounds), desc="reference cache", disable=rank != 0):
            ids = batches[j] if j < len(batches) else batches[-1] if batches else [0]
            batch = collator([(i, views[i]) for i in ids]).to(device)
            r_full, r_post = online(batch)
            if j < len(batches):
                cache.write(ids, r_full, r_post, [views[i].num_answer for i in ids])
        _barrier()
        if rank == 0:
            cache.finish({"samples": len(views)})
        _barrier()
    finally:
        if lock is not None:
            lock.release()


def _from_rank0(text: str) -> str:
    """Rank 0's ``text`` on every rank (itself without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        box = [text]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return text


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def cache_fingerprint(model_name: str, safety_ids: list[int], dataset_digest: str, compute_dtype: str) -> str:
    """Digest of what a reference cache depends on: the model (its weights' digest,
    :func:`pact.fingerprint.weights_digest`), S, the tokenised data and the dtype the reference computes in
    (``"float32"``, ``"bfloat16"``, or an autocast dtype such as ``"autocast-bfloat16"``)."""
    h = hashlib.sha256()
    h.update(json.dumps({"model": model_name, "ids": list(map(int, safety_ids)), "data": dataset_digest,
                         "compute_dtype": compute_dtype}).encode())
    return h.hexdigest()


class ReferenceCacheBusyError(RuntimeError):
    """Another process is filling the reference cache; the message names it."""


class ReferenceCache:
    """The reference's K-token logits of both views, for every sample, memory-mapped.

    Layout: ``logits.f32`` holds ``[total_rows, 2, K]`` float32 (view 0 full,
    view 1 no-prompt); sample i owns rows ``offsets[i]:offsets[i+1]``.
    ``manifest.json`` (written last, atomically) holds the fingerprint; a
    directory without it, or with another fingerprint, is not a valid cache.
    A fill writes ``logits.f32.partial`` under the directory's lock
    (:meth:`lock`) and renames it to ``logits.f32`` when every row is in.

    Args:
        directory: the cache directory.
        num_answer: number of answer rows of every sample, in dataset order.
        k: the number of safety tokens.
        fingerprint: :func:`cache_fingerprint` of the run.
    """

    def __init__(self, directory: str | os.PathLike, num_answer: list[int], k: int, fingerprint: str):
        self.dir = Path(directory)
        self.k = k
        self.fingerprint = fingerprint
        self.offsets = np.concatenate([[0], np.cumsum(num_answer)]).astype(np.int64)
        self.total_rows = int(self.offsets[-1])
        self._array = None

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def data_path(self) -> Path:
        return self.dir / "logits.f32"

    @property
    def partial_path(self) -> Path:
        """The data file while it is being filled (renamed to :attr:`data_path` by :meth:`finish`)."""
        return self.dir / "logits.f32.partial"

    def lock(self):
        """The cache directory's writer lock, taken; :class:`ReferenceCacheBusyError` naming the holder otherwise."""
        from .locks import DirectoryLock, DirectoryLockedError

        try:
            return DirectoryLock(self.dir, f"the reference cache {self.dir}",
                                 "wait for that fill to finish (this run then reuses the cache when it fits), or "
                                 "point ref_cache to another directory").acquire()
        except DirectoryLockedError as e:
            raise ReferenceCacheBusyError(str(e)) from None

    def status(self) -> str:
        """``valid``, ``missing``, or a sentence saying why the directory holds another cache."""
        if not self.manifest_path.is_file():
            return "missing"
        manifest = json.loads(self.manifest_path.read_text())
        expected = max(1, self.total_rows) * 2 * self.k * 4
        size = self.data_path.stat().st_size if self.data_path.is_file() else 0
        if manifest.get("fingerprint") == self.fingerprint and size != expected:
            return (f"the reference cache file {self.data_path} holds {size} bytes, not the {expected} its manifest "
                    "promises (truncated or damaged); delete the directory to rebuild it")
        if manifest.get("fingerprint") != self.fingerprint:
            return (f"the reference cache in {self.dir} was built for other data, safety tokens or model "
                    f"(weights, or the dtype the reference computes in; fingerprint {manifest.get('fingerprint', '?')[:12]} != {self.fingerprint[:12]}); "
                    "delete it or point ref_cache to a new directory")
        return "valid"

    def create(self) -> None:
        """Allocate the partial data file (rank 0, holding :meth:`lock`, before any rank writes)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        np.memmap(self.partial_path, dtype=np.float32, mode="w+", shape=(max(1, self.total_rows), 2, self.k)).flush()

    def write(self, sample_ids, r_full: torch.Tensor, r_post: torch.Tensor, num_answer) -> None:
        """Store the rows of several samples (in batch order) into their slots of the partial file."""
        arr = np.memmap(self.partial_path, dtype=np.float32, mode="r+", shape=(max(1, self.total_rows), 2, self.k))
        start = 0
        full, post = r_full.float().cpu().numpy(), r_post.float().cpu().numpy()
        for sid, n in zip(sample_ids, num_answer):
            lo = self.offsets[int(sid)]
            arr[lo:lo + n, 0] = full[start:start + n]
            arr[lo:lo + n, 1] = post[start:start + n]
            start += n
        arr.flush()

    def finish(self, meta: dict) -> None:
        """Rename the filled partial file into place, then write the manifest atomically: the cache becomes valid."""
        with open(self.partial_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.partial_path, self.data_path)
        write_json_atomic(self.manifest_path,
                          dict(meta, fingerprint=self.fingerprint, total_rows=self.total_rows, k=self.k))

    def __call__(self, batch: PACTBatch, full_vocab: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r_full, r_post)`` ``[rows, K]`` float32 for a batch, read from the memory map."""
        if full_vocab:
            raise ValueError("the reference cache holds K-token logits only; the full_vocab variant needs none")
        if self._array is None:
            self._array = np.memmap(self.data_path, dtype=np.float32, mode="r", shape=(max(1, self.total_rows), 2, self.k))
        parts = [self._array[self.offsets[int(s)]:self.offsets[int(s) + 1]] for s in batch.sample_ids.tolist()]
        block = torch.from_numpy(np.concatenate(parts)) if parts else torch.empty(0, 2, self.k)
        block = block.to(batch.labels.device)
        return block[:, 0], block[:, 1]
