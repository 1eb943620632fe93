"""A run's identity is content, one writer per place, failures as sentences (pact/training/{run_dir,launch,
write_errors}.py, pact/reference/cache.py's fill, pact/identify/tokens.py's tokenizer check).

Cheap checks, in this process; the driver runs on the tiny model (two at once into one output_dir, a resume
after the tokens file was regenerated, a file-size limit, a missing rank, Ctrl-C) are in tests/e2e/test_run_identity.py.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from pact.training.config import ConfigError, load_config
from tests.e2e.test_train import REPO, write_tokens

TINY = str(REPO / "configs" / "tiny.yaml")
STEPS = ("max_steps=4", "save_every=2")


def cfg_of(*overrides):
    return load_config(TINY, list(overrides), check_files=False)


def identity(**changes):
    base = {"safety_tokens": "a" * 64, "k": 20, "tokenizer": "b" * 64, "data": "c" * 64, "model": "d" * 64,
            "base_model": None, "config": "e" * 64, "world_size": 2, "global_batch": 4}
    return dict(base, **changes)


# ---------------------------------------------------------------- the identity compared on --resume (in process)
def test_resume_names_every_input_that_differs_by_content():
    from pact.training.run_dir import identity_changes

    before = {"identity": identity()}
    now = identity(safety_tokens="f" * 64, k=10, model="0" * 64)
    with pytest.raises(ConfigError) as e:
        identity_changes(cfg_of("resume=true"), before, now, zero_stage=0)
    msg = str(e.value)
    assert "the safety tokens (ids and weights of the tokens file) (safety_tokens: aaaaaaaaaaaa -> ffffffffffff)" in msg
    assert "K (the number of safety tokens) (k: 20 -> 10)" in msg and "the model's weights (model: dddd" in msg
    assert "tokenizer" not in msg and "resume_changes=true" in msg
    accepted = identity_changes(cfg_of("resume=true", "resume_changes=true"), before, now, zero_stage=0)
    assert set(accepted) == {"safety_tokens", "k", "model"}
    assert identity_changes(cfg_of("resume=true"), {}, now, zero_stage=0) == {}  # a run recorded before identities


def test_a_new_world_size_needs_the_same_global_batch_and_an_unsplit_optimizer():
    from pact.training.run_dir import identity_changes

    before = {"identity": identity(world_size=2, global_batch=4)}
    one = cfg_of("resume=true", "resume_changes=true")  # micro-batch 2, accumulation 1
    with pytest.raises(ConfigError) as e:  # 2 ranks -> 1: half the batch, twice the steps
        identity_changes(one, before, identity(world_size=1, global_batch=2), zero_stage=0)
    assert ("--resume with 1 ranks, the run had 2: the global batch would change from 4 to 2 samples per step"
            in str(e.value)) and "gradient_accumulation_steps=2 keeps it" in str(e.value)
    kept = cfg_of("resume=true", "resume_changes=true", "gradient_accumulation_steps=2")
    assert identity_changes(kept, before, identity(world_size=1, global_batch=4), zero_stage=0) == {
        "world_size": (2, 1)}
    with pytest.raises(ConfigError, match="ZeRO-2 optimizer state in its checkpoints is split over 2 ranks"):
        identity_changes(kept, before, identity(world_size=1, global_batch=4), zero_stage=2)
    with pytest.raises(ConfigError, match="the number of ranks"):  # the same batch, not told: still named
        identity_changes(cfg_of("resume=true", "gradient_accumulation_steps=2"), before,
                         identity(world_size=1, global_batch=4), zero_stage=0)
    with pytest.raises(ConfigError, match="hold the random states of 2 ranks only; resume with 2 ranks or fewer"):
        identity_changes(cfg_of("resume=true", "resume_changes=true"), before,
                         identity(world_size=4, global_batch=4), zero_stage=0)


@pytest.mark.parametrize("state, message", [
    ("missing", "does not exist, so there is no run to continue"),
    ("empty", "is empty, so there is no run to continue"),
    ("checkpoints", "holds checkpoints but no run.json"),
])
def test_resume_without_a_run_is_refused_and_creates_nothing(tmp_path, state, message):
    from pact.training.run_dir import check_resume_target

    out = tmp_path / "runs" / "typo"
    if state != "missing":
        out.mkdir(parents=True)
    if state == "checkpoints":
        (out / "checkpoints" / "step-000002").mkdir(parents=True)
    with pytest.raises(ConfigError) as e:
        check_resume_target(cfg_of(f"output_dir={out}", "resume=true"))
    assert f"--resume: output_dir={out} {message}" in str(e.value) and "without --resume" in str(e.value)
    assert out.exists() == (state != "missing")


# ---------------------------------------------------------------- the tokens file knows its tokenizer
def _shuffled_tokenizer(tok, keep: list[int]):
    """A tokenizer of the same size whose ids outside ``keep`` mean other strings (another model's vocabulary)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for s, i in tok.get_vocab().items()}
    by_id = sorted(vocab, key=vocab.get)
    moved = [i for i in range(len(by_id)) if i not in keep]
    perm = dict(zip(moved, moved[1:] + moved[:1]))
    new = {s: perm.get(i, i) for s, i in vocab.items()}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(new, unk_token=by_id[0])))


def test_a_tokens_file_of_another_tokenizer_with_the_same_vocabulary_size_is_refused(tmp_path, tok):
    from pact.identify import SafetyTokens, SafetyTokensError

    ids = [5, 6, 7]
    st = write_tokens(tmp_path / "t.json", ids, tok)
    SafetyTokens.load(st, tokenizer=tok)
    stamped = SafetyTokens.load(st).stamp(tok)
    stamped.save(tmp_path / "stamped.json")
    other = _shuffled_tokenizer(tok, keep=ids)  # the three safety ids decode the same, the rest differ
    assert len(other) == len(tok) and all(other.decode([i]) == tok.decode([i]) for i in ids)
    SafetyTokens.load(st, tokenizer=other)  # without a stored digest only the strings can be compared
    with pytest.raises(SafetyTokensError) as e:
        SafetyTokens.load(tmp_path / "stamped.json", tokenizer=other)
    assert "tokenizer mismatch: the safety tokens were identified with another tokenizer" in str(e.value)
    assert "0 of 3 ids decode differently" in str(e.value)
    SafetyTokens.load(tmp_path / "stamped.json", tokenizer=tok)


def test_identify_writes_its_tokenizer_into_the_tokens_file(tmp_path, tok, safe_model, base_model):
    from tests.conftest import PROMPTS
    from pact.fingerprint import vocab_digest
    from pact.identify import SafetyTokens, SafetyTokensError, identify

    tokens = identify(safe_model, base_model, tok, PROMPTS[:2], k=4, max_new_tokens=3, batch_size=2,
                      progress=False).tokens
    path = tokens.save(tmp_path / "tokens.json")
    assert json.loads(path.read_text())["tokenizer_vocab_sha256"] == vocab_digest(tok)
    SafetyTokens.load(path, tokenizer=tok)
    with pytest.raises(SafetyTokensError, match="identified with another tokenizer"):
        SafetyTokens.load(path, tokenizer=_shuffled_tokenizer(tok, keep=tokens.ids))


# ---------------------------------------------------------------- environment, before anything is touched
def _main(*args, single_process=False):
    from pact.train import main as train_main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = train_main(list(args), single_process=single_process)
    return rc, err.getvalue()


@pytest.mark.parametrize("single_process", [True, False])
def test_a_stray_distributed_environment_is_refused_not_waited_on(tmp_path, monkeypatch, single_process):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    started = time.time()
    rc, err = _main("--config", TINY, f"output_dir={tmp_path / 'run'}", single_process=single_process)
    assert rc == 2 and time.time() - started < 30
    assert "the environment sets RANK=0 WORLD_SIZE=2" in err and "wait for ranks that never start" in err
    assert "env -u RANK -u WORLD_SIZE" in err and not (tmp_path / "run").exists()


def test_a_lost_or_late_rank_is_a_sentence():
    from pact.training.launch import describe_collective_failure

    gone = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:5020. This is "
                        "typically caused by a remote worker crashing.")
    assert describe_collective_failure(gone, 300).startswith("another rank stopped while this one waited for it")
    late = RuntimeError("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 300000ms "
                        "for recv operation to complete")
    assert "waited more than collective_timeout=300 s" in describe_collective_failure(late, 300)
    assert describe_collective_failure(RuntimeError("shape mismatch"), 300) is None
    # a timeout that is not a collective's (a download, a file lock) keeps its own traceback
    assert describe_collective_failure(RuntimeError("HTTPSConnectionPool: Read timed out. (read timeout=10)"), 300) is None


# ---------------------------------------------------------------- write failures name their cause
@pytest.mark.parametrize("code, cause", [
    (28, "is full"), (30, "is on a read-only file system"), (13, "is read-only for this user (permission denied)"),
])
def test_a_write_failure_names_its_cause_and_what_is_kept(tmp_path, monkeypatch, code, cause):
    from pact.training import write_errors
    from pact.training.write_errors import WriteFailedError, writing

    if code == 28:
        monkeypatch.setattr(write_errors, "FULL_BELOW", 1 << 62)  # every disk is "full"
    partial = tmp_path / "step-000004.tmp"
    partial.mkdir()
    with pytest.raises(WriteFailedError) as e:
        with writing("the checkpoint of step 4", tmp_path, lambda: "step-000002", partial=partial):
            raise OSError(code, os.strerror(code))
    assert str(e.value).startswith(f"could not write the checkpoint of step 4 at {tmp_path}: ")
    assert cause in str(e.value) and "Kept: step-000002" in str(e.value) and not partial.exists()
    with pytest.raises(ValueError):  # not a write failure: unchanged
        with writing("x", tmp_path, lambda: ""):
            raise ValueError("other")


# ---------------------------------------------------------------- one reference-cache filler (two processes)
FILL = textwrap.dedent("""
    import sys, time, numpy as np, torch
    from pact.reference import ReferenceCache, ReferenceCacheBusyError, fill_reference_cache

    directory, value = sys.argv[1], float(sys.argv[2])
    class View:  # 6 samples of 2 answer rows
        num_answer = 2
    class Batch:
        def __init__(self, ids): self.ids = ids
        def to(self, device): return self
    def online(batch):  # slow: the other filler starts meanwhile
        time.sleep(0.5)
        rows = torch.full((2 * len(batch.ids), 3), value)
        return rows, rows + 1
    cache = ReferenceCache(directory, [2] * 6, 3, f"fingerprint-{value}")
    try:
        fill_reference_cache(cache, online, [View()] * 6, lambda items: Batch([i for i, _ in items]), 1, 0, 1, "cpu")
    except ReferenceCacheBusyError as e:
        print("REFUSED", e, flush=True)
        sys.exit(3)
    print("FILLED", flush=True)
""")


def test_two_cache_fills_at_once_one_refuses_and_the_cache_holds_one_fill(tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", FILL, str(cache), str(v)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for v in (1.0, 2.0)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outs
    winner = 1.0 if procs[0].returncode == 0 else 2.0
    loser_out = outs[1 if winner == 1.0 else 0][0]
    assert f"the reference cache {cache} is being written by pid {procs[0 if winner == 1.0 else 1].pid}" in loser_out
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["fingerprint"] == f"fingerprint-{winner}"
    import numpy as np

    rows = np.fromfile(cache / "logits.f32", dtype=np.float32).reshape(12, 2, 3)
    assert (rows[:, 0] == winner).all() and (rows[:, 1] == winner + 1).all()  # one fill's rows only
    assert not (cache / "logits.f32.partial").exists()


def test_a_cache_is_valid_only_after_its_rows_are_renamed_into_place(tmp_path):
    import torch

    from pact.reference import ReferenceCache

    cache = ReferenceCache(tmp_path, [2, 1], 2, "f" * 64)
    cache.create()
    cache.write([0, 1], torch.ones(3, 2), torch.zeros(3, 2), [2, 1])
    assert cache.status() == "missing" and not cache.data_path.exists()  # filled rows, not yet valid
    cache.finish({"samples": 2})
    assert cache.status() == "valid" and not cache.partial_path.exists()
