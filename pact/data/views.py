"""The two views of a training sample (SPEC §4) and their row alignment.

Full view: the chat template over (user = prompt, assistant = response), with
labels on the response tokens only (the end-of-turn token included). No-prompt
view: the assistant header exactly as ``add_generation_prompt=True`` renders
it, then the *same response token ids*. Row k of the answer in either view
predicts the same token, so the rows of the two views align by order.

The messages' text is encoded as text: a special token's string inside a
prompt or answer never becomes a control token (:mod:`pact.data.chat`). An
answer cut to fit ``max_length`` says so (``TwoViews.cut_tokens``), so a
caller can count and report the cut answers.
"""
from __future__ import annotations

from dataclasses import dataclass

from .chat import chat_spans, encode_spans

IGNORE_INDEX = -100


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot give the two views."""


@dataclass(frozen=True)
class TwoViews:
    """Token ids of one sample in both views.

    Attributes:
        full_ids: prompt ids (template with generation prompt) + response ids.
        post_ids: assistant-header ids (+ BOS if asked) + the same response ids.
        num_answer: number of response tokens (the labelled tokens of both views).
        harmful: whether the sample is a harmful (attack) sample.
        cut_tokens: answer tokens (end-of-turn included) cut off to fit
            ``max_length`` (0: the whole answer is there).
    """

    full_ids: tuple[int, ...]
    post_ids: tuple[int, ...]
    num_answer: int
    harmful: bool = False
    cut_tokens: int = 0

    @property
    def full_prompt_len(self) -> int:
        return len(self.full_ids) - self.num_answer

    @property
    def post_prompt_len(self) -> int:
        return len(self.post_ids) - self.num_answer


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_header(tokenizer) -> str:
    """The text ``add_generation_prompt=True`` appends after a user turn.

    Raises ChatTemplateError when the tokenizer has no chat template or the
    header renders empty (SPEC §4: an error, not a silent fallback).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            "the tokenizer has no chat_template; PACT's views need one (set tokenizer.chat_template, "
            "or train from the instruct model whose template you want)"
        )
    probe = [{"role": "user", "content": "x"}]
    without = _render(tokenizer, probe, add_generation_prompt=False)
    with_header = _render(tokenizer, probe, add_generation_prompt=True)
    if not with_header.startswith(without) or len(with_header) == len(without):
        raise ChatTemplateError(
            "the chat template renders no assistant header for add_generation_prompt=True; "
            "the no-prompt view needs one (SPEC §4)"
        )
    return with_header[len(without):]


class ViewBuilder:
    """Tokenises (prompt, response) pairs into :class:`TwoViews`.

    Args:
        tokenizer: a ``transformers`` tokenizer with a chat template.
        max_length: longest full view in tokens; longer responses are cut, the
            same way in both views.
        post_bos: put the tokenizer's BOS token before the no-prompt view's
            header (off by default, as in the authors' code).
        system_prompt: optional system turn of the full view (None: whatever
            the template adds by itself).
    """

    def __init__(self, tokenizer, max_length: int = 512, post_bos: bool = False, system_prompt: str | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.system_prompt = system_prompt
        header_ids = encode_spans(tokenizer, assistant_header(tokenizer), [])
        if post_bos:
            if tokenizer.bos_token_id is None:
                raise ChatTemplateError("post_bos=True but the tokenizer has no BOS token")
            header_ids = [tokenizer.bos_token_id] + header_ids
        self.header_ids = tuple(header_ids)

    def _messages(self, prompt, response: str | None = None):
        if isinstance(prompt, str):
            messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
            messages.append({"role": "user", "content": prompt})
        else:  # the conversation before the answer, as chat messages (TRL's conversational formats)
            messages = [dict(m) for m in prompt]
        if response is not None:
            messages.append({"role": "assistant", "content": response})
        return messages

    def build(self, prompt, response: str, harmful: bool = False) -> TwoViews | None:
        """Both views of one sample, or None when the prompt leaves no room for an answer token.

        ``prompt``: the user turn (a string), or the conversation before the
        answer as a list of ``{"role", "content"}`` messages (then
        ``system_prompt`` is not added); ``response``: the assistant's answer.
        """
        tok = self.tokenizer
        prompt_text, prompt_spans = chat_spans(tok, self._messages(prompt), add_generation_prompt=True)
        full_text, full_spans = chat_spans(tok, self._messages(prompt, response), add_generation_prompt=False)
        if not full_text.startswith(prompt_text):
            raise ChatTemplateError(
                "the chat template renders the conversation with a different prefix than the generation prompt; "
                "cannot tell the response tokens apart"
            )
        # The response part as the template renders it (content + end-of-turn
        # marker), without trailing whitespace after the marker.
        start = len(prompt_text)
        response_text = full_text[start:].rstrip()
        response_spans = [(max(a, start) - start, min(b, start + len(response_text)) - start)
                          for a, b in full_spans if b > start]
        prompt_ids = encode_spans(tok, prompt_text, prompt_spans)
        response_ids = encode_spans(tok, response_text, response_spans)
        room = self.max_length - len(prompt_ids)
        if room < 1 or not response_ids:
            return None
        cut = max(0, len(response_ids) - room)
        response_ids = response_ids[:room]
        return TwoViews(
            full_ids=tuple(prompt_ids) + tuple(response_ids),
            post_ids=self.header_ids + tuple(response_ids),
            num_answer=len(response_ids),
            harmful=harmful,
            cut_tokens=cut,
        )
