#!/usr/bin/env bash
# The GPU session's one command, kept at this path: runs checks/gpu_check.sh (the oracle checks on the
# device, then the speed and memory benchmarks of this folder), with the same arguments and $OUT.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh          # on the GPU machine, from the repo root
#   OUT=/tmp/dry bash benchmarks/gpu_check.sh --dry      # CPU smoke run of the same steps (interpreted kernels)
exec bash "$(dirname "$0")/../checks/gpu_check.sh" "$@"
