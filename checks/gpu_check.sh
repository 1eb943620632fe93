#!/usr/bin/env bash
# One script for a lent GPU: checks every backend and variant against the float64
# oracle on the GPU (this folder), then runs the speed and memory benchmarks
# (benchmarks/); logs and tables go to $OUT. benchmarks/gpu_check.sh calls this script.
# Installs nothing from the network. Budget: the stage timeouts add up to 540 s
# (80 + 50 + 60 + 125 + 25 + 45 + 55 + 45 + 55), so the whole script fits one 600 s command of the lent GPU (each
# stage has its own timeout so the benchmark, the fused linear head and the mixed-precision runs get their turn).
#
#   OUT=/some/dir bash checks/gpu_check.sh          # on the GPU machine (or bash benchmarks/gpu_check.sh)
#   OUT=/tmp/dry bash checks/gpu_check.sh --dry      # CPU smoke run of the same steps (interpreted kernels)
#
# Liger-Kernel's cross-entropy line needs liger_kernel importable; the GPU image
# lacks it and cannot download it, so carry its wheel: here,
#   pip download liger-kernel --no-deps -d .wheels      (and add .wheels to the run's carry list)
# and this script installs it from .wheels (or $LIGER_WHEELS) into a temporary folder, offline.
# DeepSpeed (stage 7, the driver with DeepSpeed bf16) is carried the same way, built into a wheel here with the
# pure-Python packages it needs that the GPU image may lack:
#   pip wheel deepspeed==0.19.8 hjson py-cpuinfo msgpack einops ninja --no-deps -w .wheels
# (without them stage 7 prints that DeepSpeed is not importable and is skipped).
#
# The cuda backend (csrc/) is built first, in place (setup.py build_ext --inplace,
# PACT_BUILD_CUDA=1, TORCH_CUDA_ARCH_LIST=9.0); if it fails, its cases are skipped
# with a line saying so and everything else runs.
#
# Files in $OUT: gpu_check.log (everything printed, versions first), build_cuda.log,
# pytest_triton.log, correctness.json, gpu_bench.md, gpu_bench.json, gpu_bench.raw.json, tune.json,
# fused_linear_correctness.json, gpu_fused_linear.md, gpu_fused_linear.json (the fused linear head),
# mixed_precision.log (stages 6-7).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
# The repo's own venv where there is one (a developer machine); the GPU image's python3 otherwise.
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DRY=0
[ "${1:-}" = "--dry" ] && DRY=1
LOG="$OUT/gpu_check.log"
: >"$LOG"
say() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
status=0

say "environment"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
} 2>&1 | tee -a "$LOG"

WHEELS=${LIGER_WHEELS:-.wheels}
if [ "$DRY" = 0 ] && ls "$WHEELS"/liger_kernel-*.whl >/dev/null 2>&1; then
  say "installing liger_kernel offline from $WHEELS"
  LIGER_DIR=$(mktemp -d)
  "$PY" -m pip install --quiet --no-index --no-deps --target "$LIGER_DIR" "$WHEELS"/liger_kernel-*.whl 2>&1 | tee -a "$LOG" \
    && export PYTHONPATH="$PYTHONPATH:$LIGER_DIR"
fi
"$PY" -c "import liger_kernel" >/dev/null 2>&1 && say "liger_kernel importable" || say "liger_kernel not importable: no Liger line"
if [ "$DRY" = 0 ] && ! "$PY" -c "import deepspeed" >/dev/null 2>&1 && ls "$WHEELS"/deepspeed-*.whl >/dev/null 2>&1; then
  say "installing deepspeed offline from $WHEELS"
  DS_DIR=$(mktemp -d)
  DS_WHEELS=$(ls "$WHEELS"/{deepspeed,hjson,py_cpuinfo,msgpack,einops,ninja}-*.whl 2>/dev/null)
  "$PY" -m pip install --quiet --no-index --no-deps --target "$DS_DIR" $DS_WHEELS 2>&1 | tee -a "$LOG" \
    && export PYTHONPATH="$PYTHONPATH:$DS_DIR"
fi

if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1 PACT_TEST_DEVICE=cpu
  DEVICE=cpu
  SMALL=--small
else
  unset TRITON_INTERPRET
  export PACT_TEST_DEVICE=cuda
  DEVICE=cuda
  SMALL=
fi

say "0/4 build the cuda backend (csrc/ -> pact_kernels._cuda), offline, sm_90 only"
if [ "$DRY" = 1 ]; then
  say "dry run: cuda backend not built (it needs a CUDA build of torch and nvcc)"
else
  # In place, no network, no build isolation; ninja when present, else setuptools' serial compile.
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-8} PACT_BUILD_CUDA=1 \
    timeout 80 "$PY" setup.py build_ext --inplace >"$OUT/build_cuda.log" 2>&1
  rc=$?; [ $rc = 0 ] || say "cuda backend build failed or timed out (exit $rc; see build_cuda.log; its cases are skipped)"
  tail -n 3 "$OUT/build_cuda.log" | tee -a "$LOG"
fi
"$PY" -c "from pact_kernels.backends import cuda_extension as c; print('cuda backend built:', c.is_built())" 2>&1 | tee -a "$LOG"

say "1/4 triton test file on $DEVICE (the CPU suite's oracle checks)"
timeout 50 "$PY" -m pytest tests/kernels/test_triton_backend.py -q -p no:cacheprovider >"$OUT/pytest_triton.log" 2>&1
rc=$?; [ $rc = 0 ] || { status=1; say "pytest failed or timed out (exit $rc)"; }
tail -n 5 "$OUT/pytest_triton.log" | tee -a "$LOG"

say "2/4 every backend x variant x dtype x reference width vs the float64 oracle, then 64-bit offsets"
timeout 60 "$PY" -m checks.gpu_correctness --device "$DEVICE" $SMALL -o "$OUT/correctness.json" >>"$LOG" 2>&1
rc=$?; [ $rc = 0 ] || { status=1; say "correctness failed or timed out (exit $rc)"; }
grep -E "^FAIL|gpu_correctness:" "$LOG" | tail -n 20

say "3/4 benchmark"
timeout 125 "$PY" -m benchmarks.run_gpu_bench --device "$DEVICE" -o "$OUT/gpu_bench" >>"$LOG" 2>&1
rc=$?; [ $rc = 0 ] || { status=1; say "benchmark failed or timed out (exit $rc)"; }
[ -f "$OUT/gpu_bench.md" ] && cat "$OUT/gpu_bench.md"

say "4/4 launch settings of the triton kernels (block columns x warps)"
if [ "$DRY" = 1 ]; then
  "$PY" -c "import benchmarks.tune_triton" 2>&1 | tee -a "$LOG" || status=1
else
  timeout 25 "$PY" -m benchmarks.tune_triton -o "$OUT/tune.json" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}; [ $rc = 0 ] || say "tuning failed or timed out (exit $rc; the benchmark above stands)"
fi

say "5/5 fused linear head: correctness vs the float64 oracle, then rows 16384, H 4096, V 152064, bf16 next to Liger's FLCE"
timeout 45 "$PY" -m checks.gpu_fused_linear --device "$DEVICE" $SMALL -o "$OUT/fused_linear_correctness.json" >>"$LOG" 2>&1
rc=$?; [ $rc = 0 ] || { status=1; say "fused linear check failed or timed out (exit $rc)"; }
grep -E "^FAIL" "$LOG" | tail -n 10
timeout 55 "$PY" -m benchmarks.gpu_fused_linear --device "$DEVICE" $SMALL -o "$OUT/gpu_fused_linear" >>"$LOG" 2>&1
rc=$?; [ $rc = 0 ] || { status=1; say "fused linear benchmark failed or timed out (exit $rc)"; }
[ -f "$OUT/gpu_fused_linear.md" ] && cat "$OUT/gpu_fused_linear.md"

CPUFLAG=
[ "$DRY" = 1 ] && CPUFLAG=--cpu
say "6/7 the README's TRL example as a TRL user runs it (bf16=True), against bf16=False"
timeout 45 "$PY" -m checks.gpu_mixed_precision trl $CPUFLAG >"$OUT/mixed_precision.log" 2>&1
rc=$?; [ $rc = 0 ] || { status=1; say "TRL bf16 example failed or timed out (exit $rc)"; }
grep -E "^FAIL|^trl|bf16=" "$OUT/mixed_precision.log" | tee -a "$LOG"

say "7/7 the driver under the deepspeed launcher with DeepSpeed bf16 (dtype=bfloat16), against float32"
timeout 55 "$PY" -m checks.gpu_mixed_precision driver $CPUFLAG >>"$OUT/mixed_precision.log" 2>&1
rc=$?; [ $rc = 0 ] || { status=1; say "driver bf16 run failed or timed out (exit $rc)"; }
grep -E "^FAIL|^driver|dtype=" "$OUT/mixed_precision.log" | tee -a "$LOG"

say "done (exit $status)"
exit $status
