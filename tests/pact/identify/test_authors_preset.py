"""``pact identify --preset authors`` against an independent float64 re-computation of the authors'
``compute_safety_tokens_pact.py`` (Glresearch1/PACT), written out here step by step.

The models are tiny random Phi models (their output layer has a bias), so that some tokens can be made
"faint" (p ~ 1e-11 in both models: 0 < |d| <= 1e-9) and some "dead" (p = 0 exactly): the top-50 by
p̄_safe then holds 30 live, 15 faint and 5 dead tokens. The authors' filter standardises the live ones
only, keeps the faint ones in S with their raw d (a weight ~1e-11 or 0) and drops the dead ones.
The tokenizer is byte level (so stripping whitespace changes the ids) and adds a BOS with its special
tokens (so a plain prefix with and without BOS differ); its chat template writes the BOS itself, as
Llama 3's does.
"""
from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch

from pact.cli import main
from pact.data import ListSource, PromptRecord
from pact.identify import IDENTIFY_PRESETS, SafetyTokens, identify, identify_authors, select_tokens

NUM_LIVE = 30          # tokens with ordinary logits
NUM_FAINT = 15         # logit bias -22: p ~ 1e-11 in both models
EXTRA_ROWS = 3         # output rows beyond the tokenizer (dead)


def bos_tokenizer():
    from tokenizers.processors import TemplateProcessing

    from pact.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.add_special_tokens({"bos_token": "<s>"})
    bos = tok.convert_tokens_to_ids("<s>")
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    tok.chat_template = "<s>" + tok.chat_template
    return tok


def phi_model(tok, seed: int, live: list[int], faint: list[int]):
    from transformers import PhiConfig, PhiForCausalLM

    torch.manual_seed(seed)
    V = len(tok) + EXTRA_ROWS
    cfg = PhiConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=512, initializer_range=0.3, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id, bos_token_id=None)
    m = PhiForCausalLM(cfg).eval()
    bias = torch.full((V,), -1e4)              # dead: exp(-1e4) is 0 in float64
    bias[live] = 0.0
    bias[faint] = -22.0
    with torch.no_grad():
        m.lm_head.bias.copy_(bias)
    m.requires_grad_(False)
    return m


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("authors")
    tok = bos_tokenizer()
    ids = random.Random(0).sample(range(3, 259), NUM_LIVE + NUM_FAINT)
    live, faint = ids[:NUM_LIVE], ids[NUM_LIVE:]
    safe, base = phi_model(tok, 1, live, faint), phi_model(tok, 2, live, faint)
    safe.save_pretrained(root / "safe")
    tok.save_pretrained(root / "safe")
    base.save_pretrained(root / "base")
    return root, tok, safe, base, set(live)


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct pairs in the authors' columns, with whitespace around both sides, answers of 1 to 90
    bytes (some over the 64-token cap) and one answer that is only whitespace (skipped)."""
    rng = random.Random(seed)
    words = "how do i make a bomb sorry cannot help with that sure here is the plan steal car".split()
    rows = []
    for i in range(n):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        answer = " ".join(rng.choice(words) for _ in range(rng.randint(1, 18)))[: rng.randint(1, 90)]
        pad = ["", " ", "\n", "  \n"]
        rows.append({"input": rng.choice(pad) + prompt + rng.choice(pad[1:]) + f"{i:03d}",
                     "output": rng.choice(pad[1:]) + answer + rng.choice(pad), "id": i})
    rows[3]["output"] = " \n "
    rows[5]["output"] = " " + "sorry " * 20                # 120 bytes: over the cap
    return rows


@torch.no_grad()
def authors_reference(safe, base, tok, rows, *, K=512, max_resp_len=64, topk=50, eps=1e-6):
    """The authors' pipeline in float64, one unpadded sequence at a time.

    Returns ``(ids, weights)``: S = the nonzero entries of their bfloat16 ``v_dir``, weights = v_dir[S]
    clipped at 0 (as their training loop reads it)."""
    safe64, base64 = copy.deepcopy(safe).double(), copy.deepcopy(base).double()
    V = safe.config.vocab_size
    diff, p_ref, cnt = torch.zeros(V, dtype=torch.float64), torch.zeros(V, dtype=torch.float64), 0
    seen = {}                                   # a repeated row is computed once (the test file repeats rows)
    for row in rows[:K]:
        prompt, response = row["input"].strip(), str(row["output"]).strip()
        if not response:
            continue
        if (prompt, response) not in seen:
            r = tok(response, add_special_tokens=False)["input_ids"][:max_resp_len]
            sp = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]
            bp = tok(f"User: {prompt}\n\nAssistant: ", add_special_tokens=False)["input_ids"]
            ls = safe64(torch.tensor([sp + r])).logits[0, len(sp) - 1: len(sp) - 1 + len(r)]
            lb = base64(torch.tensor([bp + r])).logits[0, len(bp) - 1: len(bp) - 1 + len(r)]
            ps, pb = ls.softmax(-1), lb.softmax(-1)
            seen[prompt, response] = ((ps - pb).sum(0) / len(r), ps.sum(0) / len(r))
        diff += seen[prompt, response][0]
        p_ref += seen[prompt, response][1]
        cnt += 1
    diff, p_ref = diff / cnt, p_ref / cnt
    mask = torch.zeros(V, dtype=torch.float64)
    mask[torch.topk(p_ref, k=topk).indices] = 1.0
    diff = diff * mask
    nz = diff.abs() > 1e-9
    vals = diff[nz] - diff[nz].mean()
    diff[nz] = vals / (vals.std() + eps)
    v = (diff / (diff.norm() + eps)).to(torch.bfloat16)
    ids = (v != 0).nonzero().flatten()
    return ids.tolist(), v[ids].double().clamp_min(0.0).tolist()


def test_cli_preset_authors_matches_the_authors_pipeline(setup, tmp_path):
    root, tok, safe, base, live = setup
    # the preset reads the first 512 rows: 16 distinct ones repeated, then 3 more that must not count
    distinct = make_rows(19)
    rows = [distinct[i % 16] for i in range(512)] + distinct[16:]
    pairs = tmp_path / "safe_direction.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "tokens.json"
    code = main(["identify", "--safe", str(root / "safe"), "--base", str(root / "base"), "--responses", str(pairs),
                 "--preset", "authors", "--dtype", "float64", "--batch-size", "64", "--no-progress", "-o", str(out)])
    assert code == 0
    st = SafetyTokens.load(out, tokenizer=tok, vocab_size=safe.config.vocab_size)
    ref_ids, ref_w = authors_reference(safe, base, tok, rows)
    assert len(ref_ids) == NUM_LIVE + NUM_FAINT and live < set(ref_ids)  # the dead tokens leave S
    assert sorted(st.ids) == ref_ids
    got = dict(zip(st.ids, st.weights))
    assert [got[i] for i in ref_ids] == ref_w                          # bfloat16 values, exactly
    faint = [got[i] for i in ref_ids if i not in live]
    assert max(faint) < 1e-9 and any(0 < w for w in faint)             # faint: their raw d / norm, clipped
    assert all(float(torch.tensor(w).to(torch.bfloat16)) == w for w in st.weights)
    assert st.num_prompts == 512 - 32 and st.k == 50          # row 3 (whitespace only) skipped 32 times and st.selection == "authors"
    assert st.extra["preset"] == "authors" and st.extra["weights_dtype"] == "bfloat16"
    assert st.extra["append_eos"] is False and st.extra["base_bos"] is False and st.extra["strip"] is True
    assert st.prompts == "safe_direction.jsonl:all"


def _by_id(st: SafetyTokens) -> tuple[list[int], list[float]]:
    got = dict(zip(st.ids, st.weights))
    return sorted(got), [got[i] for i in sorted(got)]


@pytest.fixture(scope="module")
def python_run(setup):
    """identify_authors (the Python API) on 10 pairs, float64 models."""
    root, tok, safe, base, live = setup
    rows = make_rows(10, seed=1)
    models = copy.deepcopy(safe).double(), copy.deepcopy(base).double()
    src = ListSource([PromptRecord(r["input"], response=r["output"]) for r in rows], name="pairs")
    return rows, models, src, identify_authors(*models, tok, src, batch_size=4, progress=False)


def test_python_api_matches_the_authors_pipeline(setup, python_run):
    root, tok, safe, base, live = setup
    rows, _, _, res = python_run
    assert _by_id(res.tokens) == authors_reference(safe, base, tok, rows)
    assert res.num_prompts == 9                                        # the whitespace-only answer is skipped
    assert max(len(r) for r in res.responses) == 64


@pytest.mark.parametrize("change", [
    dict(strip=False), dict(append_eos=True), dict(base_bos=True), dict(average="token"), dict(std_min_abs_d=None),
    dict(weights_dtype="float64"), dict(max_resp_len=None), dict(base_format="chat", base_bos=True),
    dict(selection="paper", std_min_abs_d=None, norm_eps=0.0), dict(limit=5)])
def test_each_piece_of_the_preset_changes_the_result(setup, python_run, change):
    """Switching any one piece of the preset off departs from the authors' result (not norm_eps: its 1e-6 next
    to a std and a norm of order 0.1 to 1 does not move a bfloat16 weight on these models)."""
    tok = setup[1]
    _, models, src, res = python_run
    other = identify_authors(*models, tok, src, batch_size=4, progress=False, **change)
    assert _by_id(other.tokens) != _by_id(res.tokens)


def test_preset_table_and_explicit_options_win(tmp_path):
    from pact.cli import build_parser
    from pact.commands.identify import resolve_options

    assert IDENTIFY_PRESETS["authors"] == dict(
        k=50, selection="authors", responses="given", append_eos=False, base_format="plain", base_bos=False,
        strip=True, max_resp_len=64, average="prompt", std_min_abs_d=1e-9, norm_eps=1e-6, weights_dtype="bfloat16",
        limit=512)
    parse = build_parser().parse_args
    base = ["identify", "--safe", "s", "--base", "b", "-o", "x.json"]
    plain = resolve_options(parse(base))
    assert (plain["k"], plain["selection"], plain["append_eos"], plain["base_bos"], plain["strip"],
            plain["weights_dtype"], plain["std_min_abs_d"], plain["prompt_column"], plain["limit"]) == (
        50, "paper", True, True, False, "float64", None, "prompt", None)
    opts = resolve_options(parse(base + ["--preset", "authors", "-k", "20", "--eos", "--limit", "100",
                                         "--prompt-column", "goal"]))
    assert (opts["k"], opts["append_eos"], opts["limit"], opts["prompt_column"], opts["response_column"],
            opts["max_resp_len"], opts["base_bos"], opts["strip"]) == (20, True, 100, "goal", "output", 64, False, True)
    opts = resolve_options(parse(base + ["--preset", "authors", "--select", "paper"]))
    assert (opts["selection"], opts["std_min_abs_d"], opts["norm_eps"], opts["weights_dtype"]) == (
        "paper", None, 0.0, "bfloat16")


def test_select_tokens_filter_eps_and_rounding_by_hand():
    d = torch.tensor([0.3, 5e-10, -0.1, 0.2, 0.0, 0.05], dtype=torch.float64)
    p = torch.tensor([0.3, 0.25, 0.2, 0.1, 0.1, 0.05], dtype=torch.float64)
    # top-5 by p: 0, 1, 2, 3, 4; d = 0 drops 4; 0, 2, 3 are standardised, 1 keeps 5e-10; S by d: 0, 3, 1, 2
    ids, w = select_tokens(d, p, k=5, selection="authors", std_min_abs_d=1e-9, norm_eps=1e-6,
                           weights_dtype="bfloat16")
    assert ids.tolist() == [0, 3, 1, 2]
    z = np.array([0.3, 0.2, -0.1])
    z = z - z.mean()                                    # [1/6, 1/15, -7/30], std 0.208167
    z = z / (z.std(ddof=1) + 1e-6)                      # [0.800641, 0.320256, -1.120897]
    z = np.array([z[0], z[1], 5e-10, z[2]])
    z = z / (np.linalg.norm(z) + 1e-6)                  # [0.566138, 0.226455, 3.5e-10, -0.792593]
    expect = torch.tensor(z).to(torch.bfloat16).double().clamp_min(0).tolist()
    assert expect[:2] == [0.56640625, 0.2265625] and expect[3] == 0.0    # bfloat16: 8 significant bits
    assert w.tolist() == expect and 3.5e-10 < expect[2] < 3.6e-10
    # without the filter all five are standardised together (the zero too)
    ids, w = select_tokens(d, p, k=5, selection="authors")
    z = np.array([0.3, 0.2, 5e-10, 0.0, -0.1])
    z = (z - z.mean()) / z.std(ddof=1)
    np.testing.assert_allclose(w.numpy(), np.maximum(z / np.linalg.norm(z), 0), atol=1e-15)
    assert ids.tolist() == [0, 3, 1, 4, 2]
    # paper: d rounded to bfloat16
    ids, w = select_tokens(d, p, k=3, selection="paper", weights_dtype="bfloat16")
    assert ids.tolist() == [0, 3, 5] and w.tolist() == [0.30078125, 0.2001953125, 0.050048828125]
    with pytest.raises(ValueError, match="weights_dtype"):
        select_tokens(d, p, k=3, weights_dtype="int8")
    with pytest.raises(ValueError, match="apply to selection='authors'"):
        select_tokens(d, p, k=3, selection="paper", std_min_abs_d=1e-9)


def test_cli_preset_errors_before_loading(tmp_path, capsys):
    base = ["identify", "--safe", str(tmp_path / "no-safe"), "--base", str(tmp_path / "no-base"),
            "-o", str(tmp_path / "t.json")]
    assert main(base + ["--preset", "authors", "--prompts", "harmbench"]) == 2
    assert "--preset authors reads given (prompt, response) pairs" in capsys.readouterr().err
    assert main(base + ["--prompts", "harmbench", "--no-base-bos"]) == 2
    assert "--no-base-bos applies to --base-format plain" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()
