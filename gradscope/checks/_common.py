"""Small helpers shared by the checks: naming, grouping, graph lookups (plain data only)."""
from __future__ import annotations

from typing import Iterable, Optional


def numel(shape: Optional[Iterable[int]]) -> int:
    n = 1
    for d in shape or ():
        n *= d
    return n


def shape_str(shape: Optional[Iterable[int]]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def names_list(names: list, limit: int = 6, total: Optional[int] = None) -> str:
    """``a, b, c and 4 more``; ``total`` when ``names`` is itself a cut of a longer list."""
    total = max(total or 0, len(names))
    shown = ", ".join(names[:limit])
    return shown + (f" and {total - min(limit, len(names))} more" if total > limit else "")


def consumers(trace, node_ids: set) -> list:
    """Ids of the nodes that directly use any of ``node_ids`` (edges run producer -> consumer)."""
    return sorted({e.dst for e in trace.graph.edges if e.src in node_ids}, key=_id_order)


def _id_order(node_id: str) -> tuple:
    return (0, int(node_id[1:])) if node_id[1:].isdigit() else (1, node_id)


def calls_of(trace, model: Optional[str], module: Optional[str]) -> int:
    for m in trace.modules:
        if m["model"] == model and m["name"] == module:
            return m["calls"]
    return 0


def plural(n: int, word: str) -> str:
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") and word[-2:-1] not in "aeiou" \
        else f"{n} {word}s"
