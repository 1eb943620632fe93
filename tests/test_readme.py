"""The README and docs/*.md say what the code does: their code blocks run (or are marked, with the reason, and
then compile and import), their `pact` commands parse, their links resolve, and the README stays a front door."""
from __future__ import annotations

import ast
import importlib
import os
import re
import shlex

import pytest
import torch

from tests.doc_text import (README, REPO, code_blocks, doc_files, flat, heading_anchors, marked_block, marked_blocks,
                            named_objects, named_paths)

RUNS_IN = re.compile(r"^(?P<name>[\w-]+): this block runs in (?P<test>\S+)$")
NOT_RUN = re.compile(r"^not run: \S")
HISTORY = re.compile(r"previous version|first version|earlier run|before this change|commit [0-9a-f]{7}|issue [0-9]+",
                     re.I)


def run_block(name: str, monkeypatch=None, tmp_path=None) -> dict:
    block = marked_block(name)
    if monkeypatch is not None:
        monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.code, block.where, "exec"), namespace)
    return namespace


def rel_err(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# -- the README's loss example (and any other block marked readme-test) ----------------------------------------

def test_readme_example_runs(capsys):
    blocks = marked_blocks("readme-test")
    assert blocks and blocks[0].path == README, "README.md lost its marked example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block.code, block.where, "exec"), namespace)
        logits = namespace["logits"]
        assert logits.grad is not None and logits.grad.abs().sum() > 0
        assert namespace["out"].loss.requires_grad
    assert "loss " in capsys.readouterr().out


def test_module_example_equals_the_function_and_the_float64_oracle(capsys):
    """docs/kernels.md: PACTLoss with the authors' preset and [rows, V] references is pact_loss with the same
    settings, and both are the naive backend's loss on float64 copies (value and gradient)."""
    from pact_kernels import PACTConfig, pact_loss

    ns = run_block("module-example")
    assert abs(ns["out"].loss.item() - ns["same"].loss.item()) < 1e-6
    args = [ns[k].detach().double() if ns[k].is_floating_point() else ns[k]
            for k in ("labels", "ref_full", "ref_post", "safety_ids", "safety_weights", "answer_pos")]
    z = ns["logits"].detach().double().requires_grad_()
    want = pact_loss(z, *args, backend="naive", **PACTConfig.authors().as_kwargs())
    want.loss.backward()
    assert rel_err(ns["out"].loss.detach(), want.loss.detach()) < 1e-5
    assert rel_err(ns["logits"].grad, z.grad) < 1e-5  # out.loss.backward() ran once, on the module's loss
    assert "module " in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the Triton backend needs a GPU or TRITON_INTERPRET=1 (as scripts/test.sh sets)")
def test_triton_example_equals_the_oracle_and_writes_the_gradient_in_place():
    """docs/backends.md: the triton backend's loss and gradient are the float64 oracle's; with inplace_grad the
    buffer that held the logits holds the same gradient afterwards."""
    from pact_kernels import pact_loss

    ns = run_block("triton-example")
    names = ("labels", "ref_full", "ref_post", "safety_ids", "safety_weights", "answer_pos")
    args = [ns[k].double() if ns[k].is_floating_point() else ns[k] for k in names]
    z = ns["logits"].detach().double().requires_grad_()
    want = pact_loss(z, *args, backend="naive")
    want.loss.backward()
    assert rel_err(ns["out"].loss.detach().cpu(), want.loss.detach().cpu()) < 1e-5
    assert rel_err(ns["logits"].grad.cpu(), z.grad.cpu()) < 1e-5
    assert rel_err(ns["buffer"].cpu(), z.grad.cpu()) < 1e-5


def test_identify_example_runs_on_tiny_models(monkeypatch, tmp_path):
    """docs/identify.md: identify gives [V] float64 sums; the authors' preset on one given pair writes a tokens
    file that loads against the model, ids in the file's order, weights non-negative."""
    from pact.identify import SafetyTokens

    ns = run_block("identify-example", monkeypatch, tmp_path)
    vocab = ns["safe_model"].config.vocab_size
    res, S = ns["res"], ns["S"]
    assert res.d.shape == (vocab,) and res.d.dtype == torch.float64
    assert res.mean_safe_prob.shape == (vocab,)
    assert 0 < len(S.ids) <= 50 and list(S.ids) == list(res.tokens.ids)
    assert all(w >= 0 for w in S.weights)
    assert SafetyTokens.load(tmp_path / "runs" / "identify" / "tokens.json", vocab_size=vocab).ids == S.ids


# -- every block: runs in a named test, or is marked not run and then compiles and imports -------------------

def test_every_python_block_runs_in_a_named_test_or_says_why_not():
    blocks = [b for b in code_blocks() if b.lang == "python"]
    assert len(blocks) >= 5
    for b in blocks:
        runs, skip = RUNS_IN.match(b.mark), NOT_RUN.match(b.mark)
        assert runs or skip, (f"{b.where}: a python block needs <!-- NAME: this block runs in tests/... --> "
                              f"or <!-- not run: REASON --> before it (found {b.mark!r})")
        if runs:
            test = REPO / runs["test"]
            assert test.is_file() and f'"{runs["name"]}"' in test.read_text(), (
                f"{b.where}: {runs['test']} does not read the block {runs['name']!r}")
            continue
        tree = ast.parse(b.code, b.where)  # a block we cannot run still compiles ...
        for node in ast.walk(tree):  # ... and every name it imports exists
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{b.where}: {node.module} has no {alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, split as the shell does."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        start = 0
        for i, word in enumerate(words + ["&&"]):
            if word == "&&":
                commands.append(words[start:i])
                start = i + 1
    return [c for c in commands if c]


def train_argv_ok(argv: list[str], where: str) -> None:
    """``pact train`` / ``pact/train.py`` arguments: they parse, the config and overlays exist, the config loads."""
    from pact.train import parse_args
    from pact.training.config import load_config

    args = parse_args(argv)
    overrides = list(args.overrides)
    for item in overrides:
        if item.startswith("@"):
            assert (REPO / item[1:]).is_file(), f"{where}: no overlay {item[1:]}"
    if args.config:
        assert (REPO / args.config).is_file(), f"{where}: no config {args.config}"
        load_config(str(REPO / args.config), [o if not o.startswith("@") else "@" + str(REPO / o[1:])
                                              for o in overrides], check_files=False)


def test_every_pact_command_in_a_bash_block_parses():
    """Each `pact ...`, `python -m pact ...` and `deepspeed ... pact/train.py ...` line of README.md and docs/*.md
    parses with the command's own parser (subcommand, options), and a training command's config, overlays and
    key=value overrides load (lines with a `...` placeholder are skipped)."""
    from pact.cli import build_parser

    parser = build_parser()
    seen = 0
    for b in code_blocks():
        if b.lang not in ("bash", "sh"):
            continue
        for words in shell_commands(b.code):
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
                words = words[1:]
            if not words or "..." in words:
                continue
            if words[:3] == ["python", "-m", "pact"]:
                words = ["pact", *words[3:]]
            where = f"{b.where}: {' '.join(words)}"
            if words[0] == "pact":
                try:
                    args, extra = parser.parse_known_args(words[1:])
                except SystemExit as e:
                    raise AssertionError(f"{where} does not parse") from e
                assert all("=" in x for x in extra) and (not extra or hasattr(args, "overrides")), where
                if args.command == "train":
                    train_argv_ok(words[2:], where)
                seen += 1
            elif words[0] == "deepspeed" and "pact/train.py" in words:
                train_argv_ok(words[words.index("pact/train.py") + 1:], where)
                seen += 1
    assert seen >= 20


def test_every_relative_link_resolves():
    """Links and images of README.md and docs/*.md point to files that exist, and #anchors to their headings."""
    for path in doc_files():
        text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            assert dest.exists(), f"{path.relative_to(REPO)}: link to {target}, no such file"
            if anchor and dest.suffix == ".md":
                assert anchor in heading_anchors(dest), f"{path.relative_to(REPO)}: no heading #{anchor} in {file}"


def test_every_repository_path_named_exists():
    """A path of this repository in backticks (`pact/train.py`, `configs/paper/`) names a file or folder that
    exists: docs follow the code when it moves."""
    named = {(path.relative_to(REPO), p) for path in doc_files() for p in named_paths(path)}
    assert len(named) >= 40
    missing = sorted(f"{doc}: {p}" for doc, p in named if not (REPO / p.rstrip("/")).exists())
    assert not missing, missing


def resolves(name: str) -> bool:
    """``pact.eval.judges.KeywordJudge``: the longest importable module prefix, then attributes."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            continue
    else:
        return False
    for attr in parts[i:]:
        if not hasattr(obj, attr):
            return False
        obj = getattr(obj, attr)
    return True


def test_every_module_and_object_named_resolves():
    """`pact.x.y` / `pact_kernels.Z` in backticks import (the optional CUDA extension aside): docs follow the code
    when it is renamed."""
    named = {(path.relative_to(REPO), n) for path in doc_files() for n in named_objects(path)}
    assert len(named) >= 10
    missing = sorted(f"{doc}: {n}" for doc, n in named if n != "pact_kernels._cuda" and not resolves(n))
    assert not missing, missing


# -- the README as a front door; docs say what the code does -------------------------------------------------

def test_readme_is_a_front_door_and_history_lives_in_the_changelog():
    assert len(README.read_text().splitlines()) <= 250
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and "### Added" in changelog
    for path in doc_files():
        found = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if HISTORY.search(line)]
        assert not found, f"{path.relative_to(REPO)} tells history (CHANGELOG.md's job): {found}"


def test_docs_index_lists_every_page_and_the_cli_page_every_command():
    from pact.cli import COMMANDS

    index = (REPO / "docs" / "index.md").read_text()
    for page in sorted((REPO / "docs").glob("*.md")):
        assert page.name == "index.md" or f"]({page.name})" in index, f"docs/index.md does not list {page.name}"
    cli = flat(REPO / "docs" / "cli.md")
    for name in COMMANDS:
        assert f"`pact {name.replace('_', '-')}`" in cli, f"docs/cli.md does not describe pact {name}"


def test_readme_names_the_ci_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci and "./scripts/test.sh" in README.read_text()


def test_readme_starts_with_install_then_pact_demo():
    first = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)
    commands = [ln.split("#")[0].strip() for ln in first.splitlines() if ln.split("#")[0].strip()]
    assert commands[0].startswith("pip install") and "requirements/data.txt" in commands[0]
    assert commands[1:] == ["pact demo"]
    assert "demo" in (README.parent / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]


def test_eval_page_lists_every_suite():
    """docs/eval.md's suite table has one row per suite of pact.eval.suites, with its column."""
    from pact.eval.suites import SUITES

    text = (REPO / "docs" / "eval.md").read_text()
    for name, suite in SUITES.items():
        assert f"| `{name}` | {suite.column} |" in text, f"docs/eval.md has no row for the suite {name}"


def test_identify_page_names_every_prompt_source():
    """docs/identify.md names every registered prompt source (offline packages and hub sets)."""
    from pact.data.sources import HUB_SOURCES, PACKAGE_SOURCES

    text = (REPO / "docs" / "identify.md").read_text()
    for name in [*PACKAGE_SOURCES, *HUB_SOURCES]:
        assert f"`{name}`" in text, f"docs/identify.md does not name the prompt source {name}"


def test_readme_layout_names_folders_that_exist():
    """The README's Layout block: each line's first word (`pact_kernels/`, `scripts/test.sh`) exists."""
    text = README.read_text()
    layout = re.search(r"^## Layout\n\n```\n(.*?)^```", text, re.S | re.M).group(1)
    named = [line.split()[0] for line in layout.splitlines() if line and not line[0].isspace()]
    assert len(named) >= 6
    assert all((REPO / p.rstrip("/")).exists() for p in named), [p for p in named if not (REPO / p).exists()]
