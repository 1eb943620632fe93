"""PACTTrainer's resume: the newest intact checkpoint, and a run's identity by content (pact/trl/identity.py)."""
from __future__ import annotations

import json
import shutil

import pytest

from tests.e2e.test_train import setup, write_tokens  # noqa: F401  (the tiny aligned model and its tokens)
from tests.e2e.trl_run import trainer_for

pytestmark = pytest.mark.slow
STEPS = ("method=pact", "max_steps=4", "save_every=2")


def losses(history):
    return [r for r in history if "loss" in r and "train_runtime" not in r]


@pytest.fixture(scope="module")
def stopped(setup, tmp_path_factory):  # noqa: F811
    """A run stopped after step 2 (checkpoint-2 on disk), and the uninterrupted run's 4 steps."""
    from transformers import TrainerCallback

    from pact.tiny import tiny_tokenizer

    class StopAfterTwo(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_training_stop = True

    root = tmp_path_factory.mktemp("trl-resume")
    tokens = write_tokens(root / "tokens.json", json.loads(setup["tokens"].read_text())["ids"], tiny_tokenizer())
    whole = trainer_for(setup["model"], tokens, root / "whole", STEPS)
    whole.train()
    first = trainer_for(setup["model"], tokens, root / "run", STEPS, callbacks=[StopAfterTwo()],
                        save_strategy="steps", save_steps=2)
    first.train()
    return {"root": root, "tokens": tokens, "out": root / "run", "whole": losses(whole.state.log_history)}


def test_checkpoints_carry_their_identity_and_manifest(stopped):
    ckpt = stopped["out"] / "checkpoint-2"
    identity = json.loads((ckpt / "pact_identity.json").read_text())
    assert identity["k"] == 16 and identity["world_size"] == 1 and identity["global_batch"] == 2
    assert identity["config_keys"]["learning_rate"] == 1e-3 and len(identity["safety_tokens"]) == 64
    files = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert "pact_identity.json" in files and "trainer_state.json" in files


def test_resume_true_skips_a_checkpoint_cut_short_and_gives_the_uninterrupted_steps(setup, stopped):  # noqa: F811
    out = stopped["out"]
    torn = out / "checkpoint-4"  # killed while writing: some files, no manifest
    shutil.copytree(out / "checkpoint-2", torn)
    (torn / "manifest.json").unlink()
    state = json.loads((torn / "trainer_state.json").read_text())
    (torn / "trainer_state.json").write_text(json.dumps(dict(state, global_step=4)))
    next(torn.glob("*.safetensors")).write_bytes(b"")
    try:
        resumed = trainer_for(setup["model"], stopped["tokens"], out, STEPS, save_strategy="no")
        resumed.train(resume_from_checkpoint=True)
    finally:
        shutil.rmtree(torn)
    again = losses(resumed.state.log_history)
    assert [r["step"] for r in again] == [1, 2, 3, 4]  # resumed at step 2, not at the torn step 4
    for mine, theirs in zip(again, stopped["whole"]):
        for key in ("loss", "kl", "learning_rate"):
            assert abs(mine[key] - theirs[key]) < 1e-6, (mine["step"], key)


def test_a_checkpoint_path_without_identity_or_manifest_is_refused(setup, stopped):  # noqa: F811
    out = stopped["out"]
    torn = out / "checkpoint-3"
    shutil.copytree(out / "checkpoint-2", torn)
    (torn / "manifest.json").unlink()
    (torn / "pact_identity.json").unlink()
    try:
        resumed = trainer_for(setup["model"], stopped["tokens"], out, STEPS, save_strategy="no")
        with pytest.raises(ValueError, match="holds no pact_identity.json and no manifest.json"):
            resumed.train(resume_from_checkpoint=str(torn))
    finally:
        shutil.rmtree(torn)


def test_another_lora_config_is_refused_on_resume(setup, stopped):  # noqa: F811
    resumed = trainer_for(setup["model"], stopped["tokens"], stopped["out"], [*STEPS, "lora_alpha=32"],
                          save_strategy="no")
    with pytest.raises(ValueError, match=r"the config differs from the checkpoint's run: adapter\.default\.lora_alpha: "
                                         r"16 -> 32\. Resume"):
        resumed.train(resume_from_checkpoint=True)


def test_no_intact_checkpoint_is_refused_naming_each(tmp_path):
    from pact.trl.identity import intact_checkpoint

    with pytest.raises(ValueError, match="holds no checkpoint-N directory"):
        intact_checkpoint(tmp_path)
    (tmp_path / "checkpoint-6").mkdir()
    with pytest.raises(ValueError) as e:
        intact_checkpoint(tmp_path)
    assert "no intact checkpoint" in str(e.value) and "checkpoint-6 has no readable manifest.json" in str(e.value)


def test_a_tokens_file_regenerated_in_place_is_refused_on_resume(setup, stopped):  # noqa: F811
    from pact.tiny import tiny_tokenizer

    path = stopped["tokens"]
    before = path.read_text()
    ids = json.loads(before)["ids"]
    try:
        write_tokens(path, ids[:8], tiny_tokenizer())  # K 16 -> 8 at the same path
        trainer = trainer_for(setup["model"], path, stopped["out"], STEPS, save_strategy="no")
        with pytest.raises(ValueError) as e:
            trainer.train(resume_from_checkpoint=True)
        msg = str(e.value)
        assert "the safety tokens (ids and weights of the tokens file)" in msg and "k: 16 -> 8" in msg
        assert "set resume_changes=True" in msg
        with pytest.raises(ValueError, match="learning_rate: 0.001 -> 0.002"):  # a changed key, by name
            trainer_for(setup["model"], path, stopped["out"], (*STEPS, "learning_rate=2e-3"),
                        save_strategy="no").train(resume_from_checkpoint=str(stopped["out"] / "checkpoint-2"))
        from pact.trl.identity import check_trainer_resume

        told = trainer_for(setup["model"], path, stopped["out"], STEPS, save_strategy="no", resume_changes=True)
        check_trainer_resume(stopped["out"] / "checkpoint-2", told.run_identity(), told.args, 0)  # accepted
    finally:
        path.write_text(before)


def test_a_tokens_file_of_another_tokenizer_is_refused_by_the_trainer(setup, stopped, tmp_path):  # noqa: F811
    from pact.identify import SafetyTokens, SafetyTokensError

    other = SafetyTokens.load(stopped["tokens"])
    other.extra["tokenizer_vocab_sha256"] = "0" * 64  # identified with another tokenizer of the same size
    other.save(tmp_path / "other.json")
    with pytest.raises(SafetyTokensError, match="tokenizer mismatch: the safety tokens were identified with another"):
        trainer_for(setup["model"], tmp_path / "other.json", tmp_path / "out", STEPS)
