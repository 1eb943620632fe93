"""Every row of a data file is checked, with the file and row in the message; cut answers are counted."""
from __future__ import annotations

import json

import pytest

from pact.data import PromptSourceError, get_source
from pact.data.tasks import load_harmful, load_task


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("task, rows, message", [
    # the third row lacks a column the first two have
    ("sst2", [{"text": "good", "label": 1}, {"text": "bad", "label": 0}, {"label": 1}],
     r"row 3 has no 'text' field \(its fields: \['label'\]\)"),
    ("sst2", [{"text": "good", "label": 1}, {"text": None, "label": 0}],
     r"row 2 has a null 'text' \(an empty or missing cell\)"),
    ("gsm8k", [{"question": "1+1?", "answer": "2 #### 2"}, {"question": "2+2?", "answer": 4}],
     r"row 2 has a non-text 'answer': int 4; write it as text"),
    ("gsm8k", [{"question": None, "answer": "2 #### 2"}], r"row 1 has a null 'question'"),
    ("gsm8k", [{"question": "q", "answer": "2 #### 2"}, {"question": "q2"}], r"row 2 has no 'answer' field"),
    ("gsm8k", [{"question": "q", "answer": "no final answer"}], r"row 1: GSM8K answer without '#### N'"),
    ("agnews", [{"text": "t", "label": None}], r"row 1 has a null 'label'"),
    ("bbq", [{"text": "t", "label": "A"}, {"text": 7, "label": "B"}], r"row 2 has a non-text 'text': int 7"),
])
def test_task_file_rows_are_each_checked_naming_file_and_row(tmp_path, task, rows, message):
    f = _jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(PromptSourceError, match=rf"^{f}.*{message}") as e:
        load_task(task, file=str(f))
    assert "None" not in str(e.value)  # never a prompt "None"


def test_a_limit_does_not_skip_checking_later_rows(tmp_path):
    f = _jsonl(tmp_path / "rows.jsonl", [{"text": "good", "label": 1}, {"text": "bad"}])
    with pytest.raises(PromptSourceError, match="row 2 has no 'label' field"):
        load_task("sst2", file=str(f), limit=1)


def test_csv_short_row_and_eval_suite_file_name_the_row(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text("sentence,label\ngreat movie,1\nawful\n")
    with pytest.raises(PromptSourceError, match=rf"{f} row 2 has a null 'label'"):
        load_task("sst2", file=str(f), fields={"text": "sentence", "label": "label"})
    from pact.eval.suites import load_suite

    with pytest.raises(PromptSourceError, match=rf"suite sst2: {f} row 2 has a null 'label'"):
        load_suite("sst2", file=str(f))


def test_prompt_file_rows_are_each_checked(tmp_path):
    f = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"text": "b"}, {"prompt": None}])
    with pytest.raises(PromptSourceError, match=rf"^{f} row 2 has no 'prompt' field \(its fields: \['text'\]\)"):
        get_source(f).size
    g = _jsonl(tmp_path / "q.jsonl", [{"prompt": "a"}, {"prompt": None}])
    with pytest.raises(PromptSourceError, match=rf"^{g} row 2 has a null 'prompt'"):
        get_source(g).size
    h = _jsonl(tmp_path / "r.jsonl", [{"prompt": "a", "response": "x"}, {"prompt": "b", "response": 3}])
    with pytest.raises(PromptSourceError, match=rf"^{h} row 2 has a non-text 'response': int 3"):
        get_source(h).size


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "json", "tsv"])
def test_non_utf8_file_names_the_file(tmp_path, suffix):
    f = tmp_path / f"latin1.{suffix}"
    body = {"csv": "prompt\ncaf\u00e9\n", "tsv": "prompt\ncaf\u00e9\n", "jsonl": '{"prompt": "caf\u00e9"}\n',
            "json": '[{"prompt": "caf\u00e9"}]'}[suffix]
    f.write_bytes(body.encode("latin-1"))
    with pytest.raises(PromptSourceError, match=rf"^{f}: not UTF-8 text \(byte 0xe9 at offset \d+.*save the file as UTF-8"):
        get_source(f).size
    with pytest.raises(PromptSourceError, match=rf"{f}: not UTF-8"):
        load_task("sst2", file=str(f))


def test_harmful_file_with_wrong_columns_suggests_what_pact_train_reads(tmp_path):
    f = _jsonl(tmp_path / "h.jsonl", [{"goal": "do harm", "target": "Sure"}])
    with pytest.raises(PromptSourceError) as e:
        load_harmful(str(f))
    msg = str(e.value)
    assert "--prompt-column" not in msg
    assert msg == (f"{f}: no column 'prompt' (columns: ['goal', 'target']); a harmful_source file needs the columns "
                   "prompt and response: rename the file's columns to these")
    g = _jsonl(tmp_path / "g.jsonl", [{"prompt": "do harm", "answer": "Sure"}])
    with pytest.raises(PromptSourceError, match=r"no response column 'response' \(columns: \['prompt', 'answer'\]\); "
                                                "a harmful_source file needs the columns prompt and response"):
        load_harmful(str(g))


def _cfg(tmp_path, **over):
    from pact.training.config import load_config

    task = _jsonl(tmp_path / "task.jsonl", [{"text": f"sentence number {i}", "label": i % 2} for i in range(20)])
    harm = _jsonl(tmp_path / "harm.jsonl", [{"prompt": f"harm {i}", "response": "Sure, " + "step " * 40}
                                            for i in range(10)])
    args = {"task": "sst2", "task_file": str(task), "harmful_source": str(harm), "num_samples": 10,
            "harmful_fraction": 0.3, "max_length": 160, **over}
    return load_config("configs/tiny.yaml", [f"{k}={v}" for k, v in args.items()] +
                       (["max_truncated_fraction=0.25"] if "max_truncated_fraction" not in over else []),
                       check_files=False)


def test_cut_answers_are_counted_and_refused_above_the_share(tmp_path):
    from pact.data.views import ViewBuilder
    from pact.tiny import tiny_tokenizer
    from pact.training.config import ConfigError, TrainConfig
    from pact.training.data import load_views

    assert TrainConfig.max_truncated_fraction == 0.25  # the documented default
    tok = tiny_tokenizer()
    cfg = _cfg(tmp_path)
    # byte-level: the harmful answers (~215 tokens) do not fit 160; the sentiment labels do
    with pytest.raises(ConfigError, match=r"^3 of 10 answers \(30.0 %; harmful 3\) are cut to fit max_length=160 and "
                                          r"lose their end-of-turn token .*more than max_truncated_fraction=0.25; "
                                          r"raise max_length, or max_truncated_fraction"):
        load_views(cfg, ViewBuilder(tok, cfg.max_length, cfg.post_bos))
    cfg = _cfg(tmp_path, max_truncated_fraction=0.5)
    views, record, notes = load_views(cfg, ViewBuilder(tok, cfg.max_length, cfg.post_bos))
    assert sum(v.cut_tokens > 0 for v in views) == 3 and all(v.cut_tokens > 0 for v in views if v.harmful)
    assert record["truncated"]["answers"] == 3 and record["truncated"]["of"] == 10
    assert record["truncated"]["tokens_cut"] == sum(v.cut_tokens for v in views) > 0
    assert any(n.startswith("3 of 10 answers (30.0 %; harmful 3) are cut") for n in notes)
    # a long enough max_length: nothing cut, nothing said
    cfg = _cfg(tmp_path, max_length=400)
    views, record, notes = load_views(cfg, ViewBuilder(tok, cfg.max_length, cfg.post_bos))
    assert record["truncated"]["answers"] == 0 and not any("are cut" in n for n in notes)
    with pytest.raises(ConfigError, match=r"max_truncated_fraction=1.5 must be in \[0, 1\]"):
        _cfg(tmp_path, max_truncated_fraction=1.5)
    with pytest.raises(ConfigError, match="max_truncated_fraction=nan"):
        _cfg(tmp_path, max_truncated_fraction="nan")


def test_trl_dataset_cut_answers_are_counted_in_a_warning():
    from datasets import Dataset

    from pact.data.views import ViewBuilder
    from pact.tiny import tiny_tokenizer
    from pact.trl.data import build_views

    rows = {"prompt": ["hi", "yo", "hey"], "completion": ["ok", "step " * 40, "fine"]}
    with pytest.warns(UserWarning, match=r"the train dataset: 1 of 3 answers are cut to fit max_length=64 and lose "
                                         r"their end-of-turn token \(\d+ answer tokens cut\)"):
        views, dropped = build_views(Dataset.from_dict(rows), ViewBuilder(tiny_tokenizer(), 64), "train")
    assert dropped == 0 and [v.cut_tokens > 0 for v in views] == [False, True, False]


def test_non_utf8_answers_file_of_pact_judge_names_the_file(tmp_path, capsys):
    from pact.cli import main

    f = tmp_path / "gens.jsonl"
    f.write_bytes('{"prompt": "caf\u00e9", "response": "no"}\n'.encode("latin-1"))
    assert main(["judge", "-i", str(f), "-o", str(tmp_path / "v.jsonl"), "--no-progress"]) == 2
    assert f"{f}: not UTF-8 text (byte 0xe9 at offset 15)" in capsys.readouterr().err
