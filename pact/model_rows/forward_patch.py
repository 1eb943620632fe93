"""The :class:`~pact.model_rows.RowModel` forward behind keyword arguments of a causal LM's own forward, the way
TRL adds its fused head (``PACTTrainer`` calls the model the Trainer wraps)."""
from __future__ import annotations

import functools
import types

from .row_model import RowModel


def patch_row_forward(causal_lm, owner=None) -> RowModel:
    """Give ``causal_lm`` the :class:`RowModel` forward behind keyword arguments.

    ``model(input_ids=..., attention_mask=..., pact_rows=rows, pact_mode=mode)``
    then returns :meth:`RowModel.forward`'s output (``pact_labels``: its
    ``labels``); without ``pact_mode`` the forward is the original one
    (generation is unchanged). The call enters the outermost wrapper
    (DeepSpeed engine, DDP, peft), so ZeRO-3 gathers parameters as for any
    forward. ``owner``: the peft model around ``causal_lm`` (its adapter is
    disabled for the reference modes), or None.

    Returns the :class:`RowModel` the forward delegates to (call
    :meth:`RowModel.set_safety_ids` on it).
    """
    original = causal_lm.forward
    holder = {"rows": RowModel(owner if owner is not None else causal_lm)}  # kept out of the module tree

    @functools.wraps(type(causal_lm).forward)
    def forward(self, *args, pact_rows=None, pact_mode=None, pact_labels=None, **kwargs):
        if pact_mode is None:
            return original(*args, **kwargs)
        return holder["rows"](kwargs["input_ids"], kwargs["attention_mask"], pact_rows, pact_mode, pact_labels)

    causal_lm.forward = types.MethodType(forward, causal_lm)
    causal_lm._pact_rows = holder
    return holder["rows"]
