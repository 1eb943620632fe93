"""Safety-token identification (paper §2.1, SPEC §1): the aligned model against its base.

    from pact.identify import identify
    result = identify(safe_model, base_model, tokenizer, get_source("harmbench"), k=50)
    result.tokens.save("tokens.json")

For each harmful prompt the aligned model's answer ``y`` (generated greedily,
or given) is teacher-forced through both models; for each answer step ``t``
``Δ_t(v) = p_safe(v | x, y_<t) − p_base(v | x, y_<t)`` over the whole
vocabulary. ``d(v)`` is the mean of ``Δ_t(v)`` over all steps (or per prompt,
then over prompts), ``p̄_safe(v)`` the mean aligned probability; both are
``[V]`` float64 sums accumulated one chunk of rows at a time
(:mod:`.discrepancy`); :func:`~pact.identify.select_tokens` picks S.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..models import vocab_size_of
from .discrepancy import accumulate_discrepancy, answer_logits
from .generation import encode_chat_prompt, encode_plain_prompt, end_of_turn_ids, generate_greedy
from .presets import IDENTIFY_PRESETS
from .selection import select_tokens
from .tokens import SELECTIONS, SafetyTokens, decode_token

__all__ = ["AVERAGES", "BASE_FORMATS", "IdentifyResult", "encode_response", "identify", "identify_authors"]

BASE_FORMATS = ("chat", "plain")
AVERAGES = ("token", "prompt")


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
    from ..data import PromptSource

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
    V = _check_options(safe_model, base_model, tokenizer, selection=selection, base_format=base_format,
                       average=average, batch_size=batch_size, limit=limit, base_bos=base_bos)
    name, texts, given = _prompt_texts(prompts, limit, strip)
    prompts_name = prompts_name or name
    eos = end_of_turn_ids(safe_model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    safe_prefix = [encode_chat_prompt(tokenizer, t) for t in texts]
    resp_ids = _answer_ids(safe_model, tokenizer, responses, safe_prefix, given, eos, append_eos=append_eos,
                           strip=strip, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                           prompts_name=prompts_name)
    if max_resp_len is not None:
        if max_resp_len < 1:
            raise ValueError("max_resp_len must be >= 1")
        resp_ids = [r[:max_resp_len] for r in resp_ids]
    base_prefix = (safe_prefix if base_format == "chat" else
                   [encode_plain_prompt(tokenizer, t, bos=base_bos) for t in texts])
    keep = [i for i in range(len(texts)) if len(resp_ids[i]) > 0]
    if not keep:
        raise ValueError("every response is empty")
    d, p_mean, num_steps = _discrepancy(safe_model, base_model, [safe_prefix[i] for i in keep],
                                        [base_prefix[i] for i in keep], [resp_ids[i] for i in keep], pad, V,
                                        average=average, batch_size=batch_size, progress=progress)
    ids, weights = select_tokens(d, p_mean, k, selection, std_min_abs_d=std_min_abs_d, norm_eps=norm_eps,
                                 weights_dtype=weights_dtype)
    settings = {"base_format": base_format, "average": average,
                "responses": responses if isinstance(responses, str) else "list",
                "max_new_tokens": max_new_tokens if responses == "generate" else None,
                "max_resp_len": max_resp_len, "skipped_prompts": len(texts) - len(keep),
                "append_eos": append_eos if responses != "generate" else None,
                "base_bos": base_bos if base_format == "plain" else None, "strip": strip,
                "std_min_abs_d": std_min_abs_d, "norm_eps": norm_eps, "weights_dtype": weights_dtype}
    id_list = ids.tolist()
    tokens = SafetyTokens(
        safe_model=safe_name or _model_name(safe_model), base_model=base_name or _model_name(base_model),
        vocab_size=V, k=k, selection=selection, ids=id_list, strings=[decode_token(tokenizer, i) for i in id_list],
        weights=weights.tolist(), scores=d[ids].tolist(), mean_safe_prob=p_mean[ids].tolist(),
        prompts=prompts_name, num_prompts=len(keep), num_steps=num_steps,
        extra={"selected": len(id_list), **settings},
    ).stamp(tokenizer)
    return IdentifyResult(tokens=tokens, d=d, mean_safe_prob=p_mean, responses=resp_ids, prompts=texts,
                          num_steps=num_steps, num_prompts=len(keep), skipped=len(texts) - len(keep))


def _check_options(safe_model, base_model, tokenizer, *, selection: str, base_format: str, average: str,
                   batch_size: int, limit: int | None, base_bos: bool) -> int:
    """The output vocabulary size V both models share; ValueError naming a bad option first."""
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
    return V


def _prompt_texts(prompts, limit: int | None, strip: bool) -> tuple[str, list[str], list[str | None]]:
    """``(name, prompt texts, given responses or None)``, the first ``limit`` of ``prompts``, stripped if asked."""
    name, texts, given = _source_items(prompts)
    texts, given = texts[:limit], given[:limit]
    if strip:
        texts = [t.strip() for t in texts]
        given = [None if r is None else r.strip() for r in given]
    if not texts:
        raise ValueError("no prompts")
    return name, texts, given


def _answer_ids(safe_model, tokenizer, responses, safe_prefix: list[list[int]], given: list[str | None],
                eos: list[int], *, append_eos: bool, strip: bool, max_new_tokens: int, batch_size: int,
                progress: bool, prompts_name: str) -> list[list[int]]:
    """The answer ids per prompt: generated greedily, the given ones, or an explicit list (see :func:`identify`).

    ``eos``: the end-of-turn ids (generation stops at any; the first is appended to an answer given as text when
    ``append_eos``).
    """
    n, eos_id = len(safe_prefix), eos[0] if append_eos else None
    if isinstance(responses, str):
        if responses == "generate":
            return generate_greedy(safe_model, tokenizer, safe_prefix, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, eos_ids=eos,
                                   progress=progress, desc="answer (aligned model)")
        if responses == "given":
            if any(r is None for r in given):
                raise ValueError(f"{prompts_name}: not every prompt carries a response; use responses='generate'")
            return [encode_response(tokenizer, r, eos_id) for r in given]
        raise ValueError("responses must be 'generate', 'given' or a list with one response per prompt")
    resp_list = list(responses)
    if len(resp_list) != n:
        raise ValueError(f"{len(resp_list)} responses for {n} prompts")
    return [list(map(int, r)) if not isinstance(r, str) else
            encode_response(tokenizer, r.strip() if strip else r, eos_id) for r in resp_list]


def _discrepancy(safe_model, base_model, safe_prefix: list[list[int]], base_prefix: list[list[int]],
                 resp_ids: list[list[int]], pad: int, V: int, *, average: str, batch_size: int, progress: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(d, p̄_safe, answer steps)``: ``d`` and ``p̄_safe`` ``[V]`` float64 on the CPU, means over the answer
    steps (``average="token"``) or per prompt then over prompts (``"prompt"``); every answer non-empty."""
    from tqdm.auto import tqdm

    dev = next(safe_model.parameters()).device       # accumulate where the logits are; [V] float64
    acc_d = torch.zeros(V, dtype=torch.float64, device=dev)
    acc_p = torch.zeros(V, dtype=torch.float64, device=dev)
    num_steps = 0
    batches = [range(s, min(s + batch_size, len(resp_ids))) for s in range(0, len(resp_ids), batch_size)]
    for b in tqdm(batches, desc="teacher forcing", disable=not progress, unit="batch"):
        rs = [resp_ids[i] for i in b]
        ls = answer_logits(safe_model, [safe_prefix[i] for i in b], rs, pad)
        lb = answer_logits(base_model, [base_prefix[i] for i in b], rs, pad)
        if average == "token":
            w = torch.ones(ls.shape[0], dtype=torch.float64)
        else:
            w = torch.cat([torch.full((len(r),), 1.0 / len(r), dtype=torch.float64) for r in rs])
        accumulate_discrepancy(ls, lb, w, acc_d, acc_p)
        num_steps += ls.shape[0]
        del ls, lb
    denom = num_steps if average == "token" else len(resp_ids)
    return (acc_d / denom).cpu(), (acc_p / denom).cpu(), num_steps


def identify_authors(safe_model, base_model, tokenizer, pairs, **overrides) -> IdentifyResult:
    """:func:`identify` with ``IDENTIFY_PRESETS["authors"]``: the authors' identification pipeline.

    ``pairs``: (prompt, response) pairs (a :class:`pact.data.PromptSource`
    whose records carry responses, or a list of tuples); ``overrides``: any
    keyword of :func:`identify`.
    """
    return identify(safe_model, base_model, tokenizer, pairs, **{**IDENTIFY_PRESETS["authors"], **overrides})


def encode_response(tokenizer, text: str, eos_id: int | None) -> list[int]:
    """A given answer's ids, its text as text (a special token's string in it is not a control token), + EOS."""
    ids = list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    return ids + ([eos_id] if eos_id is not None else [])


def _model_name(model) -> str:
    return str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
