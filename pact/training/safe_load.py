"""Reading checkpoint files without running code from them.

A pickle may name any Python callable to rebuild its objects, so reading a
crafted file with ``torch.load(weights_only=False)`` runs whatever it names.
Every ``.pt`` file a resume reads goes through :func:`safe_torch_load`:
``torch.load(weights_only=True)``, which rebuilds tensors and plain data
(dict, list, tuple, str, numbers, None) and refuses any other global. Besides
those it allows only the few data classes DeepSpeed writes into its own
checkpoint files (:data:`DEEPSPEED_CHECKPOINT_CLASSES`: an int enum, a loss
scaler, a fragment address); rebuilding one sets its attributes and calls no
function the file chooses.

DeepSpeed reads its files through its checkpoint engine
(``torch.load(..., weights_only=False)`` in 0.19); :func:`safe_deepspeed_loading`
puts :class:`SafeCheckpointEngine` in its place for the duration of a load and
forces ``weights_only`` on any other ``torch.load`` DeepSpeed makes meanwhile
(:func:`weights_only_loading`, also around ``PACTTrainer``'s resume, where
``transformers`` calls DeepSpeed's loader itself). A refused file raises
:class:`UnsafeCheckpointError` naming it.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
from pathlib import Path

import torch

__all__ = ["DEEPSPEED_CHECKPOINT_CLASSES", "SafeCheckpointEngine", "UnsafeCheckpointError",
           "safe_deepspeed_loading", "safe_torch_load", "weights_only_loading"]


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file holds objects that only code could rebuild; it was not read."""


def _deepspeed_classes() -> list[type]:
    """DeepSpeed's own data classes found in its checkpoint files (ZeRO optimizer states), where importable."""
    found = []
    for module, name in (("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                         ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                         ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
                         ("deepspeed.utils.tensor_fragment", "fragment_address")):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return found


#: Classes (besides tensors and plain data) a DeepSpeed checkpoint file may hold; filled on first use.
DEEPSPEED_CHECKPOINT_CLASSES: list[type] = []


def _allowed() -> list[type]:
    if not DEEPSPEED_CHECKPOINT_CLASSES:
        DEEPSPEED_CHECKPOINT_CLASSES.extend(_deepspeed_classes())
    return DEEPSPEED_CHECKPOINT_CLASSES


def _refusal(path, err: Exception) -> UnsafeCheckpointError:
    text = str(err)
    named = re.search(r"GLOBAL ([\w.]+)", text)
    detail = re.search(r"WeightsUnpickler error: ([^.\n]*)", text)
    what = (f"it names {named.group(1)}" if named else detail.group(1) if detail
            else (text.strip().splitlines() or [type(err).__name__])[0][:200])
    return UnsafeCheckpointError(
        f"{path} holds a Python object that is not a tensor or plain data ({what}); refusing to read it: a checkpoint "
        "is never read as code. Resume only from checkpoints this code wrote; move this one away to resume from an "
        "older one, or start anew")


def safe_torch_load(path, map_location=None, extra_classes=()):
    """``torch.load(path, weights_only=True)`` allowing DeepSpeed's checkpoint classes (and ``extra_classes``).

    Raises :class:`UnsafeCheckpointError` naming ``path`` for a file that holds anything else.
    """
    with torch.serialization.safe_globals(_allowed() + list(extra_classes)):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            raise _refusal(path, e) from None


class SafeCheckpointEngine:
    """A DeepSpeed checkpoint engine whose ``load`` is :func:`safe_torch_load`; everything else is ``inner``'s."""

    def __init__(self, inner):
        self.inner = inner

    def load(self, path: str, map_location=None):
        return safe_torch_load(path, map_location=map_location)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@contextlib.contextmanager
def weights_only_loading(source):
    """Context in which every ``torch.load`` reads with ``weights_only=True``, even one that asks otherwise
    (DeepSpeed's; PyTorch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), DeepSpeed's checkpoint classes allowed.

    A refused file raises :class:`UnsafeCheckpointError` naming ``source`` (the checkpoint being read).
    """
    saved_env = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        with torch.serialization.safe_globals(_allowed()):
            yield
    except pickle.UnpicklingError as e:
        raise _refusal(Path(source), e) from None
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def safe_deepspeed_loading(engine, checkpoint_dir):
    """Context in which ``engine.load_checkpoint`` reads every file with ``weights_only=True``.

    ``engine.checkpoint_engine`` is wrapped in :class:`SafeCheckpointEngine`
    (a refusal names the file); any other ``torch.load`` inside goes through
    :func:`weights_only_loading` (a refusal names ``checkpoint_dir``).
    Restores both on exit.
    """
    saved_engine = engine.checkpoint_engine
    engine.checkpoint_engine = SafeCheckpointEngine(saved_engine)
    try:
        with weights_only_loading(checkpoint_dir):
            yield
    finally:
        engine.checkpoint_engine = saved_engine
