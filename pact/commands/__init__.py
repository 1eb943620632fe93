"""Subcommands of the ``pact`` CLI; each module has ``register(subparsers)`` and ``run(args)``."""
