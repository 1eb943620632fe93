"""The ``pact`` front door (bare, ``--help``, every subcommand's ``--help``); ``pact identify`` / ``pact intervene``
end to end on tiny local models (SmolLM2 (GGUF) vs a tiny base: tests/e2e/test_cli.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import PROMPTS
from pact.cli import COMMANDS, build_parser, main
from pact.identify import SafetyTokens


def _subcommands() -> dict:
    """``{name: parser}`` of every registered subcommand (``intervention_report`` registers ``intervention-report``)."""
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def test_every_module_in_commands_registers_one_subcommand():
    names = _subcommands()
    assert len(names) == len(COMMANDS) == 9
    assert sorted(n.replace("-", "_") for n in names) == sorted(COMMANDS)


def test_bare_pact_and_pact_help_exit_0_listing_every_command(capsys):
    assert main([]) == 0
    bare = capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text == bare and text.startswith("usage: pact")
    for name, sub in _subcommands().items():
        assert name in text
    assert "95% Wilson interval" in text  # the eval line, its percent sign printed once


@pytest.mark.parametrize("name", sorted(n.replace("_", "-") for n in COMMANDS))
def test_every_subcommand_help_exits_0_with_its_text(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pact {name}") and "options:" in out
    assert _subcommands()[name].description.split(".")[0][:40] in " ".join(out.split())


def test_console_entry_point_help_in_a_fresh_process():
    r = subprocess.run([sys.executable, "-m", "pact", "--help"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0 and "usage: pact" in r.stdout and "intervention-report" in r.stdout, r.stderr


@pytest.fixture(scope="module")
def prompts_csv(tmp_path_factory):
    p = tmp_path_factory.mktemp("p") / "harmful.csv"
    p.write_text("text,id\n" + "".join(f"{x},{i}\n" for i, x in enumerate(PROMPTS)))
    return p


def _identify_args(tiny_dir, prompts_csv, out, *extra):
    return ["identify", "--safe", str(tiny_dir / "safe"), "--base", str(tiny_dir / "base"), "--prompts",
            str(prompts_csv), "--prompt-column", "text", "-k", "6", "--max-new-tokens", "6", "--batch-size", "2",
            "--no-progress", "-o", str(out), *extra]


def test_identify_cli_matches_python_api(tiny_dir, prompts_csv, tmp_path, tok, safe_model, base_model, capsys):
    from pact.data import get_source
    from pact.identify import identify

    out = tmp_path / "tokens.json"
    assert main(_identify_args(tiny_dir, prompts_csv, out, "--select", "authors", "--save-responses",
                               str(tmp_path / "resp.jsonl"))) == 0
    printed = capsys.readouterr().out
    assert f"wrote 6 tokens (authors) to {out}" in printed
    st = SafetyTokens.load(out, tokenizer=tok, model=safe_model)
    api = identify(safe_model, base_model, tok, get_source(prompts_csv, column="text"), k=6, selection="authors",
                   max_new_tokens=6, batch_size=2, progress=False).tokens
    assert st.ids == api.ids and st.num_steps == api.num_steps and st.num_prompts == len(PROMPTS)
    assert max(abs(a - b) for a, b in zip(st.scores, api.scores)) < 1e-6
    assert st.prompts == "harmful.csv:all" and st.safe_model == str(tiny_dir / "safe")
    pairs = [json.loads(line) for line in (tmp_path / "resp.jsonl").read_text().splitlines()]
    assert [p["prompt"] for p in pairs] == PROMPTS
    assert sum(len(p["response_ids"]) for p in pairs) == st.num_steps


def test_python_dash_m_and_responses_file(tiny_dir, prompts_csv, tmp_path, tok, safe_model):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "response": "sorry i cannot help with that"}) + "\n"
                             for p in PROMPTS))
    out1, out2 = tmp_path / "a.json", tmp_path / "b.json"
    args = ["identify", "--safe", str(tiny_dir / "safe"), "--base", str(tiny_dir / "base"), "--responses",
            str(pairs), "--base-format", "plain", "-k", "5", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "pact", *args, "-o", str(out1)], capture_output=True, text=True,
                       env=env, timeout=240)
    assert r.returncode == 0, r.stderr
    script = os.path.join(os.path.dirname(sys.executable), "pact")   # the console script
    out3 = tmp_path / "c.json"
    r = subprocess.run([script, *args, "-o", str(out3)], capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr
    assert main([*args, "-o", str(out2)]) == 0
    a, b = SafetyTokens.load(out1, tokenizer=tok), SafetyTokens.load(out2, tokenizer=tok)
    c = SafetyTokens.load(out3, tokenizer=tok)
    assert a.ids == b.ids == c.ids and a.weights == b.weights == c.weights
    n_resp = len(tok("sorry i cannot help with that", add_special_tokens=False)["input_ids"]) + 1  # + end of turn
    assert a.num_steps == len(PROMPTS) * n_resp and a.extra["responses"] == "given"
    assert a.extra["base_format"] == "plain"


def test_identify_cli_errors(tiny_dir, tmp_path, capsys):
    code = main(["identify", "--safe", str(tiny_dir / "safe"), "--base", str(tiny_dir / "base"), "--prompts",
                 str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "t.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "prompt file not found" in err and "missing.jsonl" in err
    assert not (tmp_path / "t.json").exists()
    code = main(["identify", "--safe", str(tiny_dir / "safe"), "--base", str(tiny_dir / "base"), "-o", "x.json"])
    assert code == 2 and "--prompts is required" in capsys.readouterr().err


@pytest.mark.parametrize("mode, control", [("boost", "safety"), ("ablate", "safety"), ("ablate", "random"),
                                           ("none", "safety")])
def test_intervene_cli(tiny_dir, prompts_csv, tmp_path, tok, mode, control):
    tokens = tmp_path / "tokens.json"
    assert main(_identify_args(tiny_dir, prompts_csv, tokens)) == 0
    st = SafetyTokens.load(tokens)
    out = tmp_path / "gen.jsonl"
    assert main(["intervene", "--model", str(tiny_dir / "safe"), "--tokens", str(tokens), "--mode", mode,
                 "--control", control, "--prompts", str(prompts_csv), "--prompt-column", "text",
                 "--max-new-tokens", "8", "--no-progress", "--seed", "3", "-o", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in recs] == PROMPTS
    assert all(r["mode"] == mode and r["control"] == control and r["token_set_size"] == len(st.ids) for r in recs)
    assert all(1 <= r["num_tokens"] <= 8 and r["finish"] in ("eos", "length") for r in recs)
    words = {w for r in recs for w in r["response"].split()}
    s_words = {s.strip() for s in st.strings if s.strip()}
    if (mode, control) == ("ablate", "safety"):
        assert not words & s_words                         # no safety token is ever generated
    if mode == "boost":
        assert words & s_words


def test_intervene_refuses_wrong_vocab(tiny_dir, prompts_csv, tmp_path, capsys):
    d = {"safe_model": "x", "base_model": "y", "vocab_size": 100, "k": 2, "selection": "paper", "ids": [1, 2],
         "strings": ["a", "b"], "weights": [0.2, 0.1], "scores": [0.2, 0.1], "mean_safe_prob": [0.3, 0.2],
         "prompts": "p", "num_prompts": 1, "num_steps": 3}
    (tmp_path / "t.json").write_text(json.dumps(d))
    code = main(["intervene", "--model", str(tiny_dir / "safe"), "--tokens", str(tmp_path / "t.json"),
                 "--prompts", str(prompts_csv), "--prompt-column", "text", "--no-progress",
                 "-o", str(tmp_path / "g.jsonl")])
    assert code == 2 and not (tmp_path / "g.jsonl").exists()
    assert "vocabulary mismatch" in capsys.readouterr().err
