"""pact: safety-preserving fine-tuning (PACT) built on :mod:`pact_kernels`.

Identification of safety tokens, training, evaluation and reporting live in
this package; the loss itself is :func:`pact_kernels.pact_loss`.
"""
__version__ = "0.1.0"
