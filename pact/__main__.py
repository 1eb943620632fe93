"""``python -m pact ...`` is the ``pact`` console script."""
import sys

from .cli import main

sys.exit(main())
