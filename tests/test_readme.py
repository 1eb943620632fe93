"""The README's marked usage example runs as written."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
MARK = "<!-- readme-test"


def marked_blocks():
    text = README.read_text()
    return [m.group(1) for m in re.finditer(re.escape(MARK) + r".*?-->\s*```python\n(.*?)```", text, re.S)]


def test_readme_example_runs(capsys):
    blocks = marked_blocks()
    assert blocks, "README.md lost its marked example"
    for code in blocks:
        namespace: dict = {}
        exec(compile(code, str(README), "exec"), namespace)
        logits = namespace["logits"]
        assert logits.grad is not None and logits.grad.abs().sum() > 0
        assert namespace["out"].loss.requires_grad
    assert "loss " in capsys.readouterr().out


def test_readme_names_the_ci_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci and "./scripts/test.sh" in README.read_text()


def test_readme_starts_with_install_then_pact_demo():
    first = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)
    commands = [ln.split("#")[0].strip() for ln in first.splitlines() if ln.split("#")[0].strip()]
    assert commands[0].startswith("pip install") and "requirements/data.txt" in commands[0]
    assert commands[1:] == ["pact demo"]
    assert "demo" in (README.parent / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]
