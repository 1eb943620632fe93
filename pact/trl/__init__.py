"""PACT inside TRL: ``PACTTrainer`` (an ``SFTTrainer``) and ``PACTTrainerConfig`` (an ``SFTConfig``).

Needs the ``trl`` extra (``pip install "pact[trl]"``). Switch ``SFTTrainer``
to ``PACTTrainer`` and add ``safety_tokens`` to the config; the datasets,
``peft_config``, ``accelerate launch`` and DeepSpeed stay as they are.

The safety tokens come from ``pact identify`` or from Python
(:func:`pact.identify.identify`, the aligned model against its base)::

    from pact.data import get_source
    from pact.models import load_model_and_tokenizer
    from pact.identify import identify

    safe, tok = load_model_and_tokenizer("Qwen/Qwen2.5-7B-Instruct", dtype="bfloat16", device="cuda")
    base, _ = load_model_and_tokenizer("Qwen/Qwen2.5-7B", dtype="bfloat16", device="cuda")
    identify(safe, base, tok, get_source("advbench"), k=50).tokens.save("tokens.json")
"""
from .config import PACTTrainerConfig
from .trainer import PACTTrainer

__all__ = ["PACTTrainer", "PACTTrainerConfig"]
