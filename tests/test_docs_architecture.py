"""docs/architecture.md stays true: every path it names exists, its file table covers every package, and the
three layers import only downwards."""
from __future__ import annotations

import ast
import re
import sys

from tests.doc_text import REPO, code_blocks, named_paths

ARCH = REPO / "docs" / "architecture.md"
#: layer 3: the runners on top; nothing below may import them
RUNNERS = ("pact.cli", "pact.commands", "pact.experiment", "pact.demo", "pact.__main__")


def module_name(path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            else:
                out.add(node.module)
    return out


def test_every_path_named_in_architecture_exists():
    text = ARCH.read_text()
    named = set(named_paths(ARCH))
    for block in code_blocks([ARCH]):  # the layer diagram names files too
        named |= set(re.findall(r"((?:pact|pact_kernels|csrc)/[\w./]*)", block.code))
    assert len(named) >= 80
    missing = sorted(p for p in named if not (REPO / p.rstrip("/.")).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"
    assert "## One training step through the driver" in text and "## One training step through `PACTTrainer`" in text


def test_architecture_table_lists_every_package_and_module():
    named = set(named_paths(ARCH))
    for top in ("pact", "pact_kernels"):
        for path in sorted((REPO / top).rglob("*.py")):
            if "__pycache__" not in path.parts:
                rel = str(path.relative_to(REPO))
                assert rel in named, (f"docs/architecture.md's file table has no row for {rel}: add one "
                                       "(the module's docstring summary)")


def test_layers_import_only_downwards():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in sorted((REPO / "pact_kernels").rglob("*.py")):
        outside = {m for m in imports(path) if m.split(".")[0] not in stdlib | {"torch", "triton", "pact_kernels"}}
        assert not outside, f"{path.relative_to(REPO)} (layer 1) imports {sorted(outside)}"
    for path in sorted((REPO / "pact").rglob("*.py")):
        name = module_name(path)
        if name.startswith(RUNNERS):
            continue
        up = {m for m in imports(path) if m.startswith(RUNNERS)}
        assert not up, f"{path.relative_to(REPO)} (layer 2) imports the runners {sorted(up)}"

