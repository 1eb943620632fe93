"""The run setup shared by the driver (:mod:`pact.training.loop`) and :class:`pact.trl.PACTTrainer`: the
model's vocabulary from its config, the safety tokens checked against it, the base model's architecture,
and the reference cache (opened for the run's inputs, filled before the first step).

Each check raises :class:`~pact.training.schema.ConfigError` (a ``ValueError``) with one sentence, the
same from both entry points, before any weights are loaded.
"""
from __future__ import annotations

from pathlib import Path

from ..fingerprint import ARCHITECTURE_KEYS
from ..models import load_model_config, resolve_model_ref, vocab_size_of
from ..identify import SafetyTokens
from ..model_rows import causal_lm_of
from ..reference import ReferenceCache, ReferenceCacheBusyError, cache_fingerprint, fill_reference_cache
from .data import dataset_digest
from .schema import ConfigError


def model_config(key: str, name: str, gguf_file: str | None = None, trust_remote_code: bool = False):
    """The ``transformers`` config of the model ``key`` (``model``, ``base_model``) named ``name``, without
    its weights (code shipped with the model runs only with ``trust_remote_code``)."""
    try:
        return load_model_config(resolve_model_ref(name, gguf_file), trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ConfigError(f"cannot read the config of {key}={name!r}: {e}") from e


def model_vocab_size(model, gguf_file: str | None = None, trust_remote_code: bool = False) -> int:
    """The output vocabulary of a model instance, or of a name/path from its config alone (no weights)."""
    if isinstance(model, (str, Path)):
        config = model_config("model", str(model), gguf_file, trust_remote_code)
        return int(config.get_text_config().vocab_size)
    return vocab_size_of(causal_lm_of(model))


def load_safety_tokens(path: str | None, vocab_size: int, tokenizer=None) -> SafetyTokens | None:
    """The safety set of ``path``, checked against the model's vocabulary and tokenizer before any weights
    are loaded (:class:`~pact.identify.SafetyTokensError` naming the mismatch); None without a path."""
    if not path:
        return None
    return SafetyTokens.load(path, vocab_size=vocab_size, tokenizer=tokenizer)


def check_base_model(cfg) -> None:
    """``base_model`` (safe_lora, asft) has ``model``'s architecture, from the two configs alone (no weights)."""
    if cfg.method not in ("safe_lora", "asft"):
        return
    configs = [model_config("model", cfg.model, cfg.gguf_file, cfg.trust_remote_code),
               model_config("base_model", cfg.base_model, cfg.base_gguf_file, cfg.trust_remote_code)]
    differ = [(k, getattr(configs[0], k, None), getattr(configs[1], k, None)) for k in ARCHITECTURE_KEYS
              if getattr(configs[0], k, None) != getattr(configs[1], k, None)]
    if differ:
        raise ConfigError(f"base_model={cfg.base_model!r} is not the architecture of model={cfg.model!r} "
                          f"({', '.join(f'{k}: {a} vs {b}' for k, a, b in differ)}); method={cfg.method} needs "
                          "the unaligned model the aligned one was trained from")


def open_reference_cache(path: str, views, tokens: SafetyTokens, weights_key: str,
                         compute_dtype: str) -> ReferenceCache:
    """The reference cache in ``path`` for these training views, safety tokens and reference weights
    (``weights_key``: their digest; ``compute_dtype``: what the reference computes in), valid or still to be
    filled; a cache of other inputs is refused (ConfigError naming ``ref_cache`` and why)."""
    fingerprint = cache_fingerprint(weights_key, tokens.ids, dataset_digest(views), compute_dtype=compute_dtype)
    cache = ReferenceCache(path, [v.num_answer for v in views], len(tokens.ids), fingerprint)
    status = cache.status()
    if status not in ("valid", "missing"):
        raise ConfigError(f"ref_cache={path}: {status}")
    return cache


def fill_missing_cache(cache: ReferenceCache, online, views, collator, micro_batch_size: int, rank: int,
                       world: int, device) -> ReferenceCache:
    """``cache``, filled from the ``online`` reference when it is still missing (every rank takes part)."""
    if cache.status() != "missing":
        return cache
    try:
        fill_reference_cache(cache, online, views, collator, micro_batch_size, rank, world, device)
    except (ValueError, ReferenceCacheBusyError) as e:  # another run filled it for other inputs, or fills it now
        raise ConfigError(f"ref_cache={cache.dir}: {e}") from None
    return cache
