"""Named keyword sets of :func:`pact.identify.identify` (no torch import: the CLI reads them at parse time).

``authors``: ``compute_safety_tokens/compute_safety_tokens_pact.py`` of the authors'
code (``Glresearch1/PACT``), run as their README does (``--K 512 --max_resp_len 64
--topk 50 --use_bfloat16 True``):

- the first 512 given (prompt, response) pairs (their file's columns ``input``/``output``);
- whitespace stripped around prompts and answers;
- answers tokenised without special tokens and with no end-of-sequence token,
  capped at 64 tokens (an answer that is empty after stripping is skipped);
- the aligned model sees its chat template; the base model sees
  ``User: {prompt}\\n\\nAssistant: `` tokenised without special tokens (no BOS);
- ``d`` and ``p̄_safe`` averaged per prompt, then over prompts;
- S = the top 50 by ``p̄_safe`` less the tokens with ``d = 0``; the ``d`` values with
  ``|d| > 1e-9`` standardised over themselves (``/ (std + 1e-6)``), the others left as
  they are; the vector L2-normalised (``/ (norm + 1e-6)``) and rounded to bfloat16 (their
  saved ``v_dir``, whose nonzero entries are S); weights clipped at 0 (their training loop).
"""
from __future__ import annotations

from typing import Any

__all__ = ["IDENTIFY_PRESETS", "PRESET_COLUMNS", "WEIGHT_DTYPE_NAMES"]

#: dtypes the weights may be rounded through (``float64``: no rounding).
WEIGHT_DTYPE_NAMES = ("float64", "float32", "bfloat16", "float16")

IDENTIFY_PRESETS: dict[str, dict[str, Any]] = {
    "authors": dict(k=50, selection="authors", responses="given", append_eos=False, base_format="plain",
                    base_bos=False, strip=True, max_resp_len=64, average="prompt", std_min_abs_d=1e-9,
                    norm_eps=1e-6, weights_dtype="bfloat16", limit=512),
}

#: The columns of each preset's (prompt, response) file, for ``pact identify --responses FILE``.
PRESET_COLUMNS: dict[str, dict[str, str]] = {"authors": {"prompt_column": "input", "response_column": "output"}}
