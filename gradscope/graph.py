"""The autograd graph as plain data: no torch, no graphviz.

A :class:`Graph` holds one node per autograd ``Node`` reachable from the roots of a backward
call, and one edge per ``next_functions`` entry. Edges point the way data flows in the forward
pass: ``src`` produced a tensor that ``dst`` consumed (a parameter's ``AccumulateGrad`` leaf is
the ``src`` of an edge into the op that used the parameter).

It is stored by columns: one list per field (``op``, ``shape``, ...), node ``i`` at position
``i`` of each, and the edges as two lists of node positions. A million-node graph is then a
few dozen lists, built by appends during the walk and written to JSON a list at a time, instead
of a million Python objects. ``graph.nodes`` and ``graph.edges`` give the same data as rows
(:class:`Node`, :class:`Edge` tuples), made in bulk the first time they are asked for.

Node ids are ``n0``, ``n1``, ... in walk order (node ``i`` is ``n{i}``), so the same program
gives the same ids. A graph built by hand may use other ids.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from itertools import chain, islice, repeat
from operator import itemgetter, le
from typing import Any, Iterable, Iterator, NamedTuple, Optional

_SAFE_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Values of Node.leaf for AccumulateGrad nodes (leaf tensors that require grad).
LEAF_PARAMETER = "parameter"      # a parameter of a traced model
LEAF_INPUT = "input"              # a tensor passed into a traced model's forward
LEAF_UNREGISTERED = "unregistered"  # neither: a tensor the optimizer of the model never sees

# The per-node fields after ``id``, in Node's order: one column each.
COLUMNS = ("op", "module", "model", "shape", "dtype", "device", "param", "leaf", "saved",
           "outputs")
_STRING_COLUMNS = ("op", "module", "model", "dtype", "device", "param", "leaf")


def module_path(model: Optional[str], module: Optional[str]) -> Optional[str]:
    """``model.encoder.0`` for display; the model itself is just ``model``; None outside."""
    if model is None:
        return None
    return f"{model}.{module}" if module else model


class SavedTensor(NamedTuple):
    """A tensor an autograd node keeps alive until backward (activation memory).

    ``bytes`` is the size of the tensor's storage; ``counted`` is False when that storage was
    already counted elsewhere (an earlier node, or a parameter), so totals count each storage once.
    """

    name: str
    shape: Optional[tuple]
    dtype: str
    bytes: int
    counted: bool

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": None if self.shape is None else list(self.shape),
                "dtype": self.dtype, "bytes": self.bytes, "counted": self.counted}

    @classmethod
    def from_dict(cls, d: dict) -> "SavedTensor":
        shape = d.get("shape")
        return tuple.__new__(cls, (d["name"], None if shape is None else tuple(shape),
                                   d["dtype"], int(d["bytes"]), bool(d["counted"])))


class _NodeRow(NamedTuple):
    id: str
    op: Optional[str]
    module: Optional[str]      # qualified name inside its model, "" for the model itself
    model: Optional[str]       # label of the traced model that ran the op; None: outside any
    shape: Optional[tuple]
    dtype: Optional[str]
    device: Optional[str]
    param: Optional[str]       # qualified parameter name for a parameter's AccumulateGrad
    leaf: Optional[str]        # one of LEAF_* for AccumulateGrad nodes, else None
    saved: tuple               # SavedTensor entries
    outputs: int               # how many tensors the forward op produced


class Node(_NodeRow):
    """One autograd node: a read-only row of a :class:`Graph` (``op=None``: a node that is not
    an autograd node, which only a hand-built graph has)."""

    __slots__ = ()

    def __new__(cls, id: str, op: Optional[str], module: Optional[str] = None,
                model: Optional[str] = None, shape: Optional[tuple] = None,
                dtype: Optional[str] = None, device: Optional[str] = None,
                param: Optional[str] = None, leaf: Optional[str] = None,
                saved: Optional[Iterable] = None, outputs: int = 1) -> "Node":
        return tuple.__new__(cls, (id, op, module, model,
                                   None if shape is None else tuple(shape), dtype, device,
                                   param, leaf, tuple(saved) if saved else (), outputs))

    @property
    def saved_bytes(self) -> int:
        """Bytes of saved activations this node holds, each storage counted once graph-wide."""
        return _saved_bytes(self.saved)

    @property
    def module_path(self) -> Optional[str]:
        """``model.module`` as one string, or None for ops outside every traced model."""
        return module_path(self.model, self.module)

    def to_dict(self) -> dict:
        return {
            "id": self.id, "op": self.op, "module": self.module, "model": self.model,
            "shape": None if self.shape is None else list(self.shape),
            "dtype": self.dtype, "device": self.device, "param": self.param, "leaf": self.leaf,
            "outputs": self.outputs, "saved_bytes": self.saved_bytes,
            "saved": [s.to_dict() for s in self.saved],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Node":
        saved = d.get("saved")
        return cls(d["id"], d.get("op"), d.get("module"), d.get("model"), d.get("shape"),
                   d.get("dtype"), d.get("device"), d.get("param"), d.get("leaf"),
                   [SavedTensor.from_dict(s) for s in saved] if saved else None,
                   d.get("outputs", 1))

    def __repr__(self) -> str:
        where = self.module_path or "<outside models>"
        return f"Node({self.id}, {self.op}, {where}, shape={self.shape})"


def _saved_bytes(saved: tuple) -> int:
    if not saved:
        return 0
    return sum(s.bytes for s in saved if s.counted)


class Edge(NamedTuple):
    """Data flows from ``src`` to ``dst`` in the forward pass."""

    src: str
    dst: str


def canonical_ids(count: int) -> list:
    """``["n0", "n1", ...]``: the ids a walk gives its nodes."""
    return list(map("n{}".format, range(count)))


class Graph:
    """Nodes (by columns), edges (two lists of node positions) and the roots.

    ``Graph(nodes, edges, roots)`` builds one from rows (:class:`Node`, ``(src, dst)`` ids,
    root ids), as a test or a renderer does; the walk and the JSON reader use
    :meth:`from_columns`. ``nodes``, ``edges`` and ``roots`` are read-only views.
    """

    def __init__(self, nodes: Optional[Iterable] = None, edges: Optional[Iterable] = None,
                 roots: Optional[Iterable] = None) -> None:
        rows = [n if type(n) is Node else Node(*n) for n in nodes or ()]
        ids, *cols = map(list, zip(*rows)) if rows else [[]]
        self._init(len(rows), ids, dict(zip(COLUMNS, cols)))
        pairs = [tuple(e) for e in edges or ()]
        self.src = self._positions((s for s, _ in pairs), "edge")
        self.dst = self._positions((d for _, d in pairs), "edge")
        self.root_index = self._positions(roots or (), "root")
        if rows:
            self._nodes = rows

    def _init(self, count: int, ids: Optional[list], columns: dict) -> None:
        if ids is not None and ids == canonical_ids(count):
            ids = None
        self._count = count
        self._ids = ids                   # None: n0, n1, ... (made when asked for)
        self._made_ids: Optional[list] = None
        self._columns = columns           # missing columns hold their default everywhere
        self._defaults: dict = {}
        self._cache: dict = {}            # what is derived from the columns (ops)
        self._nodes: Optional[list] = None
        self._edges: Optional[list] = None
        self._index: Optional[dict] = None
        self.src: list = []
        self.dst: list = []
        self.root_index: list = []

    @classmethod
    def from_columns(cls, count: int, columns: dict, src: list, dst: list,
                     roots: list, ids: Optional[list] = None) -> "Graph":
        """A graph from its columns (each a list of ``count`` values; a missing one is all
        default: None, ``()`` for ``saved``, 1 for ``outputs``), edges as node positions
        (``src[k] -> dst[k]``) and root positions. The lists are kept, not copied."""
        g = cls.__new__(cls)
        g._init(count, ids, {k: v for k, v in columns.items() if v is not None})
        g.src, g.dst, g.root_index = src, dst, roots
        return g

    # -- columns -------------------------------------------------------------------------------
    def column(self, name: str) -> list:
        """The values of one field for every node, in node order (a list to read, not edit)."""
        col = self._columns.get(name)
        if col is None:
            col = self._defaults.get(name)
            if col is None:
                if name not in COLUMNS:
                    raise KeyError(f"no column {name!r}; the columns are {', '.join(COLUMNS)}")
                default = () if name == "saved" else (1 if name == "outputs" else None)
                col = self._defaults[name] = [default] * self._count
        return col

    @property
    def ids(self) -> list:
        if self._ids is not None:
            return self._ids
        if self._made_ids is None:
            self._made_ids = canonical_ids(self._count)
        return self._made_ids

    @property
    def canonical(self) -> bool:
        """Are the ids ``n0``, ``n1``, ... in node order (every walked graph's are)?"""
        return self._ids is None

    def index_of(self, node_id: str) -> int:
        """The position of the node with this id (KeyError if there is none)."""
        if self._ids is None and type(node_id) is str and node_id[:1] == "n":
            digits = node_id[1:]  # n0, n1, ...: the position is in the id
            if digits.isdigit() and digits.isascii() and (digits == "0" or digits[0] != "0"):
                i = int(digits)
                if i < self._count:
                    return i
            raise KeyError(node_id)
        if self._index is None:
            self._index = {v: i for i, v in enumerate(self.ids)}
        return self._index[node_id]

    def _positions(self, ids: Iterable[str], what: str) -> list:
        out = []
        for v in ids:
            try:
                out.append(self.index_of(v))
            except (KeyError, TypeError):
                raise ValueError(f"{what} names node {v!r}, which the graph does not have") \
                    from None
        return out

    # -- rows ----------------------------------------------------------------------------------
    @property
    def nodes(self) -> list:
        """Every node as a :class:`Node`, in order (made once, in C: ``zip`` over the columns)."""
        if self._nodes is None:
            cols = [self.ids] + [self.column(k) for k in COLUMNS]
            self._nodes = list(map(tuple.__new__, repeat(Node), zip(*cols)))
        return self._nodes

    @property
    def edges(self) -> list:
        if self._edges is None:
            ids = self.ids
            self._edges = list(map(tuple.__new__, repeat(Edge),
                                   zip(map(ids.__getitem__, self.src),
                                       map(ids.__getitem__, self.dst))))
        return self._edges

    @property
    def roots(self) -> list:
        ids = self.ids
        return [ids[i] for i in self.root_index]

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return False
        if self._count != other._count or self.root_index != other.root_index \
                or self.src != other.src or self.dst != other.dst \
                or self._ids != other._ids:
            return False
        return all(self.column(k) == other.column(k) for k in COLUMNS)

    def node(self, node_id: str) -> Node:
        """The node with this id (KeyError if there is none)."""
        return self.nodes[self.index_of(node_id)]

    def ops(self) -> frozenset:
        """The distinct ops of the graph (a check looking for some op asks this first)."""
        found = self._cache.get("ops")
        if found is None:
            found = self._cache["ops"] = frozenset(self.column("op"))
        return found

    def id_of(self, position: int) -> str:
        """The id of the node at ``position``."""
        return f"n{position}" if self._ids is None else self._ids[position]

    def op_counts(self) -> dict:
        """How many nodes of each op, most common first (ties by name)."""
        counts: dict = {}
        for op in self.column("op"):
            counts[op] = counts.get(op, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))

    def params(self) -> Iterable[Node]:
        return (n for n in self.nodes if n.leaf is not None)

    def leaf_count(self) -> int:
        """How many nodes are leaves (``AccumulateGrad``)."""
        if "leaf" not in self._columns:
            return 0
        return self._count - self._columns["leaf"].count(None)

    @property
    def saved_bytes(self) -> int:
        if "saved" not in self._columns:
            return 0
        saved = self._columns["saved"]
        try:  # (records repeat: a walk shares one per kind of saved tensor; counted once per
            # kind, in C, then weighed by how often it occurs)
            uses = Counter(chain.from_iterable(filter(None, saved)))
        except TypeError:  # a hand-built record with a list for a shape: one by one
            return sum(map(_saved_bytes, filter(None, saved)))
        return sum(s.bytes * n for s, n in uses.items() if s.counted)

    # -- plain data ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The JSON layout (``docs/json-schema.md``): one list per column, edges and roots as
        node positions, saved tensors as a table of their own, ids only when not ``n{i}``."""
        d: dict = {}
        for key, value in self._json_items():
            if key == "shape":
                value = [None if s is None else list(s) for s in value]
            elif key == "edges":
                value = {k: list(v) for k, v in value.items()}
            elif key == "saved":  # (the writer's table shares one list per distinct shape)
                value = {**value, "shape": [None if s is None else list(s)
                                            for s in value["shape"]]}
            d[key] = list(value) if type(value) is list else value
        return d

    def _json_items(self) -> Iterator[tuple]:
        """``(key, value)`` of the JSON layout in order, the graph's own lists as they are:
        what :meth:`to_dict` copies and :func:`graph_json_lines` writes."""
        yield "nodes", self._count
        yield "roots", self.root_index
        if not self.canonical:
            yield "id", self.ids
        for name in COLUMNS:
            if name != "saved":
                yield name, self.column(name)
        yield "saved", self._saved_table()
        yield "edges", {"src": self.src, "dst": self.dst}

    def _saved_table(self) -> dict:
        """One row per saved tensor, in node order (loops in C: a million-node graph saves
        about as many); shapes as lists, each distinct shape converted once."""
        owner: list = []
        rows: list = []
        col = self._columns.get("saved")
        if col:
            try:
                owner = list(chain.from_iterable(map(repeat, range(len(col)), map(len, col))))
                rows = list(chain.from_iterable(col))
            except TypeError:  # None for "no saved tensors" (a hand-built column)
                for i, saved in enumerate(col):
                    if saved:
                        owner.extend(repeat(i, len(saved)))
                        rows.extend(saved)
        cols = [list(map(itemgetter(k), rows)) for k in range(5)]  # (zip(*rows): 10x slower)
        # each distinct shape object made a list once (by identity: (2, 3) and (2.0, 3) are
        # equal, and a hand-built shape may be a list already)
        shapes = cols[1]
        as_list = dict(zip(map(id, shapes), shapes))
        for key, shape in as_list.items():
            as_list[key] = None if shape is None else list(shape)
        return {"node": owner, "name": cols[0],
                "shape": list(map(as_list.__getitem__, map(id, shapes))),
                "dtype": cols[2], "bytes": cols[3], "counted": cols[4]}

    @classmethod
    def from_dict(cls, d: dict) -> "Graph":
        """Read either layout: columns (schema 2) or one object per node (schema 1)."""
        if not isinstance(d, dict):
            raise ValueError("the graph is not a JSON object")
        if isinstance(d.get("nodes"), list):
            return cls._from_rows(d)
        return _read_columns(d)

    @classmethod
    def _from_rows(cls, d: dict) -> "Graph":
        nodes = [Node.from_dict(n) for n in d.get("nodes", [])]
        edges = [(e["src"], e["dst"]) for e in d.get("edges", [])]
        roots = list(d.get("roots", []))
        _check_ids(chain([n.id for n in nodes], chain.from_iterable(edges), roots))
        return cls(nodes, edges, roots)

    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph`` with every node attribute; edges run producer -> consumer."""
        import networkx as nx

        g = nx.DiGraph()
        for n in self.nodes:
            attrs = n.to_dict()
            attrs.pop("id")
            g.add_node(n.id, **attrs)
        g.add_edges_from(self.edges)
        return g


def _check_ids(ids: Iterable[Any]) -> None:
    """Ids go into DOT unquoted: a loaded file (which anyone can write) must not smuggle
    attributes (URL="javascript:...") into a drawing. One C-level pass over all ids; only a
    failure looks for the culprit, to name it."""
    ids = list(ids)
    try:
        ok = all(map(_SAFE_ID.fullmatch, ids))
    except TypeError:  # an id that is not a string
        ok = False
    if not ok:
        bad = next(x for x in ids if not (isinstance(x, str) and _SAFE_ID.fullmatch(x)))
        raise ValueError(f"invalid node id {bad!r} in the graph: ids are letters, digits and "
                         "underscores (n0, n1, ...)")


class Interned(dict):
    """Each distinct value to its first instance (``interned[value]``): equal values shared."""

    def __missing__(self, value: Any) -> Any:
        self[value] = value
        return value


class _SavedRows(dict):
    """``(name, shape, dtype, bytes, counted)`` -> its SavedTensor, made once."""

    def __missing__(self, fields: tuple) -> SavedTensor:
        row = self[fields] = tuple.__new__(SavedTensor, fields)
        return row


# -- reading the column layout -----------------------------------------------------------------
_NONE = type(None)


def _read_columns(d: dict) -> Graph:
    """A graph from the column layout, every value checked: the file may come from anyone."""
    count = d.get("nodes", 0)
    if type(count) is not int or count < 0:
        raise ValueError(f"graph 'nodes' must be the number of nodes, got {count!r}")
    if count and not isinstance(d.get("op"), list):
        # (the other columns may be left out, but then a count alone would claim any size)
        raise ValueError("graph 'op' must be a list of the nodes' ops")
    columns: dict = {}
    for name in COLUMNS:
        if name == "saved" or d.get(name) is None:
            continue
        col = _column(d, name, count)
        if name == "shape":
            col = _shapes(col, "shape")
        elif name == "outputs":
            if not set(map(type, col)) <= {int}:
                raise ValueError("graph column 'outputs' must hold integers")
        elif not set(map(type, col)) <= {str, _NONE}:
            raise ValueError(f"graph column {name!r} must hold strings or nulls")
        columns[name] = col
    if d.get("saved"):
        columns["saved"] = _saved_column(d["saved"], count)
    ids = d.get("id")
    if ids is not None:
        ids = _column(d, "id", count)
        _check_ids(ids)
        if len(set(ids)) != count:
            raise ValueError("graph 'id' holds the same id twice")
    edges = d.get("edges") or {}
    if not isinstance(edges, dict):
        raise ValueError("graph 'edges' must be an object {\"src\": [...], \"dst\": [...]}")
    src, dst = edges.get("src", []), edges.get("dst", [])
    roots = d.get("roots", [])
    for what, positions in (("edges.src", src), ("edges.dst", dst), ("roots", roots)):
        _check_positions(what, positions, count)
    if len(src) != len(dst):
        raise ValueError("graph 'edges' has src and dst lists of different lengths")
    return Graph.from_columns(count, columns, src, dst, roots, ids)


def _column(d: dict, name: str, count: int) -> list:
    col = d[name]
    if not isinstance(col, list) or len(col) != count:
        raise ValueError(f"graph column {name!r} must be a list of {count} values")
    return col


def _shapes(values: list, what: str) -> list:
    """Lists of ints (or null) -> tuples, each distinct shape made once and shared. Every
    value is checked, in C over the whole column: first the entries, then all their items
    (``[2.0, 3]`` equals ``[2, 3]``, so checking one copy of each distinct shape would not do)."""
    kinds = set(map(type, values))
    if not all(k is _NONE or issubclass(k, list) for k in kinds):
        raise ValueError(f"graph {what} entries must be lists of integers or null")
    lists = [s for s in values if s is not None] if _NONE in kinds else values
    if not set(map(type, chain.from_iterable(lists))) <= {int}:
        raise ValueError(f"graph {what} entries must be lists of integers or null")
    tuples: Iterable = map(tuple, values) if _NONE not in kinds else \
        (None if s is None else tuple(s) for s in values)
    distinct = Interned()
    return list(map(distinct.__getitem__, tuples))


def _check_positions(what: str, positions: Any, count: int) -> None:
    if not isinstance(positions, list):
        raise ValueError(f"graph {what!r} must be a list of node positions")
    if positions and (not set(map(type, positions)) <= {int}
                      or min(positions) < 0 or max(positions) >= count):
        raise ValueError(f"graph {what!r} must hold node positions from 0 to {count - 1}")


def _saved_column(table: Any, count: int) -> list:
    if not isinstance(table, dict):
        raise ValueError("graph 'saved' must be an object of columns")
    owner = table.get("node", [])
    _check_positions("saved.node", owner, count)
    cols = []
    for name in ("name", "shape", "dtype", "bytes", "counted"):
        col = table.get(name)
        if not isinstance(col, list) or len(col) != len(owner):
            raise ValueError(f"graph saved column {name!r} must be a list of {len(owner)} values")
        cols.append(col)
    names, shapes, dtypes, sizes, counted = cols
    if not set(map(type, names)) | set(map(type, dtypes)) <= {str} \
            or not set(map(type, sizes)) <= {int} or not set(map(type, counted)) <= {bool}:
        raise ValueError("graph saved columns: names and dtypes are strings, bytes integers, "
                         "counted true or false")
    # equal rows shared, as the walk shares them (a few kinds of saved tensor, a million uses)
    rows = map(_SavedRows().__getitem__,
               zip(names, _shapes(shapes, "saved shape"), dtypes, sizes, counted))
    if all(map(le, owner, islice(owner, 1, None))):
        # in node order, as written: each node's rows follow each other; grouped in C (a
        # count per node, then that many rows each)
        lengths = Counter(owner)
        by_node = dict(zip(lengths, map(tuple, map(islice, repeat(rows), lengths.values()))))
        return list(map(by_node.get, range(count), repeat((), count)))
    saved: list = [()] * count
    pending: dict = {}
    for i, row in zip(owner, rows):
        pending.setdefault(i, []).append(row)
    for i, rows_of in pending.items():
        saved[i] = tuple(rows_of)
    return saved


# -- writing the column layout -----------------------------------------------------------------
def graph_json_lines(graph: Graph) -> Iterator[str]:
    """The graph's JSON object, one ``"key": value`` line per column (``json.dumps`` of one
    list each, in C): what ``json.dumps(graph.to_dict())`` holds, written without building
    the dict of a million-node graph in one piece."""
    dumps = json.dumps
    for key, value in graph._json_items():  # (sorted keys inside the objects, as the rest)
        yield f'"{key}": {dumps(value, sort_keys=True)}'
