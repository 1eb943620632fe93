"""Compile the triton kernels for a GPU target without a GPU, and report registers and spills.

    python -m checks.compile_check [--arch 90] [--vocab 152064] [--block-v N --num-warps W]

Uses triton's own compiler and bundled ptxas and cuobjdump (no device
needed), so a machine without a GPU still catches what the CPU interpreter
cannot: code that does not compile for CUDA, and register spills at the launch
configuration :mod:`pact_kernels.backends.triton_launch` picks. Prints one JSON line
per kernel specialisation: registers, stack bytes, and the local-memory loads
and stores (spill traffic) inside loops, found in the SASS between a backward
branch and its target. Exits 1 when a sweep loop spills (a few values parked
on the stack around a loop cost nothing per column and are only reported).
Must run without ``TRITON_INTERPRET`` (the interpreter replaces the compiler).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# Row layouts a specialisation is compiled for: rows aligned to 16 elements (V = 32000, 128256, 152064),
# unaligned (V = 50257), unaligned with column-strided logits (a transposed view: stride_z_col not 1).
ROWS = (("aligned", True, False), ("unaligned", False, False))
ALL_ROWS = ROWS + (("unaligned strided", False, True),)

SPECIALISATIONS = [
    # (kernel, dtype, constexprs besides BLOCK_V, row layouts)
    ("safety_set", "bf16", dict(RF_GATHER=False, RP_GATHER=False, USE_GATE=True, USE_DECAY=True, K_PAD=64), ROWS),
    # 512 < K <= 1024 (K_PAD 1024), 16-bit logits: the most registers held across the sweeps
    ("safety_set", "bf16", dict(RF_GATHER=False, RP_GATHER=False, USE_GATE=True, USE_DECAY=True, K_PAD=1024),
     ALL_ROWS),
    ("safety_set", "fp16", dict(RF_GATHER=True, RP_GATHER=True, USE_GATE=True, USE_DECAY=True, K_PAD=1024),
     ALL_ROWS),
    ("safety_set", "fp32", dict(RF_GATHER=True, RP_GATHER=True, USE_GATE=True, USE_DECAY=True, K_PAD=64), ROWS),
    ("safety_set", "fp16", dict(RF_GATHER=False, RP_GATHER=True, USE_GATE=True, USE_DECAY=False, K_PAD=2), ROWS),
    ("safety_set", "bf16", dict(RF_GATHER=False, RP_GATHER=False, USE_GATE=False, USE_DECAY=False, K_PAD=2), ROWS),
    ("full_vocab", "bf16", dict(UNIT_TEMPERATURE=False), ROWS),
    ("full_vocab", "fp32", dict(UNIT_TEMPERATURE=True), ROWS),
    ("cross_entropy", "bf16", {}, ALL_ROWS),
    ("cross_entropy", "fp16", {}, ROWS),
]


# What a launch on contiguous tensors specialises, as triton's launcher does:
# unit column strides become constants, pointers and row strides are 16-aligned.
# Column-strided logits (a transposed view) leave stride_z_col a runtime value.
UNIT_ARGS = ("stride_z_col", "stride_g_col", "stride_rf_col", "stride_rp_col", "stride_r_col")
ALIGNED_ARGS = ("stride_z_row", "stride_g_row", "stride_r_row", "V")


def signature(fn, dtype: str, unit_args=UNIT_ARGS, grad_dtype: str | None = None) -> dict:
    """Triton type strings for every argument of ``fn`` (logits and references in ``dtype``, the gradient in
    ``grad_dtype``, default ``dtype``); ``unit_args``: the column strides specialised to 1."""
    types = {}
    for name in fn.arg_names:
        if name in unit_args:
            types[name] = "constexpr"
        elif name == "g_ptr":
            types[name] = f"*{grad_dtype or dtype}"
        elif name in ("z_ptr", "rf_ptr", "rp_ptr", "r_ptr"):
            types[name] = f"*{dtype}"
        elif name in ("labels_ptr", "ids_ptr", "pos_ptr"):
            types[name] = "*i64"
        elif name.endswith("_ptr"):
            types[name] = "*fp32"
        elif name.startswith("stride"):
            types[name] = "i64"
        elif name in ("V", "K", "ignore_index"):
            types[name] = "i32"
        elif name.isupper():
            types[name] = "constexpr"
        else:
            types[name] = "fp32"
    return types


def _cuobjdump(cubin: bytes, flag: str) -> str:
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(cuobjdump), flag, f.name], capture_output=True, text=True, check=True).stdout


def spills_in_loops(sass: str) -> int:
    """Local-memory loads/stores (LDL/STL) whose address lies inside a loop (a backward branch's span)."""
    instructions = []  # (address, text)
    for line in sass.splitlines():
        match = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*)", line)
        if match:
            instructions.append((int(match.group(1), 16), match.group(2)))
    loops = []
    for address, text in instructions:
        branch = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if branch and int(branch.group(1), 16) < address:
            loops.append((int(branch.group(1), 16), address))
    return sum(
        1 for address, text in instructions
        if re.search(r"\b(LDL|STL)\b", text) and any(start <= address <= end for start, end in loops)
    )


def resource_usage(cubin: bytes) -> dict:
    """Registers and stack bytes per thread of a cubin, and its spill instructions inside loops."""
    text = _cuobjdump(cubin, "-res-usage")
    match = re.search(r"REG:(\d+).*?STACK:(\d+)", text)
    return {"registers": int(match.group(1)), "stack_bytes": int(match.group(2)),
            "spills_in_loops": spills_in_loops(_cuobjdump(cubin, "-sass"))}


def compile_one(kernel: str, dtype: str, constexprs: dict, vocab: int, arch: int, block_v: int | None,
                num_warps: int | None, aligned_rows: bool = True, strided_logits: bool = False) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from pact_kernels.backends import triton_kernels
    from pact_kernels.backends import triton_launch as triton_backend

    fn = {"safety_set": triton_kernels.pact_safety_set_kernel, "full_vocab": triton_kernels.pact_full_vocab_kernel,
          "cross_entropy": triton_kernels.cross_entropy_kernel}[kernel]
    default_block, default_warps = triton_backend.launch_config(vocab, two_streams=kernel == "full_vocab",
                                                                k_pad=constexprs.get("K_PAD", 2))
    block, warps = block_v or default_block, num_warps or default_warps
    unit_args = tuple(name for name in UNIT_ARGS if not (strided_logits and name == "stride_z_col"))
    grad_dtype = triton_backend_grad_dtype(dtype)
    consts = dict(constexprs, BLOCK_V=block, **{name: 1 for name in unit_args if name in fn.arg_names})
    # Rows start 16-aligned when V is a multiple of 16 (32000, 128256, 152064), not for V = 50257.
    aligned = [i for i, name in enumerate(fn.arg_names)
               if name.endswith("_ptr") or (aligned_rows and name in ALIGNED_ARGS)]
    src = ASTSource(fn=fn, signature=signature(fn, dtype, unit_args, grad_dtype),
                    constexprs={(fn.arg_names.index(name),): value for name, value in consts.items()},
                    attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
    return dict(kernel=kernel, dtype=dtype, grad_dtype=grad_dtype, arch=arch, block_v=block, num_warps=warps,
                aligned_rows=aligned_rows, strided_logits=strided_logits,
                **{k: v for k, v in constexprs.items()}, **resource_usage(compiled.asm["cubin"]))


def triton_backend_grad_dtype(dtype: str) -> str:
    """The gradient buffer's triton dtype for logits of ``dtype`` (pact_kernels.precision.held_gradient_dtype)."""
    import torch

    from pact_kernels.precision import held_gradient_dtype

    names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    held = held_gradient_dtype(names[dtype])
    return next(name for name, t in names.items() if t == held)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100/H200")
    parser.add_argument("--vocab", type=int, default=152064)
    parser.add_argument("--block-v", type=int)
    parser.add_argument("--num-warps", type=int)
    parser.add_argument("--only", choices=["safety_set", "full_vocab", "cross_entropy"])
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_check: unset TRITON_INTERPRET (the interpreter replaces the compiler)", file=sys.stderr)
        return 2
    spilled = 0
    for kernel, dtype, constexprs, layouts in SPECIALISATIONS:
        if args.only and kernel != args.only:
            continue
        for _, aligned_rows, strided_logits in layouts:
            record = compile_one(kernel, dtype, constexprs, args.vocab, args.arch, args.block_v, args.num_warps,
                                 aligned_rows, strided_logits)
            spilled += record["spills_in_loops"] > 0
            print(json.dumps(record), flush=True)
    return 1 if spilled else 0


if __name__ == "__main__":
    sys.exit(main())
