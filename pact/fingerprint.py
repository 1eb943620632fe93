"""What a model *is*, by content: its weights' digest and its architecture.

Caches and adapters are keyed by these rather than by the path a model was
loaded from, so weights replaced at the same path never reuse a stale
reference cache, and an adapter is never merged into a model other than the
one it was trained on:

* :func:`weights_digest`: SHA-256 over the weight files (``*.safetensors``,
  ``*.bin``, ``*.pt``, ``*.gguf``) and ``config.json`` of a local model, by
  content; a hub name is resolved to its cached snapshot when there is one,
  else keyed by its name.
* :func:`tokenizer_digest`: SHA-256 of a tokenizer's vocabulary (``get_vocab()``),
  its added tokens with their special flags and its special-token map (two
  tokenizers of one vocabulary size but other ids digest apart).
* :func:`adapter_digest`: SHA-256 of the files PEFT loads from an adapter
  directory (``adapter_config.json``, ``adapter_model.*``), so an adapter
  retrained at the same path digests apart; :func:`module_digest` the same for
  a model object in memory (its parameters and buffers).
* :func:`vocab_digest`: SHA-256 of ``get_vocab()`` alone (what a safety-token
  file's ids mean); :func:`tokenization_digest`: :func:`tokenizer_digest` plus
  the chat template and the BOS/EOS/pad ids (what turns a sample into ids).
* :func:`~pact.digests.json_digest` (canonical JSON) and :func:`~pact.digests.files_digest` (files' bytes)
  live in :mod:`pact.digests`, importable without torch.
* :func:`write_base_record` / :func:`check_adapter_base`: ``pact_base.json``
  beside an exported adapter (base model, architecture, weights digest), and
  the check that ``pact eval --adapter`` makes with it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .atomic_files import write_json_atomic
from .digests import files_digest, json_digest
from .models import ModelLoadError, ModelRef, resolve_model_ref

ARCHITECTURE_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
BASE_RECORD = "pact_base.json"


def _local_dir(ref: ModelRef) -> Path | None:
    if ref.is_local:
        return Path(ref.path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref.path, local_files_only=True))
    except Exception:  # not in the local hub cache
        return None


def weights_digest(name: str, gguf_file: str | None = None) -> str:
    """SHA-256 of a model's weight files by content (see the module doc); ``name:NAME`` for an uncached hub name."""
    ref = resolve_model_ref(name, gguf_file)
    root = _local_dir(ref)
    if root is None:
        return f"name:{ref}"
    if ref.gguf_file:
        files = [root / ref.gguf_file]
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and (p.suffix in WEIGHT_SUFFIXES
                                                                       or p.name == "config.json"))
    return files_digest(root, files)


def tokenizer_digest(tokenizer) -> str:
    """SHA-256 of what maps text to ids: ``get_vocab()``, the added tokens (content, special) by id, and the
    special-token map. The chat template is not part of it (it changes prompts, not ids)."""
    added = {int(i): [str(t.content), bool(getattr(t, "special", False))]
             for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()}
    record = {"vocab": sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0])),
              "added": sorted(added.items()),
              "special": {k: str(v) for k, v in sorted((getattr(tokenizer, "special_tokens_map", None) or {}).items())}}
    return json_digest(record, sort_keys=False, compact=False, ensure_ascii=False, default=None)


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def adapter_digest(adapter_dir: str | Path) -> str:
    """SHA-256 of an adapter directory's ``adapter_config.json`` and ``adapter_model.*`` by content (every file
    of the directory when it has none of them)."""
    root = Path(adapter_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"adapter directory not found: {adapter_dir}")
    files = [root / n for n in ADAPTER_FILES if (root / n).is_file()]
    if not files:
        files = sorted(p for p in root.rglob("*") if p.is_file())
    return files_digest(root, files)


def update_with_tensor(h, name: str, t) -> None:
    """Add a named tensor to the hash ``h`` (a :mod:`hashlib` object): its name, dtype, shape and raw bytes.

    ``t``: a tensor of any shape (0-dim too), dtype and device; it is read from a contiguous CPU copy.
    """
    import torch

    t = t.detach().cpu().contiguous()
    h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode() + b"\0")
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def module_digest(model) -> str:
    """SHA-256 of a ``torch.nn.Module``'s parameters and buffers (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        update_with_tensor(h, name, t)
    return h.hexdigest()


def vocab_digest(tokenizer) -> str:
    """SHA-256 of the tokenizer's vocabulary: every (token, id) of ``get_vocab()``, added tokens included."""
    return json_digest(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]))


def tokenization_digest(tokenizer) -> str:
    """SHA-256 of what turns a training sample into ids: :func:`tokenizer_digest`, the chat template, BOS/EOS/pad."""
    return json_digest({"tokenizer": tokenizer_digest(tokenizer),
                        "chat_template": getattr(tokenizer, "chat_template", None),
                        "bos": getattr(tokenizer, "bos_token_id", None), "eos": getattr(tokenizer, "eos_token_id", None),
                        "pad": getattr(tokenizer, "pad_token_id", None)})


def architecture(config) -> dict:
    """The keys of a ``transformers`` config that an adapter's shapes depend on."""
    return {k: getattr(config, k, None) for k in ARCHITECTURE_KEYS}


def write_base_record(adapter_dir: Path, model: str, gguf_file: str | None, config) -> None:
    """``pact_base.json`` in ``adapter_dir``: the model the adapter was trained on (name, architecture, digest)."""
    record = {"model": str(model), "gguf_file": gguf_file, "architecture": architecture(config),
              "weights_sha256": weights_digest(model, gguf_file)}
    write_json_atomic(Path(adapter_dir) / BASE_RECORD, record)


def check_adapter_base(adapter_dir: str | Path, model: str, gguf_file: str | None, config) -> None:
    """Refuse (:class:`ModelLoadError`) to merge an adapter into a model of another architecture or weights.

    Uses ``pact_base.json`` (written by ``pact train``); an adapter without it
    is checked by its shapes when it is loaded.
    """
    path = Path(adapter_dir) / BASE_RECORD
    if not path.is_file():
        return
    base = json.loads(path.read_text())
    mine = architecture(config)
    differ = {k: (v, mine.get(k)) for k, v in base["architecture"].items() if mine.get(k) != v}
    if differ:
        listed = ", ".join(f"{k}: {a} vs {b}" for k, (a, b) in differ.items())
        raise ModelLoadError(f"the adapter in {adapter_dir} was trained on {base['model']}, another architecture "
                             f"than --model {model} ({listed}); pass the model it was trained on")
    if weights_digest(model, gguf_file) != base["weights_sha256"]:
        raise ModelLoadError(f"the adapter in {adapter_dir} was trained on {base['model']}, whose weights differ "
                             f"from --model {model} (another base model of the same architecture); pass the "
                             "model it was trained on")
