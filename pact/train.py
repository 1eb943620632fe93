"""PACT fine-tuning: ``deepspeed pact/train.py --config CONFIG.yaml [key=value ...] [--resume]``.

Also ``pact train ...`` (one process) and ``python pact/train.py ...``; ``--help`` lists every config
key. The run itself is :func:`pact.training.loop.train`; the command line :mod:`pact.training.entry`.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # run as a script: keep pact/ itself off the import path
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from pact.training.entry import main, parse_args  # noqa: E402,F401
from pact.training.loop import train  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
