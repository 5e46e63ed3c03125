"""Iterative walk of the autograd graph (``grad_fn`` -> ``next_functions``) into a plain Graph.

No recursion: a breadth-first loop over the list of discovered nodes, so a million-node chain
is as fine as a ten-node MLP. Node ids come from a counter in walk order, never from ``id()``.

The walk reads private autograd attributes (``_input_metadata``, ``_sequence_nr``, ``_saved_*``);
each read is guarded so that an older or newer torch without one of them still gives a graph,
with less detail.
"""
from __future__ import annotations

import gc
from typing import Any, Callable, Iterable, Optional

import torch

from ..graph import (LEAF_INPUT, LEAF_PARAMETER, LEAF_UNREGISTERED, Edge, Graph, Node,
                     SavedTensor)

# seq -> (model label, module qualname) or None
Attribution = Callable[[int], Optional[tuple]]


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


class _TypeInfo:
    """What the walk learned about one autograd node class, computed once per class."""

    __slots__ = ("name", "saved_attrs", "python_function", "is_leaf", "has_saved")

    def __init__(self, fn: Any) -> None:
        self.name = type(fn).__name__
        self.is_leaf = self.name == "AccumulateGrad"
        self.python_function = isinstance(fn, torch.autograd.function.BackwardCFunction)
        # Saved attributes that hold tensors (those with a ``_raw_saved_*`` twin); scalars and
        # sizes are not activation memory. Told by name, not by reading a value: a read
        # unpacks the tensor, which under checkpointing re-runs a forward.
        names = set(dir(fn))
        self.saved_attrs = tuple(sorted(a for a in names
                                        if a.startswith("_saved_") and "_raw" + a in names))
        self.has_saved = bool(self.saved_attrs) or self.python_function


class AutogradWalker:
    """Turns the autograd graph behind some root tensors into a :class:`Graph`.

    ``params`` maps ``id(tensor)`` to ``(model, qualified_name)`` for every parameter of the
    traced models; ``inputs`` holds ids of tensors passed into a traced model; ``attribution``
    maps a node's sequence number to the ``(model, module)`` whose forward created it.
    """

    def __init__(self, params: Optional[dict] = None, inputs: Optional[set] = None,
                 attribution: Optional[Attribution] = None, saved: bool = True,
                 param_storage_keys: Iterable = (), shapes: bool = True,
                 describe_leaf: Optional[Callable[[Any], dict]] = None) -> None:
        self.params = params or {}
        self.describe_leaf = describe_leaf
        self.unregistered: dict = {}  # node id -> what describe_leaf said of that leaf
        self.inputs = inputs or set()
        self.attribution = attribution
        self.saved = saved
        self.forwards: Optional[Callable[[], int]] = None  # counts module forwards run so far
        self.saved_incomplete = False
        self.hooked = 0  # saved tensors held by saved-tensor hooks: measured without unpacking
        self._types: dict = {}
        self._str_cache: dict = {}
        # Parameters are not activation memory: a saved weight is never counted.
        self._storages: set = set(param_storage_keys)
        # Reading a node's output metadata is over half the cost of a walk; ``shapes=False``
        # gives the bare structure of a giant graph (ops, edges, modules, leaves) faster.
        self._has_metadata = shapes

    def walk(self, roots: Iterable[Any]) -> Graph:
        """Walk from root ``grad_fn`` nodes (or tensors) and return the graph."""
        gc_was_enabled = gc.isenabled()
        gc.disable()  # the walk creates many objects and no cycles; the collector only slows it
        try:
            return self._walk(roots)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _walk(self, roots: Iterable[Any]) -> Graph:
        # One tight loop: at a million nodes every attribute lookup and call shows. Breadth-first
        # order is discovery order, so the list of discovered nodes doubles as the queue.
        index: dict = {}
        fns: list = []        # keeps the Python wrappers alive so that id() stays unique
        ids: list = []
        root_ids: list = []
        for root in roots:
            fn = root.grad_fn if isinstance(root, torch.Tensor) else root
            if fn is None:
                continue
            if id(fn) not in index:
                index[id(fn)] = len(fns)
                fns.append(fn)
                ids.append(f"n{len(ids)}")
            root_ids.append(ids[index[id(fn)]])
        nodes: list = []
        edges: list = []
        add_node, add_edge, add_fn, add_id = nodes.append, edges.append, fns.append, ids.append
        types, index_get, new_edge = self._types, index.get, tuple.__new__
        attribution, want_saved, metadata = self.attribution, self.saved, self._metadata
        forwards_before = self.forwards() if self.forwards is not None else None
        i = 0
        while i < len(fns):
            fn = fns[i]
            dst = ids[i]
            i += 1
            info = types.get(type(fn))
            if info is None:
                info = types[type(fn)] = _TypeInfo(fn)
            node = Node(dst, info.name)
            metadata(node, fn)
            if info.is_leaf:
                self._fill_leaf(node, fn)
            elif attribution is not None:
                owner = attribution(fn._sequence_nr())
                if owner is not None:
                    node.model, node.module = owner
            if want_saved and info.has_saved:
                node.saved = self._saved(fn, info, forwards_before, node.device)
                if self.forwards is not None and self.forwards() != forwards_before:
                    # That read re-ran a forward: a checkpointed segment (non-reentrant
                    # checkpointing unpacks by recomputing). Stop reading saved tensors, so
                    # each further segment is not recomputed (and BatchNorm statistics not
                    # updated again) just for a memory figure.
                    want_saved = False
                    self.saved_incomplete = True
            add_node(node)
            for nf, _slot in fn.next_functions:
                if nf is None:
                    continue
                j = index_get(id(nf))
                if j is None:
                    j = len(fns)
                    index[id(nf)] = j
                    add_fn(nf)
                    add_id(f"n{j}")
                add_edge(new_edge(Edge, (ids[j], dst)))
        self.fns = fns  # autograd nodes in graph order, for callers that hook them (then drop)
        return Graph(nodes, edges, list(dict.fromkeys(root_ids)))

    # -- one node ------------------------------------------------------------------------------
    def _metadata(self, node: Node, fn: Any) -> None:
        if not self._has_metadata:
            return
        try:
            meta = fn._input_metadata
        except AttributeError:  # a torch without it: shapes come only from leaves
            self._has_metadata = False
            return
        except Exception:
            return
        if not meta:
            return
        m = meta[0]
        node.outputs = len(meta)
        try:
            node.shape = tuple(map(int, m.shape))  # a jagged dim is a SymInt: not plain data
        except Exception:  # nested / symbolic shapes
            node.shape = None
        cache = self._str_cache
        dtype, device = m.dtype, m.device
        node.dtype = cache.get(dtype) or self._str(dtype, _dtype_name)
        node.device = cache.get(device) or self._str(device, str)

    def _str(self, value: Any, fmt: Callable) -> str:
        s = self._str_cache.get(value)
        if s is None:
            s = self._str_cache[value] = fmt(value)
        return s

    def _fill_leaf(self, node: Node, fn: Any) -> None:
        var = getattr(fn, "variable", None)
        if var is None:
            return
        if node.shape is None:
            node.shape = tuple(var.shape)
            node.dtype = _dtype_name(var.dtype)
            node.device = str(var.device)
        found = self.params.get(id(var))
        if found is not None:
            node.model, node.param = found
            node.module = node.param.rpartition(".")[0]
            node.leaf = LEAF_PARAMETER
        elif id(var) in self.inputs:
            node.leaf = LEAF_INPUT
        else:
            node.leaf = LEAF_UNREGISTERED
            if self.describe_leaf is not None:
                self.unregistered[node.id] = self.describe_leaf(var)

    # -- saved tensors -------------------------------------------------------------------------
    def _saved(self, fn: Any, info: _TypeInfo, forwards_before: Optional[int] = None,
               device: Optional[str] = None) -> list:
        out: list = []
        if info.python_function:
            try:
                raw = fn._raw_saved_tensors
            except Exception:  # noqa: BLE001 - older torch, or already freed
                raw = None
            if raw and _hooked(raw):  # same as built-in nodes: measure, never unpack
                self.hooked += 1
                self._add_packed(out, "saved_tensors", raw, device)
                return out
            try:
                values = fn.saved_tensors
            except Exception:
                return out
            for k, t in enumerate(values):
                self._add_saved(out, f"saved_tensors[{k}]", t)
            return out
        for attr in info.saved_attrs:
            try:
                raw = getattr(fn, "_raw" + attr)
                if _hooked(raw):
                    # Held by saved-tensor hooks (checkpointing, save_on_cpu offloading):
                    # unpacking would recompute the segment or copy the tensor back to the
                    # device. Measure what the hook packed instead, without unpacking.
                    self.hooked += 1
                    self._add_packed(out, attr[len("_saved_"):], raw, device)
                    continue
                value = getattr(fn, attr)
            except Exception:  # freed by an earlier backward: nothing left to measure
                continue
            if forwards_before is not None and self.forwards() != forwards_before:
                break  # that read re-ran a checkpointed forward: read no more
            name = attr[len("_saved_"):]
            if isinstance(value, (list, tuple)):
                for k, t in enumerate(value):
                    self._add_saved(out, f"{name}[{k}]", t)
            else:
                self._add_saved(out, name, value)
        return out

    def _add_packed(self, out: list, name: str, raw: Any, device: Optional[str]) -> None:
        """The tensors a saved-tensor hook packed (``SavedTensor.data``: no unpack hook runs).
        A checkpoint keeps none; ``save_on_cpu`` keeps a host copy, which is listed but not
        counted as memory of the node's device."""
        for k, st in enumerate(raw if isinstance(raw, (list, tuple)) else (raw,)):
            try:
                packed = st.data
            except Exception:  # noqa: BLE001 - released, or a torch without it
                continue
            items = packed if isinstance(packed, (list, tuple)) else (packed,)
            label = f"{name}[{k}]" if isinstance(raw, (list, tuple)) else name
            for t in items:
                if isinstance(t, torch.Tensor):
                    self._add_saved(out, f"{label} (packed by a hook)", t,
                                    elsewhere=device is not None and str(t.device) != device)

    def _add_saved(self, out: list, name: str, t: Any, elsewhere: bool = False) -> None:
        if not isinstance(t, torch.Tensor):
            return
        key, nbytes = storage_key(t)
        counted = key not in self._storages and not elsewhere
        self._storages.add(key)
        try:
            shape = tuple(map(int, t.shape))
        except Exception:  # nested tensors have no single shape, or a ragged SymInt one
            shape = None
        cache = self._str_cache
        dtype = cache.get(t.dtype) or self._str(t.dtype, _dtype_name)
        out.append(SavedTensor(name, shape, dtype, nbytes, counted))


def _hooked(raw: Any) -> bool:
    """Is this ``_raw_saved_*`` value (a SavedTensor, or a list of them) held by saved-tensor
    hooks? Then reading ``_saved_*`` would run the unpack hook."""
    items = raw if isinstance(raw, (list, tuple)) else (raw,)
    return any(getattr(st, "unpack_hook", None) is not None for st in items)


def storage_key(t: torch.Tensor) -> tuple:
    """A key identifying the memory a tensor occupies, and that memory's size in bytes."""
    try:
        st = t.untyped_storage()
        return (st.device, st.data_ptr()), st.nbytes()
    except Exception:  # sparse, nested, fake or meta tensors: fall back to the tensor itself
        return ("id", id(t)), t.numel() * t.element_size()


def walk_autograd_graph(roots: Iterable[Any], params: Optional[dict] = None,
                        inputs: Optional[set] = None, attribution: Optional[Attribution] = None,
                        param_storage_keys: Iterable = (), shapes: bool = True) -> Graph:
    """Walk the autograd graph behind ``roots`` (tensors or grad_fn nodes) into a Graph."""
    return AutogradWalker(params, inputs, attribution, param_storage_keys=param_storage_keys,
                          shapes=shapes, saved=shapes).walk(roots)
