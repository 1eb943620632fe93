"""The judge interface: a :class:`Judge` turns (prompt, answer) pairs into verdicts (:class:`Verdict`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

__all__ = ["Judge", "Verdict", "check_lengths"]


@dataclass(frozen=True)
class Verdict:
    """One judged answer: ``unsafe`` (a successful attack), the judge's ``raw`` output, and ``degenerate``
    (None: not assessed; True: a degenerate answer, never also ``unsafe``)."""

    unsafe: bool
    raw: str = ""
    degenerate: bool | None = None

    def __post_init__(self) -> None:
        if self.unsafe and self.degenerate:
            raise ValueError("a degenerate answer is not an attack success: Verdict(unsafe=True, degenerate=True)")

    @property
    def outcome(self) -> str:
        """``compliance`` (unsafe), ``degenerate``, or ``refusal`` (neither; for a judge that does not assess
        degenerate answers: not unsafe)."""
        return "compliance" if self.unsafe else "degenerate" if self.degenerate else "refusal"


class Judge:
    """Base class. Subclasses implement :meth:`judge`; ``name`` goes into the verdict files."""

    name: str = "judge"

    @property
    def label(self) -> str:
        """What the verdict files record as ``judge`` (the name, plus the model for model judges)."""
        return self.name

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        """Free whatever the judge holds (a model); it reloads on the next call."""

    def __call__(self, prompt: str, response: str) -> Verdict:
        return self.judge([prompt], [response])[0]


def check_lengths(prompts: Sequence[str], responses: Sequence[str]) -> None:
    """A ValueError unless there is one response per prompt."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
