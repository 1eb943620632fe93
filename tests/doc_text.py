"""The README's and docs/*.md's text as the tests read it: fenced code blocks with the comment marking them,
marked tables, relative links and headings."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

#: a fenced block, with the HTML comment right before it (if any): ``<!-- name: this block runs in PATH -->``
FENCE = re.compile(r"(?:<!--(?P<mark>[^<>]*?)-->[ \t]*\n)?^```(?P<lang>[\w-]*)\n(?P<code>.*?)^```[ \t]*$", re.S | re.M)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    mark: str  # the comment before the fence, stripped; "" when there is none

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def doc_files() -> list[Path]:
    """README.md and every page of docs/."""
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def code_blocks(paths: list[Path] | None = None) -> list[Block]:
    blocks = []
    for path in paths or doc_files():
        text = path.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start("lang")) + 1
            blocks.append(Block(path, line, m.group("lang"), m.group("code"), (m.group("mark") or "").strip()))
    return blocks


def marked_blocks(name: str) -> list[Block]:
    """The blocks whose marker comment starts with ``name:``, in README.md then docs/*.md."""
    return [b for b in code_blocks() if b.mark.startswith(name + ":")]


def marked_block(name: str) -> Block:
    found = marked_blocks(name)
    assert len(found) == 1, f"{len(found)} code blocks marked <!-- {name}: ... --> in README.md and docs/*.md: {found}"
    return found[0]


def marked_tables(marker: str) -> list[tuple[Path, str]]:
    """The text between ``<!-- marker -->`` and ``<!-- /marker -->`` in README.md and docs/*.md."""
    return [(p, t) for p in doc_files() for t in re.findall(rf"<!-- {marker} -->\n(.*?)<!-- /{marker} -->",
                                                           p.read_text(), re.S)]


def flat(path: Path) -> str:
    """A file's text with every run of whitespace one space (sentences wrap anywhere)."""
    return " ".join(path.read_text().split())


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", path.read_text())
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{1,6} (.*)$", text, re.M)}


#: a repository path in backticks: `pact/train.py`, `configs/paper/`, `benchmarks/results/cpu.md`
REPO_PATH = re.compile(r"`((?:pact|pact_kernels|tests|benchmarks|configs|csrc|scripts|docs|requirements|\.ci)/[\w./-]*)`")


def named_paths(path: Path) -> list[str]:
    """The repository paths a Markdown file names in backticks (outside code blocks)."""
    return REPO_PATH.findall(FENCE.sub("", path.read_text()))


#: a dotted name of this project in backticks: `pact.eval.judges`, `pact_kernels.PACTLoss`
DOTTED_NAME = re.compile(r"`((?:pact|pact_kernels)(?:\.\w+)+)`")


def named_objects(path: Path) -> list[str]:
    """The dotted module / object names of this project a Markdown file names in backticks (outside code blocks)."""
    return DOTTED_NAME.findall(FENCE.sub("", path.read_text()))
