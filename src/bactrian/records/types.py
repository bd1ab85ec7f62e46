"""The record types: `Record`, an instruction with its answer (and, for preference data, a rejected answer), and
`Instruction`, a row to answer."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Record:
    """An instruction and its answer (`output`); a preference record also has a `rejected` answer (its `output`
    is the chosen one)."""

    id: str
    lang: str
    instruction: str
    input: str
    output: str
    rejected: str = ""

    def to_dict(self) -> dict[str, str]:
        row = asdict(self)
        if not self.rejected:
            row.pop("rejected")
        return row


@dataclass(frozen=True)
class Instruction:
    """A row to answer: `instruction`, optional `input`, `lang` and `id`."""

    id: str
    lang: str | None
    instruction: str
    input: str
