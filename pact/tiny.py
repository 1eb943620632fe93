"""A tiny byte-level chat model for offline smoke runs and tests: ``python -m pact.tiny OUT_DIR``.

The tokenizer has one token per byte (so any text tokenises) plus ChatML-like
specials and a chat template; the model is a 2-layer Llama of width 32 with
random weights. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    """A byte-level ``PreTrainedTokenizerFast`` (259 tokens) with a ChatML-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS + alphabet)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2, tie: bool = False):
    """A random ``LlamaForCausalLM`` over the tokenizer's vocabulary (float32, train mode); ``tie``: the output
    head shares the input embedding (as SmolLM2, Gemma, Llama-3.2-1B)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=tie,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    return LlamaForCausalLM(config)


def save_tiny(out_dir: str | Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """Write the tiny model and its tokenizer to ``out_dir`` (``save_pretrained`` layout)."""
    out = Path(out_dir)
    tok = tiny_tokenizer()
    tiny_model(tok, seed, hidden, layers).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    print(save_tiny(args.out_dir, args.seed, args.hidden, args.layers))


if __name__ == "__main__":
    main()
