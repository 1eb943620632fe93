"""The driver's ``--resume`` refuses a crafted checkpoint file (ours or DeepSpeed's), naming it, and never runs
its code (pact/training/{checkpoint,safe_load}.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pact.training.checkpoint import write_manifest
from tests.e2e.test_train import setup  # noqa: F401  (the tiny aligned model and its tokens)
from tests.pact.test_safe_loading import CreatesFile


@pytest.fixture(scope="module")
def interrupted(setup):  # noqa: F811
    """A run stopped after step 2 with its checkpoint (4 steps planned)."""
    from tests.e2e.test_train_faults import run

    records, out, proc = run(setup, "safe-load-base", "max_steps=4", "save_every=2", "stop_after_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _resume_crafted(setup, interrupted, name, rel):  # noqa: F811
    from tests.e2e.test_train_faults import run

    out = setup["root"] / name
    shutil.copytree(interrupted, out)
    ckpt = out / "checkpoints" / "step-000002"
    target, marker = ckpt / rel, setup["root"] / f"{name}-ran"
    state = torch.load(target, weights_only=False)  # our own file, written by the run above
    state["extra"] = CreatesFile(marker)
    torch.save(state, target)
    write_manifest(ckpt)  # whoever crafts a file can rewrite the manifest too
    records, _, proc = run(setup, name, "max_steps=4", "save_every=2", "--resume")
    return proc, target, marker


@pytest.mark.slow
@pytest.mark.parametrize("rel", ["rng-rank0.pt", "state/mp_rank_00_model_states.pt"])
def test_resume_refuses_a_crafted_checkpoint_file_naming_it(setup, interrupted, rel):  # noqa: F811
    proc, target, marker = _resume_crafted(setup, interrupted, "crafted-" + Path(rel).stem, rel)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert not marker.exists()
    assert f"{target} holds a Python object that is not a tensor or plain data" in proc.stderr
    assert "never read as code" in proc.stderr and "Traceback" not in proc.stderr
