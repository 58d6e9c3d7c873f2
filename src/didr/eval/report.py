"""The one report writer: every recorded result opens with the command, the machine and the date
that produced it, then its tables and figures, written atomically.

    prov = Provenance.here("didr toy --out runs/toy")
    write_report(path, "Toy experiment", prov, ["Some text.", markdown_table(header, rows)])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from didr.files import atomic_write_text
from didr.runtime import machine, today


@dataclass
class Provenance:
    """What decides whether two recorded figures may be compared: the command, the machine and the date."""

    command: str
    machine: str
    date: str
    notes: str = ""  # how it ran: processes, threads, the load on shared cores

    @classmethod
    def here(cls, command: str, notes: str = "") -> Provenance:
        return cls(command, machine(), today(), notes)

    def lines(self) -> list[str]:
        machine_line = f"Machine: {self.machine}" + (f"; {self.notes}" if self.notes else "")
        return [f"Command: `{self.command}`  ", machine_line + "  ", f"Date: {self.date}"]

    def to_dict(self) -> dict:
        return asdict(self)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; cells are written with ``str``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render(title: str, provenance: Provenance | None, sections: Sequence[str]) -> str:
    """``# title``, the provenance block, then each section, separated by blank lines."""
    head = [f"# {title}", *(["", *provenance.lines()] if provenance is not None else [])]
    return "\n".join(head) + "\n\n" + "\n\n".join(s.strip("\n") for s in sections if s) + "\n"


def write_report(path: Path, title: str, provenance: Provenance | None, sections: Sequence[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(render(title, provenance, sections), path)
    return path
