"""A finding: one cause of a training bug, found by one check."""
from __future__ import annotations

import dataclasses
from typing import Optional

SEVERITIES = ("info", "warning", "error")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


def severity_rank(severity: str) -> int:
    """0 for info, 1 for warning, 2 for error (ValueError for anything else)."""
    try:
        return _RANK[severity]
    except KeyError:
        raise ValueError(f"unknown severity {severity!r}; use one of {', '.join(SEVERITIES)}") from None


@dataclasses.dataclass
class Finding:
    """What happened and where, what it costs, and how to fix it.

    ``check`` is the stable id of the check that found it (``layer-in-forward``); ``module`` the
    qualified module name (``model.encoder.0``) or None; ``location`` a ``file:line`` in the
    user's code; ``nodes`` the graph node ids to highlight; ``data`` check-specific details.
    """

    check: str
    severity: str
    message: str
    hint: str = ""
    module: Optional[str] = None
    location: Optional[str] = None
    nodes: list = dataclasses.field(default_factory=list)
    data: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        severity_rank(self.severity)

    def __str__(self) -> str:
        from .render.text import findings_lines

        return "\n".join(findings_lines([self])[1:])

    def to_dict(self) -> dict:
        return {"check": self.check, "severity": self.severity, "message": self.message,
                "hint": self.hint, "module": self.module, "location": self.location,
                "nodes": list(self.nodes), "data": dict(self.data)}

    @classmethod
    def from_dict(cls, d: dict) -> "Finding":
        return cls(d["check"], d["severity"], d["message"], d.get("hint", ""), d.get("module"),
                   d.get("location"), list(d.get("nodes", [])), dict(d.get("data", {})))


class FindingList(list):
    """A plain list of :class:`Finding` that prints as the findings' text, as the terminal
    report shows them (``report.findings`` in a notebook or a REPL)."""

    def __repr__(self) -> str:
        from .render.text import findings_lines

        return "\n".join(findings_lines(list(self)))

    __str__ = __repr__


def at_or_above(findings: list, threshold: str) -> list:
    """Findings whose severity is at least ``threshold`` (``never``: none)."""
    if threshold == "never":
        return []
    rank = severity_rank(threshold)
    return [f for f in findings if severity_rank(f.severity) >= rank]


def sort_findings(findings: list) -> list:
    """Most severe first, then by check id and module, so output is stable."""
    return sorted(findings, key=lambda f: (-severity_rank(f.severity), f.check, f.module or "",
                                           f.location or "", f.message))
