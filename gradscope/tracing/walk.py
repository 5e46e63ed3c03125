"""Iterative walk of the autograd graph (``grad_fn`` -> ``next_functions``) into a plain Graph.

No recursion: a deque drives a breadth-first walk, so a million-node chain is as fine as a
ten-node MLP. Node ids come from a counter in walk order, never from ``id()``.

The walk reads private autograd attributes (``_input_metadata``, ``_sequence_nr``, ``_saved_*``);
each read is guarded so that an older or newer torch without one of them still gives a graph,
with less detail.
"""
from __future__ import annotations

import gc
from collections import deque
from typing import Any, Callable, Iterable, Optional

import torch

from ..graph import (LEAF_INPUT, LEAF_PARAMETER, LEAF_UNREGISTERED, Edge, Graph, Node,
                     SavedTensor)

# (model label, qualified parameter name) for a parameter tensor.
ParamName = tuple
# seq -> (model label, module qualname) or None
Attribution = Callable[[int], Optional[tuple]]

_SEQ_NONE = 2 ** 64 - 1  # AccumulateGrad nodes report UINT64_MAX as their sequence number


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


class _TypeInfo:
    """What the walk learned about one autograd node class, computed once per class."""

    __slots__ = ("name", "saved_attrs", "python_function")

    def __init__(self, fn: Any) -> None:
        self.name = type(fn).__name__
        self.python_function = isinstance(fn, torch.autograd.function.BackwardCFunction)
        # Saved attributes that hold tensors; scalars and sizes are not activation memory.
        attrs = []
        for attr in dir(fn):
            if not attr.startswith("_saved_"):
                continue
            try:
                value = getattr(fn, attr)
            except Exception:  # graph already freed: keep the name, reads will fail later too
                attrs.append(attr)
                continue
            if value is None or isinstance(value, torch.Tensor) or (
                    isinstance(value, (list, tuple)) and value
                    and all(isinstance(v, torch.Tensor) or v is None for v in value)):
                attrs.append(attr)
        self.saved_attrs = tuple(attrs)


class AutogradWalker:
    """Turns the autograd graph behind some root tensors into a :class:`Graph`.

    ``params`` maps ``id(tensor)`` to ``(model, qualified_name)`` for every parameter of the
    traced models; ``inputs`` holds ids of tensors passed into a traced model; ``attribution``
    maps a node's sequence number to the ``(model, module)`` whose forward created it.
    """

    def __init__(self, params: Optional[dict] = None, inputs: Optional[set] = None,
                 attribution: Optional[Attribution] = None, saved: bool = True,
                 param_storage_keys: Iterable = ()) -> None:
        self.params = params or {}
        self.inputs = inputs or set()
        self.attribution = attribution
        self.saved = saved
        self._types: dict = {}
        self._str_cache: dict = {}
        # Parameters are not activation memory: a saved weight is never counted.
        self._storages: set = set(param_storage_keys)
        self._has_metadata = True
        self._has_seq = True

    # -- the walk ------------------------------------------------------------------------------
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
        index: dict = {}
        fns: list = []        # keeps the Python wrappers alive so that id() stays unique
        ids: list = []
        root_ids: list = []
        queue: deque = deque()
        for root in roots:
            fn = root.grad_fn if isinstance(root, torch.Tensor) else root
            if fn is None:
                continue
            k = id(fn)
            if k not in index:
                index[k] = len(fns)
                fns.append(fn)
                ids.append(f"n{len(ids)}")
                queue.append(fn)
            root_ids.append(ids[index[k]])
        nodes: list = []
        edges: list = []
        append_edge = edges.append
        while queue:
            fn = queue.popleft()
            i = index[id(fn)]
            nodes.append(self._node(ids[i], fn))
            dst = ids[i]
            for nf, _slot in fn.next_functions:
                if nf is None:
                    continue
                k = id(nf)
                j = index.get(k)
                if j is None:
                    j = len(fns)
                    index[k] = j
                    fns.append(nf)
                    ids.append(f"n{j}")
                    queue.append(nf)
                append_edge(Edge(ids[j], dst))
        return Graph(nodes, edges, list(dict.fromkeys(root_ids)))

    # -- one node ------------------------------------------------------------------------------
    def _node(self, node_id: str, fn: Any) -> Node:
        info = self._types.get(type(fn))
        if info is None:
            info = self._types[type(fn)] = _TypeInfo(fn)
        node = Node(node_id, info.name)
        self._fill_metadata(node, fn)
        if info.name == "AccumulateGrad":
            self._fill_leaf(node, fn)
        elif self.attribution is not None and self._has_seq:
            try:
                owner = self.attribution(fn._sequence_nr())
            except AttributeError:
                self._has_seq = False
                owner = None
            if owner is not None:
                node.model, node.module = owner
        if self.saved and (info.saved_attrs or info.python_function):
            node.saved = self._saved(fn, info)
        return node

    def _fill_metadata(self, node: Node, fn: Any) -> None:
        if not self._has_metadata:
            return
        try:
            meta = fn._input_metadata
        except AttributeError:
            self._has_metadata = False
            return
        except Exception:
            return
        if not meta:
            return
        m = meta[0]
        node.outputs = len(meta)
        try:
            node.shape = tuple(m.shape)
        except Exception:  # nested / symbolic shapes
            node.shape = None
        node.dtype = self._str(m.dtype, _dtype_name)
        node.device = self._str(m.device, str)

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

    # -- saved tensors -------------------------------------------------------------------------
    def _saved(self, fn: Any, info: _TypeInfo) -> list:
        out: list = []
        if info.python_function:
            try:
                values = fn.saved_tensors
            except Exception:
                return out
            for k, t in enumerate(values):
                self._add_saved(out, f"saved_tensors[{k}]", t)
            return out
        for attr in info.saved_attrs:
            try:
                value = getattr(fn, attr)
            except Exception:  # freed by an earlier backward: nothing left to measure
                continue
            name = attr[len("_saved_"):]
            if isinstance(value, (list, tuple)):
                for k, t in enumerate(value):
                    self._add_saved(out, f"{name}[{k}]", t)
            else:
                self._add_saved(out, name, value)
        return out

    def _add_saved(self, out: list, name: str, t: Any) -> None:
        if not isinstance(t, torch.Tensor):
            return
        key, nbytes = storage_key(t)
        counted = key not in self._storages
        self._storages.add(key)
        shape = tuple(t.shape) if t.layout == torch.strided else None
        out.append(SavedTensor(name, shape, self._str(t.dtype, _dtype_name), nbytes, counted))


def storage_key(t: torch.Tensor) -> tuple:
    """A key identifying the memory a tensor occupies, and that memory's size in bytes."""
    try:
        st = t.untyped_storage()
        return (str(t.device), st.data_ptr()), st.nbytes()
    except Exception:  # sparse, nested, fake or meta tensors: fall back to the tensor itself
        return ("id", id(t)), t.numel() * t.element_size()


def walk_autograd_graph(roots: Iterable[Any], params: Optional[dict] = None,
                        inputs: Optional[set] = None, attribution: Optional[Attribution] = None,
                        param_storage_keys: Iterable = ()) -> Graph:
    """Walk the autograd graph behind ``roots`` (tensors or grad_fn nodes) into a Graph."""
    return AutogradWalker(params, inputs, attribution,
                          param_storage_keys=param_storage_keys).walk(roots)
