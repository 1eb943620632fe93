"""Prompt encoding and batched greedy generation shared by identify and intervene.

Token-id conventions: a prompt is a ``list[int]``; a response is the list of
generated ids up to and including the first end-of-turn id (kept as the last
answer token, SPEC §1.1), or ``max_new_tokens`` ids when none came.
Attention masks are built from lengths, never from token values (the pad
token is often the end-of-turn token itself).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

__all__ = [
    "PLAIN_TEMPLATE",
    "encode_chat_prompt",
    "encode_plain_prompt",
    "end_of_turn_ids",
    "generate_greedy",
    "pad_left",
    "pad_right",
]

#: The base-model prefix of the authors' code (``--base-format plain``).
PLAIN_TEMPLATE = "User: {prompt}\n\nAssistant: "


def encode_chat_prompt(tokenizer, prompt: str) -> list[int]:
    """Ids of ``prompt`` as one user turn plus the assistant header (no system turn added by us).

    The template's own text decides BOS and any default system prompt; no
    further special tokens are added. A special token's string inside
    ``prompt`` is encoded as text (:func:`pact.data.chat.encode_chat`).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; use --base-format plain for a base model, "
                         "and an aligned (chat) model as --safe")
    from ..data.chat import encode_chat

    return encode_chat(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)


def encode_plain_prompt(tokenizer, prompt: str, template: str = PLAIN_TEMPLATE, bos: bool = True) -> list[int]:
    """Ids of ``User: {prompt}\\n\\nAssistant: ``.

    ``bos=True``: with the tokenizer's usual special tokens (BOS);
    ``bos=False``: without any (the authors' ``add_special_tokens=False``).
    """
    # the plain template has no special tokens of its own: a special token's string in the prompt stays text
    return list(tokenizer(template.format(prompt=prompt), add_special_tokens=bos, split_special_tokens=True)
                ["input_ids"])


def end_of_turn_ids(model, tokenizer) -> list[int]:
    """Ids that end an answer: the generation config's EOS id(s) and the tokenizer's EOS."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    for e in ([eos] if isinstance(eos, int) else list(eos or [])) + [tokenizer.eos_token_id]:
        if e is not None and int(e) not in ids:
            ids.append(int(e))
    if not ids:
        raise ValueError("neither the model's generation config nor the tokenizer names an EOS token")
    return ids


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to ``[B, L]`` int64 ids and a ``[B, L]`` int64 attention mask (1 on real tokens)."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, L - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, L - len(s):] = 1
    return ids, mask


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to ``[B, L]`` int64 ids and a ``[B, L]`` int64 attention mask (1 on real tokens)."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def _batches(n: int, size: int) -> Iterable[range]:
    for s in range(0, n, size):
        yield range(s, min(n, s + size))


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 128,
                    batch_size: int = 8, eos_ids: Sequence[int] | None = None,
                    logits_processors: Callable[[int], list] | None = None,
                    progress: bool = True, desc: str = "generate") -> list[list[int]]:
    """Greedy answers to already-encoded prompts, in batches (left padding).

    Args:
        prompts: one ``list[int]`` of prompt ids per prompt.
        eos_ids: ids that end an answer (default :func:`end_of_turn_ids`).
        logits_processors: ``f(prompt_length) -> list[LogitsProcessor]``, called
            once per batch (``prompt_length`` is the padded batch width).
    Returns:
        one ``list[int]`` per prompt: the answer up to and including its first
        end-of-turn id, or ``max_new_tokens`` ids.
    """
    from tqdm.auto import tqdm
    from transformers import LogitsProcessorList

    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    eos = list(eos_ids) if eos_ids is not None else end_of_turn_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    device = next(model.parameters()).device
    out: list[list[int]] = []
    for idx in tqdm(list(_batches(len(prompts), batch_size)), desc=desc, disable=not progress, unit="batch"):
        ids, mask = pad_left([prompts[i] for i in idx], pad)
        procs = LogitsProcessorList(logits_processors(ids.shape[1]) if logits_processors else [])
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
            eos_token_id=eos, pad_token_id=pad, logits_processor=procs,
        )
        new = gen[:, ids.shape[1]:].tolist()
        for row in new:
            resp: list[int] = []
            for t in row:
                resp.append(int(t))
                if t in eos:
                    break
            out.append(resp)
    return out
