"""The safety-token set S with its weights, and its JSON file (SPEC §1).

    S = SafetyTokens.load("tokens.json", model=policy)   # refuses a vocabulary or tokenizer mismatch
    S.ids_tensor(), S.weights_tensor()                   # [K] int64, [K] float32
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic_files import write_json_atomic
from ..models import vocab_size_of

__all__ = ["FORMAT_TAG", "SELECTIONS", "VOCAB_KEY", "SafetyTokens", "SafetyTokensError", "decode_token"]

#: The key of a tokens file holding :func:`pact.fingerprint.vocab_digest` of the tokenizer it was identified with.
VOCAB_KEY = "tokenizer_vocab_sha256"
#: The selection rules (:func:`pact.identify.select_tokens`).
SELECTIONS = ("paper", "authors")
FORMAT_TAG = "pact-safety-tokens/1"


class SafetyTokensError(ValueError):
    """A safety-token file is malformed or does not fit the model / tokenizer."""


@dataclass
class SafetyTokens:
    """The safety-token set S with its weights; the SPEC §1 file.

    Lists are in the order of S, highest ``d(v)`` first. ``ids``: token ids;
    ``weights``: w(v) >= 0 (at least one > 0); ``scores``: d(v) on S;
    ``mean_safe_prob``: p̄_safe(v) on S; ``strings``: each id decoded.
    """

    safe_model: str
    base_model: str
    vocab_size: int
    k: int
    selection: str
    ids: list[int]
    strings: list[str]
    weights: list[float]
    scores: list[float]
    mean_safe_prob: list[float]
    prompts: str
    num_prompts: int
    num_steps: int
    extra: dict[str, Any] = field(default_factory=dict)

    REQUIRED = ("safe_model", "base_model", "vocab_size", "k", "selection", "ids", "strings", "weights",
                "scores", "mean_safe_prob", "prompts", "num_prompts", "num_steps")

    def __post_init__(self) -> None:
        self.validate()

    def __len__(self) -> int:
        return len(self.ids)

    def validate(self) -> None:
        n = len(self.ids)
        if n == 0:
            raise SafetyTokensError("the safety-token set is empty")
        for key in ("strings", "weights", "scores", "mean_safe_prob"):
            if len(getattr(self, key)) != n:
                raise SafetyTokensError(f"{key!r} has {len(getattr(self, key))} entries, ids has {n}")
        if len(set(self.ids)) != n:
            raise SafetyTokensError("ids are not unique")
        if any((not isinstance(i, int)) or i < 0 or i >= self.vocab_size for i in self.ids):
            raise SafetyTokensError(f"ids must be integers in [0, vocab_size={self.vocab_size})")
        if any((not math.isfinite(w)) or w < 0 for w in self.weights) or not any(w > 0 for w in self.weights):
            raise SafetyTokensError("weights must be finite, >= 0, and at least one > 0")
        if self.selection not in SELECTIONS:
            raise SafetyTokensError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")

    def digest(self) -> str:
        """SHA-256 of what the loss reads: the ids of S, in order, and their weights."""
        from ..digests import json_digest

        return json_digest({"ids": list(map(int, self.ids)), "weights": [float(w) for w in self.weights]})

    def stamp(self, tokenizer) -> "SafetyTokens":
        """Record the tokenizer's vocabulary digest (and each id's string) so a load can check the tokenizer."""
        from ..fingerprint import vocab_digest

        self.extra[VOCAB_KEY] = vocab_digest(tokenizer)
        self.strings = [decode_token(tokenizer, i) for i in self.ids]
        return self

    # tensors ---------------------------------------------------------------
    def ids_tensor(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """``[K]`` int64 ids of S."""
        return torch.tensor(self.ids, dtype=torch.long, device=device)

    def weights_tensor(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[K]`` weights w(v) in ``dtype``."""
        return torch.tensor(self.weights, dtype=dtype, device=device)

    # file ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return {"format": FORMAT_TAG, **d, **extra}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON file atomically (a temporary file in the same folder, then ``os.replace``)."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SafetyTokens":
        missing = [k for k in cls.REQUIRED if k not in d]
        if missing:
            raise SafetyTokensError(f"safety-token file lacks the keys {missing}")
        kw = {k: d[k] for k in cls.REQUIRED}
        kw["ids"] = [int(i) for i in kw["ids"]]
        kw["weights"] = [float(x) for x in kw["weights"]]
        kw["scores"] = [float(x) for x in kw["scores"]]
        kw["mean_safe_prob"] = [float(x) for x in kw["mean_safe_prob"]]
        kw["vocab_size"] = int(kw["vocab_size"])
        extra = {k: v for k, v in d.items() if k not in cls.REQUIRED and k != "format"}
        return cls(**kw, extra=extra)

    @classmethod
    def load(cls, path: str | os.PathLike, *, tokenizer=None, model=None, vocab_size: int | None = None
             ) -> "SafetyTokens":
        """Read a file and check it against the model being fine-tuned.

        ``model``/``vocab_size``: the output vocabulary must be exactly
        ``vocab_size``. ``tokenizer``: it must not have more tokens than
        ``vocab_size``, and it must decode every id of S to the stored string.
        Any mismatch raises :class:`SafetyTokensError`.
        """
        path = Path(path)
        if not path.is_file():
            raise SafetyTokensError(f"safety-token file not found: {path}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SafetyTokensError(f"{path}: not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise SafetyTokensError(f"{path}: expected a JSON object")
        st = cls.from_dict(d)
        st.check_vocab(tokenizer=tokenizer, model=model, vocab_size=vocab_size, where=str(path))
        return st

    def check_vocab(self, *, tokenizer=None, model=None, vocab_size: int | None = None, where: str = "") -> None:
        where = f"{where}: " if where else ""
        if model is not None:
            vocab_size = vocab_size_of(model)
        if vocab_size is not None and int(vocab_size) != self.vocab_size:
            raise SafetyTokensError(
                f"{where}vocabulary mismatch: the safety tokens were identified over {self.vocab_size} tokens "
                f"({self.safe_model}), the model has {vocab_size}; identify them again for this model")
        if tokenizer is not None:
            from ..fingerprint import vocab_digest

            if len(tokenizer) > self.vocab_size:
                raise SafetyTokensError(
                    f"{where}vocabulary mismatch: the tokenizer has {len(tokenizer)} tokens, more than the "
                    f"{self.vocab_size} of the file ({self.safe_model})")
            stored = self.extra.get(VOCAB_KEY)
            if stored is not None and stored != vocab_digest(tokenizer):
                differ = sum(decode_token(tokenizer, i) != s for i, s in zip(self.ids, self.strings))
                raise SafetyTokensError(
                    f"{where}tokenizer mismatch: the safety tokens were identified with another tokenizer "
                    f"({self.safe_model}; vocabulary digest {stored[:12]}, this tokenizer's "
                    f"{vocab_digest(tokenizer)[:12]}; {differ} of {len(self.ids)} ids decode differently); "
                    "identify them again with this model's tokenizer")
            bad = [(i, s, decode_token(tokenizer, i)) for i, s in zip(self.ids, self.strings) if decode_token(tokenizer, i) != s]
            if bad:
                i, s, got = bad[0]
                raise SafetyTokensError(
                    f"{where}vocabulary mismatch: {len(bad)} of {len(self.ids)} safety ids decode differently "
                    f"with this tokenizer (id {i}: file {s!r}, tokenizer {got!r})")


def decode_token(tokenizer, i: int) -> str:
    """The string of token ``i`` (``""`` for an id past the tokenizer or one it cannot decode)."""
    if i >= len(tokenizer):
        return ""
    try:
        return tokenizer.decode([i])
    except Exception:  # ids of padded vocab rows
        return ""
