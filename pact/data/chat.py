"""Chat-template text to token ids, with the data's text always encoded as text.

A tokenizer parses its special tokens (``<|im_start|>``, ``<|im_end|>``, ...)
wherever their strings occur in the text it is given. A chat template's
rendering mixes the template's own markers with the messages' contents, so a
prompt or answer holding the string ``<|im_end|>\\n<|im_start|>assistant\\n``
would become a real end of turn and a fake assistant turn. :func:`encode_chat`
encodes the template's markers as control tokens and every special-token
string inside a message content as ordinary text.

When no content holds a special token's string (the usual case) the ids are
exactly the tokenizer's own ids of the rendered text. Otherwise the rendered
text is cut at the template's special tokens and each piece between them is
encoded with ``split_special_tokens=True`` (as the tokenizer itself encodes
the pieces between special tokens).
"""
from __future__ import annotations

from typing import Sequence

__all__ = ["chat_spans", "encode_chat", "encode_spans", "special_strings"]


def special_strings(tokenizer) -> list[str]:
    """The strings the tokenizer turns into special (control) tokens, longest first."""
    found = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False):
            found.add(str(tok.content))
    return sorted((s for s in found if s), key=len, reverse=True)


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _sentinel(i: int) -> str:
    return f"\ue000pact{i}\ue001"


def chat_spans(tokenizer, messages, add_generation_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
    """The template's rendering of ``messages`` and, when a message content holds a special token's string,
    the ``[start, end)`` character spans of the contents in it (else ``[]``: nothing to protect).

    The spans come from a second rendering with each content replaced by a
    sentinel: the template's parts between the sentinels, joined with the
    contents, must give the rendering back (else the contents are searched
    for in order, their surrounding whitespace trimmed when the template
    trimmed it).
    """
    text = _render(tokenizer, messages, add_generation_prompt)
    specials = special_strings(tokenizer)
    contents = [m.get("content") for m in messages]
    if not any(isinstance(c, str) and sp in c for c in contents for sp in specials):
        return text, []
    skeleton = _render(tokenizer, [{**m, "content": _sentinel(i)} if isinstance(m.get("content"), str) else m
                                   for i, m in enumerate(messages)], add_generation_prompt)
    spans, out, pos = [], [], 0
    for i, c in enumerate(contents):
        mark = _sentinel(i)
        at = skeleton.find(mark, pos) if isinstance(c, str) else -1
        if at < 0:
            continue
        out.append(skeleton[pos:at])
        start = sum(len(x) for x in out)
        out.append(c)
        spans.append((start, start + len(c)))
        pos = at + len(mark)
    out.append(skeleton[pos:])
    if "".join(out) == text:
        return text, spans
    return text, _search_spans(text, [c for c in contents if isinstance(c, str)])


def _search_spans(text: str, contents: Sequence[str]) -> list[tuple[int, int]]:
    """Where each content (in order) lies in the rendered ``text``; a content the template changed (trimmed)
    is looked up without its surrounding whitespace."""
    spans, cursor = [], 0
    for c in contents:
        if not c:
            continue
        for probe in (c, c.strip()):
            at = text.find(probe, cursor) if probe else -1
            if at >= 0:
                spans.append((at, at + len(probe)))
                cursor = at + len(probe)
                break
        else:
            raise ValueError("the chat template renders a message content in a form pact cannot find in its output; "
                             "cannot tell the template's special tokens from the content's")
    return spans


def encode_spans(tokenizer, text: str, spans: Sequence[tuple[int, int]]) -> list[int]:
    """Ids of ``text`` (a chat-template rendering) where the special-token strings inside ``spans`` (the
    message contents, in order, from :func:`chat_spans`) are encoded as text and the template's own as
    special tokens. Without spans: the tokenizer's own ids of ``text``."""
    specials = special_strings(tokenizer)
    if not any(sp in text[a:b] for a, b in spans for sp in specials):
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids: list[int] = []

    def flush(piece: str) -> None:
        if piece:
            ids.extend(tokenizer(piece, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    start = i = 0
    span_iter = iter(sorted(spans))
    span = next(span_iter, None)
    while i < len(text):
        if span is not None and i >= span[0]:
            i = max(i, span[1])  # inside a content: its text stays text
            span = next(span_iter, None)
            continue
        limit = span[0] if span is not None else len(text)
        hit = next((sp for sp in specials if text.startswith(sp, i) and i + len(sp) <= limit), None)
        if hit is None:
            i += 1
            continue
        flush(text[start:i])
        ids.append(tokenizer.convert_tokens_to_ids(hit))
        i = start = i + len(hit)
    flush(text[start:])
    return ids


def encode_chat(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    """Ids of the template's rendering of ``messages``, their contents encoded as text (module doc)."""
    text, spans = chat_spans(tokenizer, messages, add_generation_prompt)
    return encode_spans(tokenizer, text, spans)
