"""Typed values in data files (booleans) and the tokenizer's content digest."""
from __future__ import annotations

import pytest

from pact.data import PromptSourceError
from pact.data.values import parse_bool


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), (1, True), (0, False), ("true", True), ("false", False), (" False ", False),
    ("TRUE", True), ("1", True), ("0", False), (1.0, True), (0.0, False),
])
def test_parse_bool_accepts_booleans_01_and_true_false(value, expected):
    assert parse_bool(value, "f.csv row 3 column harmful") is expected


@pytest.mark.parametrize("value", ["yes", "no", "", "t", 2, -1, 0.5, None, [], "falsey"])
def test_parse_bool_refuses_anything_else_naming_where(value):
    with pytest.raises(PromptSourceError, match=r"^f\.csv row 3 column harmful: .* is not a boolean; use true/false"):
        parse_bool(value, "f.csv row 3 column harmful")


def test_parse_bool_numpy_scalars():
    np = pytest.importorskip("numpy")
    assert parse_bool(np.bool_(False), "x") is False and parse_bool(np.int64(1), "x") is True
    with pytest.raises(PromptSourceError):
        parse_bool(np.int64(2), "x")


def test_tokenizer_digest_is_content_not_size():
    from pact.fingerprint import tokenizer_digest
    from pact.tiny import tiny_tokenizer

    a, b = tiny_tokenizer(), tiny_tokenizer()
    assert tokenizer_digest(a) == tokenizer_digest(b)
    assert len(tokenizer_digest(a)) == 64
    # same vocabulary size, two ids swapped: another tokenizer
    from tokenizers import Tokenizer

    state = a.backend_tokenizer.to_str()
    import json

    d = json.loads(state)
    vocab = d["model"]["vocab"]
    x, y = "a", "b"
    vocab[x], vocab[y] = vocab[y], vocab[x]
    from transformers import PreTrainedTokenizerFast

    c = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(d)),
                                **{k: v for k, v in a.special_tokens_map.items() if k != "additional_special_tokens"})
    assert len(c.get_vocab()) == len(a.get_vocab())
    assert tokenizer_digest(c) != tokenizer_digest(a)
    # a chat template is not part of the ids' digest
    a.chat_template = "{{ messages }}"
    assert tokenizer_digest(a) == tokenizer_digest(b)
