"""Graph helpers for pattern checks: producers and consumers by node id (edges run producer ->
consumer), and walking back through ops that only reshape or copy."""
from __future__ import annotations

from ..render.view import op_category


class Adjacency:
    def __init__(self, graph) -> None:
        self.producers: dict = {}
        self.consumers: dict = {}
        for src, dst in graph.edges:
            self.producers.setdefault(dst, []).append(src)
            self.consumers.setdefault(src, []).append(dst)
        self.op = {n.id: n.op for n in graph.nodes}
        self._size = (len(graph.nodes), len(graph.edges))

    @classmethod
    def of(cls, graph) -> "Adjacency":
        """The adjacency of ``graph``, built once for all the checks that need it (kept on the
        graph itself, without a reference back: it goes with the graph; rebuilt if the graph
        grew)."""
        adj = getattr(graph, "_adjacency", None)
        if adj is None or adj._size != (len(graph.nodes), len(graph.edges)):
            adj = cls(graph)
            try:
                graph._adjacency = adj
            except AttributeError:  # a graph type without room for it: build per check
                pass
        return adj

    def source_through_views(self, node_id: str, limit: int = 8, first: bool = False) -> list:
        """The non-view producers of ``node_id``'s inputs, looking through up to ``limit``
        reshape/copy ops (views, transposes, clones, ...). ``first``: only the first input
        that needs a gradient (edges keep autograd's input order)."""
        out, frontier = [], list(self.producers.get(node_id, []))
        if first:
            frontier = frontier[:1]
        for _ in range(limit):
            nxt = []
            for pid in frontier:
                if op_category(self.op.get(pid)) == "shape":
                    nxt.extend(self.producers.get(pid, []))
                else:
                    out.append(pid)
            if not nxt:
                break
            frontier = nxt
        return out
