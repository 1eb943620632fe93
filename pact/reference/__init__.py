"""The frozen reference of PACT at a batch's loss rows: computed every step or read from a disk cache.

- :mod:`.values`: what a method receives (:class:`ReferenceLogits`, :class:`ReferenceHidden`);
- :mod:`.online`: :class:`OnlineReference`, through a DeepSpeed engine around a
  :class:`~pact.model_rows.RowModel` (adapter off, or a frozen copy);
- :mod:`.cache`: :class:`ReferenceCache`, both views' K-token logits computed
  once (:func:`fill_reference_cache`) and memory-mapped.
"""
from .cache import ReferenceCache, ReferenceCacheBusyError, cache_fingerprint, fill_reference_cache
from .online import OnlineReference
from .values import ReferenceHidden, ReferenceLogits

__all__ = ["OnlineReference", "ReferenceCache", "ReferenceCacheBusyError", "ReferenceHidden", "ReferenceLogits",
           "cache_fingerprint", "fill_reference_cache"]
