"""Lost work and silent reuse of a run: SIGKILL at random points, damaged checkpoints and logs, NaN state,
run-directory protection and resume with a changed config (pact/training/{checkpoint,run_dir,faults}.py)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch

from tests.e2e.test_train import REPO, setup  # noqa: F401  (the tiny aligned model and its tokens)

pytestmark = pytest.mark.slow
STEPS = ("max_steps=8", "save_every=2")


def run(setup, name, *overrides, fault=None):  # noqa: F811
    out = setup["root"] / name
    args = ["--config", str(REPO / "configs" / "tiny.yaml"), f"model={setup['model']}",
            f"safety_tokens={setup['tokens']}", f"output_dir={out}", "deepspeed=null", *overrides]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("PACT_FAULT", None)
    if fault:
        env["PACT_FAULT"] = fault
    proc = subprocess.run([sys.executable, str(REPO / "pact" / "train.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    log = out / "train_log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    return records, out, proc


@pytest.fixture(scope="module")
def uninterrupted(setup):  # noqa: F811
    records, out, proc = run(setup, "whole", *STEPS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(records) == 8
    return records, out


def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_losses(setup, uninterrupted):  # noqa: F811
    """Killed during a step, after a log line, while a checkpoint's files are written and between its rename
    and the ``latest`` pointer; then a torn log line, a truncated optimizer file in the newest checkpoint and an
    empty ``latest``: every resume starts from the newest intact checkpoint and the losses are bit for bit."""
    full, _ = uninterrupted
    rng = random.Random(15)
    points = ["step", "logged", "checkpoint-write", "checkpoint-rename"]
    rng.shuffle(points)
    kills = 0
    for i, point in enumerate(points):  # every kind of kill, in a seeded order, each at a seeded occurrence
        fault = f"{point}:{rng.randint(1, 2)}"
        _, out, proc = run(setup, "killed", *STEPS, *(["--resume"] if i else []), fault=fault)
        if proc.returncode == 0:  # the run finished before reaching this point
            break
        assert proc.returncode == -9, (fault, proc.stderr[-2000:])
        kills += 1
        assert not (out / "final").exists()
    assert kills == len(points)
    log = out / "train_log.jsonl"
    with log.open("a") as f:  # a crash in the middle of writing a log line
        f.write('{"step": 99, "loss": 1.')
    records, out, proc = run(setup, "killed", *STEPS, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert [r["loss"] for r in records] == [r["loss"] for r in full]
    assert [r["kl"] for r in records] == [r["kl"] for r in full]

    # the newest checkpoint's optimizer file truncated, the pointer emptied: back to the previous one
    newest = out / "checkpoints" / "step-000008"
    optim = sorted(newest.rglob("*_states.pt"))[-1]  # the optimizer moments (ZeRO 0: with the model)
    optim.write_bytes(optim.read_bytes()[:100])
    (out / "checkpoints" / "latest").write_text("")
    records, out, proc = run(setup, "killed", *STEPS, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipped step-000008/{optim.relative_to(newest)} is truncated" in proc.stderr
    assert "resumed from" in proc.stderr and "step-000006 at step 6" in proc.stderr
    assert [r["loss"] for r in records] == [r["loss"] for r in full]


def main(setup, name, *overrides):  # noqa: F811
    """The driver in this process, for refusals that come before any model is loaded: (exit code, stderr)."""
    from pact.train import main as train_main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = train_main(["--config", str(REPO / "configs" / "tiny.yaml"), f"model={setup['model']}",
                         f"safety_tokens={setup['tokens']}", f"output_dir={setup['root'] / name}",
                         "deepspeed=null", *overrides])
    return rc, err.getvalue()


def test_no_intact_checkpoint_is_refused_rather_than_restarted(setup, uninterrupted):  # noqa: F811
    full, out = uninterrupted
    broken = setup["root"] / "broken"
    broken.mkdir()
    for name in ("run.json", "train_log.jsonl"):
        (broken / name).write_text((out / name).read_text())
    ckpt = broken / "checkpoints" / "step-000004"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text('{"step": 4}')  # no manifest: its write never finished
    (broken / "checkpoints" / "latest").write_text("step-000004")
    rc, err = main(setup, "broken", *STEPS, "--resume")
    assert rc == 2
    assert "no intact checkpoint" in err and "refusing to restart from step 0" in err
    assert "step-000004 has no readable manifest.json" in err
    assert (broken / "train_log.jsonl").read_text() == (out / "train_log.jsonl").read_text()  # nothing wiped


def test_resume_with_a_new_learning_rate_applies_it_only_when_told(setup, uninterrupted):  # noqa: F811
    full, whole = uninterrupted
    out = setup["root"] / "more"
    shutil.copytree(whole, out)
    before = (out / "run.json").read_text()
    rc, err = main(setup, "more", "max_steps=10", "save_every=2", "learning_rate=2e-3", "--resume")
    assert rc == 2
    assert "learning_rate: 0.001 -> 0.002" in err and "max_steps: 8 -> 10" in err
    assert "resume_changes=true" in err and (out / "run.json").read_text() == before
    records, _, proc = run(setup, "more", "max_steps=10", "save_every=2", "learning_rate=2e-3", "--resume",
                           "resume_changes=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "applied from step 9: learning_rate" in proc.stderr
    assert [r["lr"] for r in records] == [1e-3] * 8 + [2e-3] * 2
    assert [r["loss"] for r in records[:8]] == [r["loss"] for r in full]
    history = json.loads((out / "run.json").read_text())["resume_changes_history"]
    assert history == [{"keys": {"learning_rate": [1e-3, 2e-3], "max_steps": [8, 10]}}]


def test_a_new_run_never_reuses_a_run_directory_silently(setup, uninterrupted):  # noqa: F811
    _, out = uninterrupted
    log = (out / "train_log.jsonl").read_text()
    rc, err = main(setup, "whole", *STEPS)
    assert rc == 2 and "holds a run (run.json, train_log.jsonl, checkpoints, final" in err
    assert "--resume" in err and "overwrite=true" in err
    assert (out / "train_log.jsonl").read_text() == log and (out / "checkpoints" / "step-000008").is_dir()


def test_a_checkpoint_with_nan_weights_is_never_written(setup):  # noqa: F811
    """lr 1e8: the weights turn NaN after a few steps; the run stops at the first such checkpoint and the one
    it keeps holds finite weights and optimizer state."""
    records, out, proc = run(setup, "nan", "learning_rate=1e8", "save_every=2", "max_steps=12", "method=sft")
    assert proc.returncode == 2, proc.stderr[-3000:]
    # the run stops at whichever comes first: NaN state at a checkpoint, or a NaN loss
    assert "hold NaN or infinity; no checkpoint written" in proc.stderr or "non-finite loss at step" in proc.stderr
    kept = sorted(p.name for p in (out / "checkpoints").glob("step-*") if not p.name.endswith(".tmp"))
    assert kept and str(out / "checkpoints" / kept[-1]) in proc.stderr
    for f in (out / "checkpoints" / kept[-1]).rglob("*.pt"):
        for t in _tensors(torch.load(f, weights_only=False, map_location="cpu")):
            assert torch.isfinite(t).all(), f


def _tensors(obj):
    if torch.is_tensor(obj):
        if obj.is_floating_point():
            yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
