"""Run the GPU benchmark (test_bench_gpu.py) and write its JSON and markdown table.

    python -m benchmarks.run_gpu_bench -o benchmarks/results/gpu            # CUDA, the full grid
    python -m benchmarks.run_gpu_bench --device cpu -o /tmp/smoke           # tiny grid, interpreted kernels
    python -m benchmarks.run_gpu_bench --from-json raw.json -o out          # summarise an existing run

Writes ``OUT.json`` (one summary per shape, plus the raw per-case numbers),
``OUT.md`` (the tables docs/benchmarks.md carries) and ``OUT.raw.json``
(pytest-benchmark's own file). The speed and memory targets (the acceptance lines) are checked
on rows = 16384, V = 152064, bfloat16 when that shape was run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from pact.atomic_files import write_text_atomic

REPO = Path(__file__).resolve().parent.parent
TARGET_SHAPE = (16384, 152064, "bfloat16")
MIB = 2**20


def run_pytest(raw_json: Path, device: str, rows: str | None, vocabs: str | None, dtypes: str | None,
               select: str | None) -> int:
    """Run benchmarks/test_bench_gpu.py under pytest-benchmark, writing ``raw_json``; returns pytest's exit code."""
    env = dict(os.environ, PACT_BENCH_DEVICE=device)
    for name, value in (("PACT_BENCH_ROWS", rows), ("PACT_BENCH_VOCABS", vocabs), ("PACT_BENCH_DTYPES", dtypes)):
        if value:
            env[name] = value
    cmd = [sys.executable, "-m", "pytest", "benchmarks/test_bench_gpu.py", "--benchmark-only", "-q",
           "-p", "no:cacheprovider", f"--benchmark-json={raw_json}", "--benchmark-columns=median,min,max,rounds"]
    if select:
        cmd += ["-k", select]
    return subprocess.call(cmd, cwd=REPO, env=env)


def collect(raw: dict) -> dict:
    """``{(rows, vocab, dtype): {"case mode": {"ms": median ms, **extra_info}}}`` from pytest-benchmark's JSON."""
    shapes: dict = {}
    for bench in raw["benchmarks"]:
        info = bench["extra_info"]
        key = (info["rows"], info["vocab"], info["dtype"])
        shapes.setdefault(key, {})[f"{info['case']} {info['mode']}"] = dict(info, ms=bench["stats"]["median"] * 1e3)
    return shapes


def summarise(key, cases: dict) -> dict:
    """One shape's times (ms), peaks (MiB) and the ratios the acceptance lines check (None where a case is missing)."""
    rows, vocab, dtype = key

    def ms(name):
        return cases[name]["ms"] if name in cases else None

    def mib(name, field="peak_bytes"):
        return cases[name][field] / MIB if name in cases else None

    def ratio(a, b):
        return a / b if a is not None and b else None

    logits_bytes = next(iter(cases.values()))["logits_bytes"]
    triton = ms("triton forward_backward")
    copy = ms("copy floor")
    beyond = cases.get("triton forward_backward", {}).get("beyond_grad_bytes")
    inplace_peak = cases.get("triton_inplace forward_backward", {}).get("peak_bytes")
    return {
        "rows": rows, "vocab": vocab, "dtype": dtype, "k": next(iter(cases.values()))["k"],
        "device": next(iter(cases.values()))["device"], "logits_mib": logits_bytes / MIB,
        "ms": {name: c["ms"] for name, c in cases.items()},
        "peak_mib": {name: c["peak_bytes"] / MIB for name, c in cases.items()},
        "beyond_grad_mib": {name: c["beyond_grad_bytes"] / MIB for name, c in cases.items()},
        "copy_gb_per_s": 2 * logits_bytes / (copy * 1e-3) / 1e9 if copy else None,
        "triton_speedup_vs_naive": ratio(ms("naive forward_backward"), triton),
        "triton_over_floor": ratio(triton, copy),
        "triton_over_liger_ce": ratio(triton, ms("liger_ce forward_backward")),
        "triton_inplace_over_floor": ratio(ms("triton_inplace forward_backward"), copy),
        "cuda_over_floor": ratio(ms("cuda forward_backward"), copy),
        "cuda_over_triton": ratio(ms("cuda forward_backward"), triton),
        "triton_beyond_grad_pct_of_logits": None if beyond is None else 100 * beyond / logits_bytes,
        "triton_inplace_beyond_logits_pct": None if inplace_peak is None else 100 * inplace_peak / logits_bytes,
    }


def _fmt(value, spec=".1f", missing="—"):
    return missing if value is None else format(value, spec)


def markdown(summaries: list, versions: str) -> str:
    """The two tables (forward + backward with ratios; forward and peak memory) and the acceptance lines."""
    device = summaries[0]["device"] if summaries else "?"
    lines = [
        f"GPU: {device}; {versions}; K=50, variant pact; median ms per call. "
        "Floor = a device copy of the logits (one read + one write).",
        "",
        "Forward + backward:",
        "",
        "| rows | V | dtype | naive | torch | triton | triton in-place | cuda | cuda in-place | Liger CE | floor | "
        "triton vs naive | triton / floor | cuda / floor | cuda / triton | triton / Liger | triton extra mem % | "
        "in-place extra mem % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        t = s["ms"]
        lines.append(
            f"| {s['rows']} | {s['vocab']} | {s['dtype']} | {_fmt(t.get('naive forward_backward'))} | "
            f"{_fmt(t.get('torch forward_backward'))} | {_fmt(t.get('triton forward_backward'), '.2f')} | "
            f"{_fmt(t.get('triton_inplace forward_backward'), '.2f')} | {_fmt(t.get('cuda forward_backward'), '.2f')} | "
            f"{_fmt(t.get('cuda_inplace forward_backward'), '.2f')} | {_fmt(t.get('liger_ce forward_backward'), '.2f')} | "
            f"{_fmt(t.get('copy floor'), '.2f')} | {_fmt(s['triton_speedup_vs_naive'], '.1f')}x | "
            f"{_fmt(s['triton_over_floor'], '.2f')} | {_fmt(s['cuda_over_floor'], '.2f')} | "
            f"{_fmt(s['cuda_over_triton'], '.2f')} | {_fmt(s['triton_over_liger_ce'], '.2f')} | "
            f"{_fmt(s['triton_beyond_grad_pct_of_logits'], '.2f')} | {_fmt(s['triton_inplace_beyond_logits_pct'], '.2f')} |"
        )
    lines += [
        "",
        "Extra mem %: peak memory of one forward + backward beyond the logits and their gradient "
        "(in-place: beyond the logits alone), as a percentage of the logits' size.",
        "",
        "Forward alone (no_grad) and peak memory of forward + backward (MiB above the inputs, gradient included):",
        "",
        "| rows | V | dtype | naive fwd | torch fwd | triton fwd | cuda fwd | naive peak | torch peak | triton peak | "
        "in-place peak | cuda peak | logits MiB | copy GB/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        t, p = s["ms"], s["peak_mib"]
        lines.append(
            f"| {s['rows']} | {s['vocab']} | {s['dtype']} | {_fmt(t.get('naive forward'))} | "
            f"{_fmt(t.get('torch forward'))} | {_fmt(t.get('triton forward'), '.2f')} | "
            f"{_fmt(t.get('cuda forward'), '.2f')} | {_fmt(p.get('naive forward_backward'), '.0f')} | {_fmt(p.get('torch forward_backward'), '.0f')} | "
            f"{_fmt(p.get('triton forward_backward'), '.0f')} | {_fmt(p.get('triton_inplace forward_backward'), '.0f')} | "
            f"{_fmt(p.get('cuda forward_backward'), '.0f')} | {s['logits_mib']:.0f} | {_fmt(s['copy_gb_per_s'], '.0f')} |"
        )
    lines += ["", *acceptance_lines(summaries)]
    return "\n".join(lines) + "\n"


def acceptance_lines(summaries: list) -> list:
    """The speed and memory targets on rows = 16384, V = 152064, bfloat16 (PASS / FAIL / not measured per line)."""
    target = [s for s in summaries if (s["rows"], s["vocab"], s["dtype"]) == TARGET_SHAPE]
    if not target:
        return ["Acceptance shape (rows=16384, V=152064, bfloat16) not run."]
    s = target[0]
    checks = [
        ("triton fwd+bwd at least 8x faster than naive", s["triton_speedup_vs_naive"], lambda v: v >= 8),
        ("triton extra memory under 10% of the logits", s["triton_beyond_grad_pct_of_logits"], lambda v: v < 10),
        ("in-place extra memory under 10% of the logits", s["triton_inplace_beyond_logits_pct"], lambda v: v < 10),
        ("triton within 1.5x of the bandwidth floor", s["triton_over_floor"], lambda v: v <= 1.5),
        ("triton within 1.15x of Liger's cross-entropy", s["triton_over_liger_ce"], lambda v: v <= 1.15),
    ]
    lines = ["Acceptance (rows=16384, V=152064, bfloat16, forward + backward):", ""]
    for text, value, ok in checks:
        verdict = "not measured" if value is None else ("PASS" if ok(value) else "FAIL")
        lines.append(f"- {verdict}: {text} ({_fmt(value, '.2f')})")
    return lines


def versions() -> str:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    return f"torch {torch.__version__}, triton {triton_version}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--out", default="benchmarks/results/gpu", help="output path without suffix")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--rows", help="comma list, e.g. 16384")
    parser.add_argument("--vocabs", help="comma list, e.g. 152064")
    parser.add_argument("--dtypes", help="comma list, e.g. bfloat16")
    parser.add_argument("-k", dest="select", help="pytest -k expression over the cases")
    parser.add_argument("--from-json", help="summarise this pytest-benchmark JSON instead of running")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    status = 0
    if args.from_json:
        raw_path = Path(args.from_json)
    else:
        raw_path = out.with_suffix(".raw.json")
        status = run_pytest(raw_path.resolve(), args.device, args.rows, args.vocabs, args.dtypes, args.select)
        if not raw_path.exists():
            print(f"run_gpu_bench: pytest wrote no {raw_path} (exit {status})", file=sys.stderr)
            return status or 1
    raw = json.loads(raw_path.read_text())
    summaries = [summarise(key, cases) for key, cases in sorted(collect(raw).items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1]))]
    table = markdown(summaries, versions())
    write_text_atomic(out.with_suffix(".json"), json.dumps({"versions": versions(), "shapes": summaries}, indent=2) + "\n")
    write_text_atomic(out.with_suffix(".md"), table)
    print(table)
    return status


if __name__ == "__main__":
    sys.exit(main())
