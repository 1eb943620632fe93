"""A run's identity and failures through the driver (subprocesses on the tiny model): two runs at once into one
output_dir, a resume after the tokens file was regenerated, a tokens file of another tokenizer, a DeepSpeed batch
conflict, a file-size limit, a missing rank, Ctrl-C (pact/training/{run_dir,launch,write_errors}.py)."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e.test_train import REPO, setup, write_tokens  # noqa: F401  (the tiny aligned model and tokens)
from tests.pact.test_run_identity import STEPS, TINY, _main


def _cmd(setup, name, *overrides):  # noqa: F811
    return [sys.executable, str(REPO / "pact" / "train.py"), "--config", TINY, f"model={setup['model']}",
            f"safety_tokens={setup['root'] / 'tokens-id.json'}", f"output_dir={setup['root'] / name}",
            "deepspeed=null", *overrides]


def _env(**extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    env.pop("PACT_FAULT", None)
    return env


def _records(out):
    log = out / "train_log.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []


def _run(setup, name, *overrides, preexec=None, **env):  # noqa: F811
    proc = subprocess.run(_cmd(setup, name, *overrides), cwd=REPO, env=_env(**env), capture_output=True, text=True,
                          timeout=900, preexec_fn=preexec)
    return proc, setup["root"] / name


@pytest.fixture(scope="module")
def solo(setup):  # noqa: F811
    from pact.tiny import tiny_tokenizer

    ids = json.loads(setup["tokens"].read_text())["ids"]
    write_tokens(setup["root"] / "tokens-id.json", ids, tiny_tokenizer())
    proc, out = _run(setup, "solo", *STEPS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _records(out), out


@pytest.mark.slow
def test_two_runs_into_one_output_dir_one_refuses_naming_the_other(setup, solo):  # noqa: F811
    procs = [subprocess.Popen(_cmd(setup, "pair", *STEPS), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 2], [o[1][-2000:] for o in outs]
    win = 0 if procs[0].returncode == 0 else 1
    refusal = outs[1 - win][1]
    assert f"output_dir={setup['root'] / 'pair'} is being written by pid {procs[win].pid}" in refusal
    assert "wait for that run to finish, or choose another output_dir" in refusal and "Traceback" not in refusal
    records = _records(setup["root"] / "pair")
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # no step twice
    assert [r["loss"] for r in records] == [r["loss"] for r in solo[0]]


@pytest.mark.slow
def test_a_tokens_file_regenerated_in_place_is_refused_on_resume(setup, solo):  # noqa: F811
    from pact.tiny import tiny_tokenizer

    out = setup["root"] / "regen"
    shutil.copytree(solo[1], out)
    shutil.rmtree(out / "checkpoints" / "step-000004")
    path = setup["root"] / "tokens-id.json"
    before_tokens, before_run = path.read_text(), (out / "run.json").read_text()
    ids = json.loads(before_tokens)["ids"]
    try:
        write_tokens(path, ids[:len(ids) // 2], tiny_tokenizer())  # K halved, same path, same config
        proc, _ = _run(setup, "regen", *STEPS, "--resume")
    finally:
        path.write_text(before_tokens)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "--resume with other inputs than the run" in proc.stderr
    assert f"the safety tokens (ids and weights of the tokens file)" in proc.stderr
    assert f"k: {len(ids)} -> {len(ids) // 2}" in proc.stderr
    assert (out / "run.json").read_text() == before_run and len(_records(out)) == 4  # nothing rewritten


@pytest.mark.slow
def test_a_tokens_file_of_another_tokenizer_is_refused_by_the_driver(setup, solo, tmp_path):  # noqa: F811
    from pact.identify import SafetyTokens
    from pact.tiny import tiny_tokenizer

    tokens = SafetyTokens.load(setup["root"] / "tokens-id.json")
    tokens.extra["tokenizer_vocab_sha256"] = "0" * 64  # identified with another tokenizer of this size
    tokens.save(tmp_path / "other.json")
    rc, err = _main("--config", TINY, f"model={setup['model']}", f"safety_tokens={tmp_path / 'other.json'}",
                    f"output_dir={tmp_path / 'run'}", "deepspeed=null")
    assert rc == 2 and "tokenizer mismatch: the safety tokens were identified with another tokenizer" in err
    assert not (tmp_path / "run" / "run.json").exists()
    assert SafetyTokens.load(setup["root"] / "tokens-id.json", tokenizer=tiny_tokenizer())


@pytest.mark.slow
def test_a_deepspeed_batch_conflict_is_refused_before_run_json(setup, solo, tmp_path):  # noqa: F811
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 7, "zero_optimization": {"stage": 0}}))
    proc, out = _run(setup, "ds-conflict", *STEPS, f"deepspeed={ds}")
    assert proc.returncode == 2 and "deepspeed config sets train_batch_size=7 but this run needs 2" in proc.stderr
    from pact.training.run_dir import existing_run

    assert existing_run(str(out)) == []  # the corrected command is not refused as "holds a run"


@pytest.mark.slow
def test_a_file_size_limit_is_named_with_what_was_kept(setup, solo):  # noqa: F811
    limit = 30000  # run.json, the log and the RNG state fit; the DeepSpeed state of a checkpoint does not

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc, out = _run(setup, "fsize", *STEPS, preexec=cap)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (f"could not write the checkpoint of step 2 at {out / 'checkpoints'}: a file-size limit of {limit} "
            "bytes (ulimit -f)") in proc.stderr
    assert "Kept: no checkpoint yet" in proc.stderr and "inline_container" not in proc.stderr.split("error:")[-1]
    assert not (out / "checkpoints" / "step-000002.tmp").exists() and (out / "run.json").is_file()


@pytest.mark.slow
def test_a_missing_rank_stops_the_run_after_collective_timeout(setup, solo):  # noqa: F811
    """Rank 0 of two started alone: it waits collective_timeout seconds, not 30 minutes, and says so."""
    started = time.time()
    proc, out = _run(setup, "alone", *STEPS, "collective_timeout=5", RANK="0", WORLD_SIZE="2", LOCAL_RANK="0",
                     MASTER_ADDR="127.0.0.1", MASTER_PORT="29731", TORCHELASTIC_RUN_ID="test")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "waited more than collective_timeout=5 s for the other ranks" in proc.stderr
    assert time.time() - started < 180


@pytest.mark.slow
def test_ctrl_c_prints_one_line(setup, solo):  # noqa: F811
    proc = subprocess.Popen(_cmd(setup, "interrupted", "epochs=20", "max_steps=400", "save_every=2"), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a suite started in the background (`cmd &`) hands its children SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out = setup["root"] / "interrupted"
    deadline = time.time() + 600
    while len(_records(out)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "pact train: interrupted; last checkpoint kept:" in err and "continue with --resume" in err
