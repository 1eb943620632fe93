"""Correctness checks that need a GPU or a GPU compiler: every backend against the float64 oracle on the device
(:mod:`.gpu_correctness`, :mod:`.gpu_fused_linear`), mixed precision where users run it
(:mod:`.gpu_mixed_precision`), the triton kernels compiled for sm_90 (:mod:`.compile_check`); ``gpu_check.sh`` runs
them with the benchmarks of ``benchmarks/`` on a lent GPU."""
