"""Safety-token identification (paper §2.1, SPEC §1) and the safety-token file.

    from pact.safety_tokens import identify, SafetyTokens
    result = identify(safe_model, base_model, tokenizer, get_source("harmbench"), k=50)
    result.tokens.save("tokens.json")
    S = SafetyTokens.load("tokens.json", model=policy)   # refuses a vocabulary mismatch

For each harmful prompt the aligned model's answer ``y`` (generated greedily,
or given) is teacher-forced through both models; for each answer step ``t``
``Δ_t(v) = p_safe(v | x, y_<t) − p_base(v | x, y_<t)`` over the whole
vocabulary. ``d(v)`` is the mean of ``Δ_t(v)`` over all steps (or per prompt,
then over prompts), ``p̄_safe(v)`` the mean aligned probability; both are
``[V]`` float64 sums accumulated one chunk of rows at a time.
"""
from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .atomic_files import write_json_atomic
from .generation import (
    encode_chat_prompt,
    encode_plain_prompt,
    end_of_turn_ids,
    generate_greedy,
    pad_right,
)
from .identify_presets import IDENTIFY_PRESETS, WEIGHT_DTYPE_NAMES
from .models import vocab_size_of

#: The key of a tokens file holding :func:`pact.fingerprint.vocab_digest` of the tokenizer it was identified with.
VOCAB_KEY = "tokenizer_vocab_sha256"

__all__ = [
    "IDENTIFY_PRESETS",
    "SELECTIONS",
    "IdentifyResult",
    "SafetyTokens",
    "SafetyTokensError",
    "accumulate_discrepancy",
    "identify",
    "identify_authors",
    "select_tokens",
]

SELECTIONS = ("paper", "authors")
BASE_FORMATS = ("chat", "plain")
AVERAGES = ("token", "prompt")
WEIGHT_DTYPES = {name: getattr(torch, name) for name in WEIGHT_DTYPE_NAMES}
FORMAT_TAG = "pact-safety-tokens/1"

#: Float64 elements per softmax chunk (two such chunks live at once: 2 x 128 MiB).
_CHUNK_ELEMS = 1 << 24


class SafetyTokensError(ValueError):
    """A safety-token file is malformed or does not fit the model / tokenizer."""


# ---------------------------------------------------------------------------
# The safety-token set and its file
# ---------------------------------------------------------------------------

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
        from .fingerprint import json_digest

        return json_digest({"ids": list(map(int, self.ids)), "weights": [float(w) for w in self.weights]})

    def stamp(self, tokenizer) -> "SafetyTokens":
        """Record the tokenizer's vocabulary digest (and each id's string) so a load can check the tokenizer."""
        from .fingerprint import vocab_digest

        self.extra[VOCAB_KEY] = vocab_digest(tokenizer)
        self.strings = [_decode(tokenizer, i) for i in self.ids]
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
            from .fingerprint import vocab_digest

            if len(tokenizer) > self.vocab_size:
                raise SafetyTokensError(
                    f"{where}vocabulary mismatch: the tokenizer has {len(tokenizer)} tokens, more than the "
                    f"{self.vocab_size} of the file ({self.safe_model})")
            stored = self.extra.get(VOCAB_KEY)
            if stored is not None and stored != vocab_digest(tokenizer):
                differ = sum(_decode(tokenizer, i) != s for i, s in zip(self.ids, self.strings))
                raise SafetyTokensError(
                    f"{where}tokenizer mismatch: the safety tokens were identified with another tokenizer "
                    f"({self.safe_model}; vocabulary digest {stored[:12]}, this tokenizer's "
                    f"{vocab_digest(tokenizer)[:12]}; {differ} of {len(self.ids)} ids decode differently); "
                    "identify them again with this model's tokenizer")
            bad = [(i, s, _decode(tokenizer, i)) for i, s in zip(self.ids, self.strings) if _decode(tokenizer, i) != s]
            if bad:
                i, s, got = bad[0]
                raise SafetyTokensError(
                    f"{where}vocabulary mismatch: {len(bad)} of {len(self.ids)} safety ids decode differently "
                    f"with this tokenizer (id {i}: file {s!r}, tokenizer {got!r})")


def _decode(tokenizer, i: int) -> str:
    if i >= len(tokenizer):
        return ""
    try:
        return tokenizer.decode([i])
    except Exception:  # ids of padded vocab rows
        return ""


# ---------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------

def select_tokens(d: torch.Tensor, mean_safe_prob: torch.Tensor, k: int = 50, selection: str = "paper", *,
                  std_min_abs_d: float | None = None, norm_eps: float = 0.0, weights_dtype: str = "float64"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick S and its weights (SPEC §1.4).

    Args:
        d: ``[V]`` float64 discrepancy scores d(v).
        mean_safe_prob: ``[V]`` float64 mean aligned probabilities p̄_safe(v).
        std_min_abs_d: ``authors`` only, the authors' filter (their code:
            1e-9): tokens with d(v) = 0 leave S, only those with
            ``|d(v)| > std_min_abs_d`` are standardised (mean and std over
            them), the others keep d(v) as is before the L2 normalisation, and
            a value that rounds to 0 leaves S. None: every token of S is
            standardised.
        norm_eps: ``authors``: added to the std and to the L2 norm (the
            authors' code: 1e-6); 0 divides by them exactly.
        weights_dtype: round the weights through this dtype (``float64``: no
            rounding; the authors save ``bfloat16``).
    Returns:
        ``ids`` ``[K']`` int64 and ``weights`` ``[K']`` float64, ordered by d(v)
        descending (ties: lower id first). ``paper``: top-K by d among d > 0,
        w = d (K' <= K). ``authors``: top-K by p̄_safe, d standardised over S,
        L2-normalised, w = max(., 0).
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    if (std_min_abs_d is not None and std_min_abs_d < 0) or norm_eps < 0:
        raise ValueError("std_min_abs_d and norm_eps must be >= 0")
    if selection == "paper" and (std_min_abs_d is not None or norm_eps):
        raise ValueError("std_min_abs_d and norm_eps (--std-min-abs-d, --norm-eps) apply to selection='authors'")
    if weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be one of {tuple(WEIGHT_DTYPES)}, got {weights_dtype!r}")
    if selection == "paper":
        order = torch.argsort(d, descending=True, stable=True)[:k]
        ids = order[d[order] > 0]
        if ids.numel() == 0:
            raise ValueError("no token has d(v) > 0: the aligned model never puts more probability on any token "
                             "than the base model; check the model pair")
        return ids, _round(d[ids], weights_dtype)
    if selection == "authors":
        top = torch.argsort(mean_safe_prob, descending=True, stable=True)[:k]
        if std_min_abs_d is not None:
            top = top[d[top] != 0]
        ids = top[torch.argsort(d[top], descending=True, stable=True)]
        z = d[ids].clone()
        big = torch.ones_like(ids, dtype=torch.bool) if std_min_abs_d is None else z.abs() > std_min_abs_d
        centred = z[big] - z[big].mean()
        if int(big.sum()) < 2 or float(centred.abs().max()) == 0.0:
            raise ValueError("authors selection needs at least two tokens with different d(v) in S")
        z[big] = centred / (centred.std() + norm_eps)
        z = _round(z / (z.norm() + norm_eps), weights_dtype)
        if std_min_abs_d is not None:
            ids, z = ids[z != 0], z[z != 0]
        return ids, z.clamp_min(0.0)
    raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")


def _round(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """``x`` (float64) rounded to the nearest value of ``dtype``, returned in float64."""
    return x.to(WEIGHT_DTYPES[dtype]).to(torch.float64)


# ---------------------------------------------------------------------------
# Accumulation
# ---------------------------------------------------------------------------

def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def _answer_logits(model, prefixes: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
                   ) -> torch.Tensor:
    """Teacher-forced logits at every answer step of a batch.

    Args:
        prefixes: per sequence the prompt ids (template included).
        responses: per sequence the answer ids y_1..y_T (T >= 1).
    Returns:
        ``[sum T_i, V]`` logits in the model's dtype: rows of sequence 0
        (steps 0..T_0-1), then sequence 1, ...; row t of sequence i predicts
        ``y_t`` from ``x, y_<t``. Right padding, mask from lengths.
    """
    seqs = [list(p) + list(r) for p, r in zip(prefixes, responses)]
    ids, mask = pad_right(seqs, pad_id)
    L = ids.shape[1]
    first = min(len(p) for p in prefixes) - 1           # first position any row needs
    keep = L - first
    device = next(model.parameters()).device
    kw = {"logits_to_keep": keep} if _accepts_logits_to_keep(model) else {}
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **kw).logits
    offset = L - logits.shape[1]                         # sequence position of logits[:, 0]
    rows = []
    for i, (p, r) in enumerate(zip(prefixes, responses)):
        s = len(p) - 1 - offset
        rows.append(logits[i, s: s + len(r)])
    return torch.cat(rows, 0)


def accumulate_discrepancy(safe_logits: torch.Tensor, base_logits: torch.Tensor, row_weights: torch.Tensor,
                           acc_d: torch.Tensor, acc_p: torch.Tensor) -> None:
    """Add ``Σ_rows w·(p_safe − p_base)`` to ``acc_d`` and ``Σ_rows w·p_safe`` to ``acc_p``, in place.

    Args:
        safe_logits, base_logits: ``[R, V]`` logits (any float dtype) of the
            same answer steps.
        row_weights: ``[R]`` float64 weight of each step (1, or 1/T per prompt).
        acc_d, acc_p: ``[V]`` float64 accumulators.
    Softmax runs in float64 over the full vocabulary, a chunk of rows at a time.
    """
    R, V = safe_logits.shape
    step = max(1, _CHUNK_ELEMS // V)
    for s in range(0, R, step):
        w = row_weights[s: s + step].to(acc_d.device, torch.float64)
        ps = torch.softmax(safe_logits[s: s + step].to(acc_d.device, torch.float64), dim=-1)
        pb = torch.softmax(base_logits[s: s + step].to(acc_d.device, torch.float64), dim=-1)
        acc_p.add_(w @ ps)
        acc_d.add_(w @ (ps.sub_(pb)))


# ---------------------------------------------------------------------------
# identify
# ---------------------------------------------------------------------------

@dataclass
class IdentifyResult:
    """What :func:`identify` computed.

    ``d`` and ``mean_safe_prob``: ``[V]`` float64 over the whole vocabulary;
    ``responses``: the answer ids used per prompt (``list[int]``, after the
    ``max_resp_len`` cap); ``tokens``: the selected set (the file's content).
    """

    tokens: SafetyTokens
    d: torch.Tensor
    mean_safe_prob: torch.Tensor
    responses: list[list[int]]
    prompts: list[str]
    num_steps: int
    num_prompts: int
    skipped: int


def _source_items(prompts) -> tuple[str, list[str], list[str | None]]:
    from .data import PromptSource

    if isinstance(prompts, PromptSource):
        recs = prompts.records
        return prompts.describe(), [r.prompt for r in recs], [r.response for r in recs]
    items = list(prompts)
    texts, resps = [], []
    for it in items:
        if isinstance(it, str):
            texts.append(it)
            resps.append(None)
        elif isinstance(it, (tuple, list)) and len(it) == 2:
            texts.append(str(it[0]))
            resps.append(None if it[1] is None else str(it[1]))
        else:
            texts.append(it.prompt)
            resps.append(getattr(it, "response", None))
    return "list", texts, resps


@torch.no_grad()
def identify(safe_model, base_model, tokenizer, prompts, *, k: int = 50, selection: str = "paper",
             responses: str | Sequence[str] | Sequence[Sequence[int]] = "generate", base_format: str = "chat",
             max_new_tokens: int = 128, max_resp_len: int | None = None, batch_size: int = 8,
             average: str = "token", append_eos: bool = True, base_bos: bool = True, strip: bool = False,
             std_min_abs_d: float | None = None, norm_eps: float = 0.0, weights_dtype: str = "float64",
             limit: int | None = None, safe_name: str = "", base_name: str = "",
             prompts_name: str | None = None, progress: bool = True) -> IdentifyResult:
    """Identify the safety tokens of ``safe_model`` against ``base_model`` (SPEC §1).

    Args:
        safe_model, base_model: causal LMs with the same output vocabulary V
            (``tokenizer`` is shared; both on the same device).
        prompts: a :class:`pact.data.PromptSource`, a list of prompt strings,
            or of ``(prompt, response)`` pairs.
        responses: ``"generate"`` (greedy answers of ``safe_model`` with its
            chat template, up to ``max_new_tokens``, ending at and keeping the
            end-of-turn token); ``"given"`` (the responses carried by
            ``prompts``); or an explicit list per prompt of texts (tokenised,
            plus the EOS id when ``append_eos``) or of id lists (used as is).
        base_format: ``chat`` (the base sees the same chat-template tokens) or
            ``plain`` (``User: {prompt}\\n\\nAssistant: `` then the answer).
        max_resp_len: keep only the first N answer tokens.
        average: ``token`` (every step counts once) or ``prompt`` (mean per
            prompt, then over prompts).
        append_eos: append the EOS id to each answer given as text.
        base_bos: the ``plain`` prefix gets the tokenizer's special tokens
            (BOS); False tokenises it without any.
        strip: strip whitespace around prompts and answers given as text.
        std_min_abs_d, norm_eps, weights_dtype: see :func:`select_tokens`.
        limit: use only the first N prompts.
    ``identify(..., **IDENTIFY_PRESETS["authors"])`` (or :func:`identify_authors`)
    is the authors' ``compute_safety_tokens_pact.py``.
    Returns:
        :class:`IdentifyResult` with the full-vocabulary ``d`` and
        ``mean_safe_prob`` (``[V]`` float64) and the selected tokens.
    """
    from tqdm.auto import tqdm

    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}")
    if base_format not in BASE_FORMATS:
        raise ValueError(f"base_format must be one of {BASE_FORMATS}")
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    V = vocab_size_of(safe_model)
    if vocab_size_of(base_model) != V:
        raise ValueError(f"the aligned model has {V} output tokens, the base model {vocab_size_of(base_model)}: "
                         "they must share one vocabulary")
    if len(tokenizer) > V:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the model's {V}")
    if limit is not None and limit < 1:
        raise ValueError("limit must be >= 1")
    if not base_bos and base_format != "plain":
        raise ValueError("base_bos=False applies to base_format='plain' (a chat template decides its own BOS)")
    name, texts, given = _source_items(prompts)
    texts, given = texts[:limit], given[:limit]
    if strip:
        texts = [t.strip() for t in texts]
        given = [None if r is None else r.strip() for r in given]
    prompts_name = prompts_name or name
    n = len(texts)
    if n == 0:
        raise ValueError("no prompts")

    eos = end_of_turn_ids(safe_model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    safe_prefix = [encode_chat_prompt(tokenizer, t) for t in texts]

    # 1. responses ------------------------------------------------------------
    if isinstance(responses, str):
        if responses == "generate":
            resp_ids = generate_greedy(safe_model, tokenizer, safe_prefix, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, eos_ids=eos, progress=progress,
                                       desc="answer (aligned model)")
        elif responses == "given":
            if any(r is None for r in given):
                raise ValueError(f"{prompts_name}: not every prompt carries a response; use responses='generate'")
            resp_ids = [_encode_response(tokenizer, r, eos[0] if append_eos else None) for r in given]
        else:
            raise ValueError("responses must be 'generate', 'given' or a list with one response per prompt")
    else:
        resp_list = list(responses)
        if len(resp_list) != n:
            raise ValueError(f"{len(resp_list)} responses for {n} prompts")
        resp_ids = [list(map(int, r)) if not isinstance(r, str) else
                    _encode_response(tokenizer, r.strip() if strip else r, eos[0] if append_eos else None)
                    for r in resp_list]
    if max_resp_len is not None:
        if max_resp_len < 1:
            raise ValueError("max_resp_len must be >= 1")
        resp_ids = [r[:max_resp_len] for r in resp_ids]

    base_prefix = (safe_prefix if base_format == "chat" else
                   [encode_plain_prompt(tokenizer, t, bos=base_bos) for t in texts])
    keep = [i for i in range(n) if len(resp_ids[i]) > 0]
    skipped = n - len(keep)
    if not keep:
        raise ValueError("every response is empty")

    # 2-3. teacher forcing and accumulation ------------------------------------
    dev = next(safe_model.parameters()).device       # accumulate where the logits are; [V] float64
    acc_d = torch.zeros(V, dtype=torch.float64, device=dev)
    acc_p = torch.zeros(V, dtype=torch.float64, device=dev)
    num_steps = 0
    batches = [keep[s: s + batch_size] for s in range(0, len(keep), batch_size)]
    for b in tqdm(batches, desc="teacher forcing", disable=not progress, unit="batch"):
        rs = [resp_ids[i] for i in b]
        ls = _answer_logits(safe_model, [safe_prefix[i] for i in b], rs, pad)
        lb = _answer_logits(base_model, [base_prefix[i] for i in b], rs, pad)
        if average == "token":
            w = torch.ones(ls.shape[0], dtype=torch.float64)
        else:
            w = torch.cat([torch.full((len(r),), 1.0 / len(r), dtype=torch.float64) for r in rs])
        accumulate_discrepancy(ls, lb, w, acc_d, acc_p)
        num_steps += ls.shape[0]
        del ls, lb
    denom = num_steps if average == "token" else len(keep)
    d = (acc_d / denom).cpu()
    p_mean = (acc_p / denom).cpu()

    # 4. selection -------------------------------------------------------------
    ids, weights = select_tokens(d, p_mean, k, selection, std_min_abs_d=std_min_abs_d, norm_eps=norm_eps,
                                 weights_dtype=weights_dtype)
    id_list = ids.tolist()
    tokens = SafetyTokens(
        safe_model=safe_name or _model_name(safe_model), base_model=base_name or _model_name(base_model),
        vocab_size=V, k=k, selection=selection, ids=id_list, strings=[_decode(tokenizer, i) for i in id_list],
        weights=weights.tolist(), scores=d[ids].tolist(), mean_safe_prob=p_mean[ids].tolist(),
        prompts=prompts_name, num_prompts=len(keep), num_steps=num_steps,
        extra={"selected": len(id_list), "base_format": base_format, "average": average,
               "responses": responses if isinstance(responses, str) else "list",
               "max_new_tokens": max_new_tokens if responses == "generate" else None,
               "max_resp_len": max_resp_len, "skipped_prompts": skipped,
               "append_eos": append_eos if responses != "generate" else None,
               "base_bos": base_bos if base_format == "plain" else None, "strip": strip,
               "std_min_abs_d": std_min_abs_d, "norm_eps": norm_eps, "weights_dtype": weights_dtype},
    )
    tokens.stamp(tokenizer)
    return IdentifyResult(tokens=tokens, d=d, mean_safe_prob=p_mean, responses=resp_ids, prompts=texts,
                          num_steps=num_steps, num_prompts=len(keep), skipped=skipped)


def identify_authors(safe_model, base_model, tokenizer, pairs, **overrides) -> IdentifyResult:
    """:func:`identify` with ``IDENTIFY_PRESETS["authors"]``: the authors' identification pipeline.

    ``pairs``: (prompt, response) pairs (a :class:`pact.data.PromptSource`
    whose records carry responses, or a list of tuples); ``overrides``: any
    keyword of :func:`identify`.
    """
    return identify(safe_model, base_model, tokenizer, pairs, **{**IDENTIFY_PRESETS["authors"], **overrides})


def _encode_response(tokenizer, text: str, eos_id: int | None) -> list[int]:
    """A given answer's ids, its text as text (a special token's string in it is not a control token), + EOS."""
    ids = list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    return ids + ([eos_id] if eos_id is not None else [])


def _model_name(model) -> str:
    return str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
