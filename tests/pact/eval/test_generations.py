"""``pact eval`` keys its generations by content and has one writer per output directory."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pact.cli import main
from pact.locks import LOCK_NAME, lock_holder
from pact.tiny import save_tiny

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=3)


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def _save_adapter(model_dir: Path, out: Path, seed: int) -> None:
    """A random LoRA adapter (non-zero B, so it changes the answers) saved to ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_pretrained(model_dir)
    peft = get_peft_model(m, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"],
                                        init_lora_weights=False))
    peft.save_pretrained(out)


def _eval(args: list[str], out: Path) -> int:
    return main(["eval", "--suite", "harmbench", "--limit", "4", "--max-new-tokens", "8", "--batch-size", "4",
                 "--no-progress", *args, "-o", str(out)])


def test_adapter_retrained_at_the_same_path_is_regenerated(tiny_path, tmp_path, capsys):
    from pact.fingerprint import adapter_digest

    adapter, out = tmp_path / "adapter", tmp_path / "res"
    _save_adapter(tiny_path, adapter, seed=1)
    (tmp_path / "run.json").write_text(json.dumps({"method": "sft", "task": "gsm8k", "lambda_kl": 1.0}))
    assert _eval(["--model", str(tiny_path), "--adapter", str(adapter)], out) == 0
    gpath = out / "harmbench" / "generations.jsonl"
    first = _lines(gpath)
    assert {g["made_with"]["adapter"] for g in first} == {adapter_digest(adapter)}

    _save_adapter(tiny_path, adapter, seed=2)  # retrained in place, and its run.json with it
    (tmp_path / "run.json").write_text(json.dumps({"method": "pact", "task": "gsm8k", "lambda_kl": 5.0}))
    capsys.readouterr()
    assert _eval(["--model", str(tiny_path), "--adapter", str(adapter)], out) == 0
    err = capsys.readouterr().err
    assert "4 line(s) not reused (adapter content (" in err and "generating again" in err
    second = _lines(gpath)
    assert [g["prompt"] for g in second] == [g["prompt"] for g in first]
    assert {g["made_with"]["adapter"] for g in second} == {adapter_digest(adapter)} != \
        {g["made_with"]["adapter"] for g in first}
    assert [g["response"] for g in second] != [g["response"] for g in first]  # regenerated, not the stale answers
    # the answers are the new adapter's: a fresh directory gives the same ones
    assert _eval(["--model", str(tiny_path), "--adapter", str(adapter)], tmp_path / "fresh") == 0
    assert [g["response"] for g in _lines(tmp_path / "fresh" / "harmbench" / "generations.jsonl")] == \
        [g["response"] for g in second]
    m = json.loads((out / "metrics.json").read_text())
    # the metrics hold the new run's config and key, over generations made with that key only
    assert m["run_config"]["lambda_kl"] == 5.0 and m["method"] == "pact"
    assert m["generation"]["adapter"] == adapter_digest(adapter)
    assert {g["generation_key"] for g in second} == {m["generation_key"]}
    (aside,) = (out / "harmbench" / "stale").iterdir()
    assert [g["response"] for g in _lines(aside)] == [g["response"] for g in first]  # kept aside, not deleted


def test_dtype_change_is_not_reused(tiny_path, tmp_path, capsys):
    out = tmp_path / "res"
    assert _eval(["--model", str(tiny_path)], out) == 0
    capsys.readouterr()
    assert _eval(["--model", str(tiny_path), "--dtype", "bfloat16"], out) == 0
    err = capsys.readouterr().err
    assert "4 line(s) not reused (dtype (float32 → bfloat16))" in err
    gens = _lines(out / "harmbench" / "generations.jsonl")
    assert len(gens) == 4 and {g["made_with"]["dtype"] for g in gens} == {"bfloat16"}
    assert json.loads((out / "metrics.json").read_text())["generation"]["dtype"] == "bfloat16"
    # the same settings again reuse everything: nothing moved aside this time
    capsys.readouterr()
    assert _eval(["--model", str(tiny_path), "--dtype", "bfloat16"], out) == 0
    assert "not reused" not in capsys.readouterr().err
    assert len(list((out / "harmbench" / "stale").iterdir())) == 1


def _held(directory: Path) -> bool:
    fd = os.open(directory / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def test_two_evals_into_one_directory_one_proceeds_the_other_names_it(tiny_path, tmp_path):
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "pact", "eval", "--model", str(tiny_path), "--suite", "harmbench", "--limit", "20",
           "--max-new-tokens", "6", "--batch-size", "4", "--no-progress", "-o", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    try:
        deadline = time.time() + 600
        while not ((out / LOCK_NAME).exists() and _held(out)):
            assert first.poll() is None, first.communicate()
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGSTOP)  # the first is mid-run, holding the directory
        try:
            second = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        _, err1 = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err1
    assert second.returncode == 2
    assert f"the pact eval output directory {out} is being written by pid {first.pid}" in second.stderr
    assert "pass another -o" in second.stderr
    gens = _lines(out / "harmbench" / "generations.jsonl")
    assert [g["index"] for g in gens] == list(range(20))  # each prompt once
    assert json.loads((out / "metrics.json").read_text())["suites"]["harmbench"]["n"] == 20
    # equal to a single run's answers, and a later run still counts 20
    single = tmp_path / "single"
    assert main(cmd[3:-1] + [str(single)]) == 0
    assert [g["response"] for g in gens] == \
        [g["response"] for g in _lines(single / "harmbench" / "generations.jsonl")]
    assert main(cmd[3:]) == 0
    assert json.loads((out / "metrics.json").read_text())["suites"]["harmbench"]["n"] == 20
    assert lock_holder(out)["pid"] == os.getpid()  # the last holder wrote its name; the lock itself is free
    assert not _held(out)


def test_module_digest_covers_zero_dim_buffers():
    """A 0-dim buffer (Gemma-3's embed_scale) is hashed by value, not refused by ``view(uint8)``."""
    import torch

    from pact.fingerprint import module_digest

    def model(scale: float):
        m = torch.nn.Linear(2, 2)
        torch.nn.init.zeros_(m.weight)
        torch.nn.init.zeros_(m.bias)
        m.register_buffer("embed_scale", torch.tensor(scale), persistent=False)
        return m

    assert module_digest(model(2.0)) == module_digest(model(2.0))
    assert module_digest(model(2.0)) != module_digest(model(3.0))
