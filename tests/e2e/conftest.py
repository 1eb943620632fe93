"""Every test under tests/e2e/ is an end-to-end run (real models, DeepSpeed launches, full training runs): marked
``slow``, so ``-m "not slow"`` leaves the whole folder out."""
from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m deselects by mark
def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)
