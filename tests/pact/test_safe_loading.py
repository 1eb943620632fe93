"""Nothing we read runs code: checkpoint files (our RNG states, DeepSpeed's states) are read with
``weights_only=True`` and a crafted pickle is refused naming its file; a model's shipped code runs only when
the user passes ``trust_remote_code`` (pact/training/{checkpoint,safe_load}.py, pact/models.py)."""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pact.training.checkpoint import CheckpointError, read_rng_state, rng_state, set_rng_state
from pact.training.safe_load import SafeCheckpointEngine, UnsafeCheckpointError, safe_torch_load

REPO = Path(__file__).resolve().parents[2]


class CreatesFile:
    """Pickles as a call of ``open(path, "w")``: reading it with a plain unpickler creates ``path``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _draws():
    return (random.random(), random.gauss(0, 1), float(np.random.rand()), float(np.random.randn()),
            torch.rand(3).tolist())


def test_rng_state_file_is_plain_data_and_restores_every_generator(tmp_path):
    random.gauss(0, 1), np.random.randn()  # a cached gaussian in both generators
    torch.save(rng_state(), tmp_path / "rng-rank0.pt")
    expected = _draws()
    _draws()
    state = torch.load(tmp_path / "rng-rank0.pt", weights_only=True)  # no allow-list needed
    assert state["format"] == "pact-rng-1" and state["numpy"]["keys"].dtype == torch.int64
    set_rng_state(state)
    assert _draws() == expected
    set_rng_state(read_rng_state(tmp_path / "rng-rank0.pt"))
    assert _draws() == expected


def test_rng_file_of_an_earlier_pact_is_read_without_running_code(tmp_path):
    """The earlier layout (Python's tuple, numpy's array): read with weights_only and numpy's array classes only."""
    old = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(), "cuda": None}
    torch.save(old, tmp_path / "rng-rank0.pt")
    expected = _draws()
    set_rng_state(read_rng_state(tmp_path / "rng-rank0.pt"))
    assert _draws() == expected


def test_crafted_rng_file_is_refused_and_its_code_never_runs(tmp_path):
    live, marker = tmp_path / "proof-it-runs", tmp_path / "ran"
    torch.save({"torch": torch.get_rng_state(), "python": CreatesFile(live), "numpy": 0}, tmp_path / "proof.pt")
    torch.load(tmp_path / "proof.pt", weights_only=False)
    assert live.exists()  # the crafted pickle is live: a plain unpickler runs it
    path = tmp_path / "rng-rank0.pt"
    torch.save({"torch": torch.get_rng_state(), "python": CreatesFile(marker), "numpy": 0}, path)
    with pytest.raises(CheckpointError) as e:
        read_rng_state(path)
    assert not marker.exists()
    assert str(path) in str(e.value) and "never read as code" in str(e.value) and "open" in str(e.value)


def test_deepspeed_checkpoint_engine_load_refuses_a_crafted_file(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(2)}, "ds_version": "0.19.8", "hook": CreatesFile(marker)}, path)
    engine = SafeCheckpointEngine(inner=object())
    with pytest.raises(UnsafeCheckpointError, match=re.escape(str(path))):
        engine.load(str(path), map_location=lambda storage, loc: storage)
    assert not marker.exists()
    torch.save({"module": {"w": torch.ones(2)}, "ds_version": "0.19.8"}, path)
    assert torch.equal(safe_torch_load(path)["module"]["w"], torch.ones(2))


def test_a_load_that_asks_for_pickles_is_held_to_weights_only_inside_the_guard(tmp_path):
    """DeepSpeed's own ``torch.load(..., weights_only=False)`` (its other loaders, and transformers calling it for
    ``PACTTrainer``'s resume) inside :func:`weights_only_loading`: refused, naming the checkpoint; outside, as before."""
    from pact.training.safe_load import weights_only_loading

    marker = tmp_path / "ran"
    path = tmp_path / "optim_states.pt"
    torch.save({"optimizer_state_dict": {"state": {}}, "hook": CreatesFile(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as e:
        with weights_only_loading(tmp_path):
            torch.load(path, weights_only=False)
    assert not marker.exists() and str(tmp_path) in str(e.value) and "never read as code" in str(e.value)
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None  # restored
    from deepspeed.runtime.fp16.loss_scaler import LossScaler

    torch.save({"loss_scaler": LossScaler(1.0), "w": torch.ones(2)}, path)  # what DeepSpeed's ZeRO states hold
    with weights_only_loading(tmp_path):
        assert torch.load(path, weights_only=False)["loss_scaler"].cur_scale == 1.0


def test_every_torch_load_in_pact_is_weights_only():
    import ast

    calls = []
    for f in sorted((REPO / "pact").rglob("*.py")) + sorted((REPO / "pact_kernels").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                kw = {k.arg: k.value for k in node.keywords}
                safe = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                calls.append((f"{f.relative_to(REPO)}:{node.lineno}", safe))
    assert calls, "no torch.load found at all"
    assert all(safe for _, safe in calls), [where for where, safe in calls if not safe]


# ---------------------------------------------------------------- models: shipped code runs only when asked

@pytest.fixture(scope="module")
def custom_code_model(tmp_path_factory):
    """A tiny Llama whose config names classes in its own .py files; importing them creates ``ran``."""
    from pact.tiny import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("remote-code")
    d, marker = root / "model", root / "ran"
    tok = tiny_tokenizer()
    tiny_model(tok, seed=0).save_pretrained(d)
    tok.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="pact_custom", architectures=["CustomLM"],
               auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                         "AutoModelForCausalLM": "modeling_custom.CustomLM"})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "configuration_custom.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom transformers import LlamaConfig\n\n\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'pact_custom'\n")
    (d / "modeling_custom.py").write_text(
        "from transformers import LlamaForCausalLM\nfrom .configuration_custom import CustomConfig\n\n\n"
        "class CustomLM(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    return d, marker


LOAD_ALL = """
import sys
from pact.models import ModelLoadError, load_model, load_model_config
path, trust = sys.argv[1], sys.argv[2] == "trust"
for f in (load_model_config, load_model):
    try:
        f(path, trust_remote_code=trust) if trust else f(path)
        print("LOADED", f.__name__)
    except ModelLoadError as e:
        print("REFUSED", f.__name__, e)
"""


def test_model_code_never_runs_and_nothing_asks_unless_trust_remote_code(custom_code_model):
    d, marker = custom_code_model
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", LOAD_ALL, str(d), "no"], input="y\ny\n", capture_output=True,
                       text=True, timeout=300, env=env, cwd=REPO)
    out = r.stdout + r.stderr
    assert "[y/N]" not in out  # no question, even with an answer waiting on stdin
    assert not marker.exists()
    assert out.count("REFUSED") == 2 and "LOADED" not in out, out[-3000:]
    assert "pass trust_remote_code=true (pact train) or --trust-remote-code (pact eval, identify, intervene)" in out
    r = subprocess.run([sys.executable, "-c", LOAD_ALL, str(d), "trust"], capture_output=True, text=True,
                       timeout=300, env=env, cwd=REPO)
    assert r.stdout.count("LOADED") == 2, r.stdout + r.stderr[-3000:]
    assert marker.exists()  # the opt-in runs it


def test_pact_train_refuses_a_custom_code_model_before_any_work(custom_code_model, tmp_path, capsys):
    from pact.train import main
    from tests.e2e.test_train import write_tokens
    from pact.tiny import tiny_tokenizer

    d, marker = custom_code_model
    marker.unlink(missing_ok=True)  # made by the opt-in of the test above
    tokens = write_tokens(tmp_path / "tokens.json", [5, 6], tiny_tokenizer())
    code = main(["--config", str(REPO / "configs" / "tiny.yaml"), f"model={d}", f"safety_tokens={tokens}",
                 f"output_dir={tmp_path / 'run'}", "deepspeed=null"])
    err = capsys.readouterr().err
    assert code == 2 and "trust_remote_code=true" in err and not marker.exists()
    assert not (tmp_path / "run" / "run.json").exists()
