"""Safety tokens: find them (the aligned model against its base), keep them in a file, act on them at inference.

- :mod:`.identification`: :func:`identify`, :func:`identify_authors`, :class:`IdentifyResult`;
- :mod:`.discrepancy`: teacher-forced d(v) and p̄_safe(v) over the whole vocabulary;
- :mod:`.selection`: :func:`select_tokens`, the paper's and the authors' rule;
- :mod:`.tokens`: :class:`SafetyTokens`, the tokens file (``tokens.json``), :class:`SafetyTokensError`;
- :mod:`.presets`: named keyword sets of :func:`identify` (``authors``), importable without torch;
- :mod:`.generation`: prompt encoding and batched greedy generation (also used by ``pact eval``);
- :mod:`.intervention`: :class:`TokenSetLogitsProcessor` (boost or ablate S while decoding), :func:`random_control_set`.

    from pact.identify import SafetyTokens, identify
    result = identify(safe_model, base_model, tokenizer, get_source("harmbench"), k=50)
    result.tokens.save("tokens.json")
    S = SafetyTokens.load("tokens.json", model=policy)   # refuses a vocabulary mismatch

The names below are imported on first use, so ``pact.identify.presets`` loads without torch (the CLI's parser).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "IDENTIFY_PRESETS": ".presets", "PRESET_COLUMNS": ".presets", "WEIGHT_DTYPE_NAMES": ".presets",
    "SELECTIONS": ".tokens", "SafetyTokens": ".tokens", "SafetyTokensError": ".tokens",
    "select_tokens": ".selection", "accumulate_discrepancy": ".discrepancy",
    "IdentifyResult": ".identification", "identify": ".identification", "identify_authors": ".identification",
    "TokenSetLogitsProcessor": ".intervention", "random_control_set": ".intervention",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
