"""The reference's K-token logits of both views, computed once for every sample and memory-mapped from disk.

- :func:`cache_fingerprint`: what a cache depends on;
- :class:`ReferenceCache`: the files, their validity, reads and writes;
- :func:`fill_reference_cache`: every rank computes its share, one filler at a time.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from ..atomic_files import write_json_atomic
from ..data.collator import PACTBatch
from ..digests import json_digest
from ..distributed import barrier, from_rank0
from .values import ReferenceLogits


@torch.no_grad()
def fill_reference_cache(cache, online, views, collator, micro_batch, rank, world, device):
    """Compute every sample's reference into ``cache`` and make it valid.

    ``online``: ``batch -> (full, post)``, the ``[rows, K]`` logits of both
    views (an :class:`~pact.reference.OnlineReference` gives a
    :class:`~pact.reference.ReferenceLogits`); ``views``: the dataset's
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
    verdict = from_rank0(verdict)
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
            full, post = online(batch)
            if j < len(batches):
                cache.write(ids, full, post, [views[i].num_answer for i in ids])
        barrier()
        if rank == 0:
            cache.finish({"samples": len(views)})
        barrier()
    finally:
        if lock is not None:
            lock.release()


def cache_fingerprint(model_name: str, safety_ids: list[int], dataset_digest: str, compute_dtype: str) -> str:
    """Digest of what a reference cache depends on: the model (its weights' digest,
    :func:`pact.fingerprint.weights_digest`), S, the tokenised data and the dtype the reference computes in
    (``"float32"``, ``"bfloat16"``, or an autocast dtype such as ``"autocast-bfloat16"``)."""
    return json_digest({"model": model_name, "ids": list(map(int, safety_ids)), "data": dataset_digest,
                        "compute_dtype": compute_dtype}, sort_keys=False, compact=False, default=None)


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
        from ..locks import DirectoryLock, DirectoryLockedError

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
        """Store the rows of several samples (in batch order) into their slots of the partial file:
        ``r_full``/``r_post`` ``[rows, K]`` the full and no-prompt views' logits on S, ``num_answer`` the rows
        of each sample."""
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

    def __call__(self, batch: PACTBatch, full_vocab: bool = False) -> ReferenceLogits:
        """Both views' ``[rows, K]`` float32 logits on S for a batch, read from the memory map."""
        if full_vocab:
            raise ValueError("the reference cache holds K-token logits only; the full_vocab variant needs none")
        if self._array is None:
            self._array = np.memmap(self.data_path, dtype=np.float32, mode="r", shape=(max(1, self.total_rows), 2, self.k))
        parts = [self._array[self.offsets[int(s)]:self.offsets[int(s) + 1]] for s in batch.sample_ids.tolist()]
        block = torch.from_numpy(np.concatenate(parts)) if parts else torch.empty(0, 2, self.k)
        block = block.to(batch.labels.device)
        return ReferenceLogits(block[:, 0], block[:, 1])
