"""Mixed precision where users run it (checks/gpu_check.sh stages 6 and 7).

``python -m checks.gpu_mixed_precision trl``: the README's "Fine-tune with TRL"
block as a TRL user runs it (``bf16=True``, TRL's default when fp16 is unset),
then again with ``bf16=False``; prints both step-loss lists and their largest
relative difference.

``python -m checks.gpu_mixed_precision driver``: the driver under the
``deepspeed`` launcher, one rank, on a tiny model, with ``dtype=bfloat16``
(DeepSpeed's ``bf16: {enabled: true}``) and with ``dtype=float32``; the same
comparison. Without DeepSpeed importable it says so and exits 0.

Exit 1 when a run fails, a loss is not finite, or the bf16 steps are further
than ``--tolerance`` (relative) from the float32 ones. ``--cpu`` runs the same on
the CPU (bf16 through ``use_cpu=True``; the driver with gloo).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_trl_block() -> str:
    text = (REPO / "README.md").read_text()
    return re.search(r"<!-- trl-example.*?-->\s*```python\n(.*?)```", text, re.S).group(1)


def run_trl_block(workdir: Path, **config) -> list[float]:
    """The README block in ``workdir`` with ``config`` added to its PACTTrainerConfig; its step losses."""
    import pact.trl

    original = pact.trl.PACTTrainerConfig
    pact.trl.PACTTrainerConfig = functools.partial(original, logging_steps=1, report_to=[], **config)
    cwd = os.getcwd()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        os.chdir(workdir)
        namespace: dict = {}
        exec(compile(readme_trl_block(), "README.md", "exec"), namespace)
        args, history = namespace["args"], namespace["result"]
        print(f"  bf16={args.bf16} device={args.device} steps={history.global_step}")
        return [r["loss"] for r in _trainer_history(workdir) if "loss" in r]
    finally:
        os.chdir(cwd)
        pact.trl.PACTTrainerConfig = original


def _trainer_history(workdir: Path) -> list[dict]:
    states = sorted(workdir.glob("runs/trl/out/**/trainer_state.json"))
    return json.loads(states[-1].read_text())["log_history"] if states else []


def compare(name: str, bf16: list[float], fp32: list[float], tolerance: float) -> int:
    print(f"{name} bf16 losses: {bf16}")
    print(f"{name} fp32 losses: {fp32}")
    if not bf16 or len(bf16) != len(fp32) or not all(math.isfinite(x) for x in bf16 + fp32):
        print(f"FAIL {name}: missing or non-finite losses")
        return 1
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(bf16, fp32))
    print(f"{name}: largest relative step-loss difference bf16 vs fp32 {worst:.3e} (tolerance {tolerance:g})")
    if worst > tolerance:
        print(f"FAIL {name}: bf16 steps further than {tolerance:g} from float32")
        return 1
    return 0


def check_trl(cpu: bool, tolerance: float) -> int:
    root = Path(tempfile.mkdtemp(prefix="pact-trl-bf16-"))
    extra = {"use_cpu": True} if cpu else {}
    bf16 = run_trl_block(root / "bf16", save_strategy="steps", save_steps=4, **extra)
    fp32 = run_trl_block(root / "fp32", save_strategy="steps", save_steps=4, bf16=False, **extra)
    return compare("trl", bf16, fp32, tolerance)


def driver_setup(root: Path) -> tuple[Path, Path]:
    """A tiny model and a safety-token file of ids its answers use (no identify run: seconds, not minutes)."""
    from pact.identify import SafetyTokens
    from pact.tiny import save_tiny, tiny_tokenizer

    model = save_tiny(str(root / "model"))
    tok = tiny_tokenizer()
    ids = list(range(40, 56))
    tokens = root / "tokens.json"
    SafetyTokens(safe_model="tiny", base_model="tiny", vocab_size=len(tok), k=len(ids), selection="paper", ids=ids,
                 strings=[tok.decode([i]) for i in ids], weights=[2.0 ** -j for j in range(len(ids))],
                 scores=[2.0 ** -j for j in range(len(ids))], mean_safe_prob=[0.01] * len(ids), prompts="gpu-check",
                 num_prompts=1, num_steps=1).save(tokens)
    return Path(model), tokens


def run_driver(root: Path, model: Path, tokens: Path, dtype: str, cpu: bool) -> list[float]:
    out = root / f"driver-{dtype}"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", "29533",
           str(REPO / "pact" / "train.py"), "--config", str(REPO / "configs" / "tiny.yaml"), f"model={model}",
           f"safety_tokens={tokens}", f"output_dir={out}", f"dtype={dtype}", "max_steps=4",
           "deepspeed=configs/deepspeed/zero2.json"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    print(f"  driver dtype={dtype}: exit {proc.returncode}")
    if proc.returncode != 0:
        print(proc.stdout[-2000:] + proc.stderr[-3000:])
        return []
    log = out / "train_log.jsonl"
    return [json.loads(line)["loss"] for line in log.read_text().splitlines()]


def check_driver(cpu: bool, tolerance: float) -> int:
    try:
        import deepspeed  # noqa: F401
    except Exception as e:  # the GPU image has no DeepSpeed unless its wheels were carried
        print(f"driver: deepspeed not importable ({type(e).__name__}: {e}); stage skipped")
        return 0
    root = Path(tempfile.mkdtemp(prefix="pact-driver-bf16-"))
    model, tokens = driver_setup(root)
    bf16 = run_driver(root, model, tokens, "bfloat16", cpu)
    fp32 = run_driver(root, model, tokens, "float32", cpu)
    return compare("driver", bf16, fp32, tolerance)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["trl", "driver"])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (bf16 autocast there)")
    parser.add_argument("--tolerance", type=float, default=1e-2, help="largest relative step-loss difference")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    check = check_trl if args.what == "trl" else check_driver
    return check(args.cpu, args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
