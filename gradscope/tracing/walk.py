"""Iterative walk of the autograd graph (``grad_fn`` -> ``next_functions``) into a plain Graph.

No recursion: a breadth-first loop over the list of discovered nodes, so a million-node chain
is as fine as a ten-node MLP. Node ids come from a counter in walk order, never from ``id()``.

The walk reads private autograd attributes (``_input_metadata``, ``_sequence_nr``, ``_saved_*``);
each read is guarded so that an older or newer torch without one of them still gives a graph,
with less detail.
"""
from __future__ import annotations

import gc
from bisect import bisect_right
from typing import Any, Callable, Iterable, Optional

import torch

from ..graph import LEAF_INPUT, LEAF_PARAMETER, LEAF_UNREGISTERED, Graph, Interned, SavedTensor

_new_tuple = tuple.__new__

# seq -> (model label, module qualname) or None
Attribution = Callable[[int], Optional[tuple]]


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


class _Strings(dict):
    """dtype or device -> its name (``float32``, ``cuda:0``), each formatted once (per walk;
    the snapshot's parameter table keeps one for the process)."""

    def __missing__(self, value: Any) -> str:
        text = self[value] = _dtype_name(value)
        return text


class _Shapes(dict):
    """torch.Size -> the same shape as a tuple of ints, each converted once per walk."""

    def __missing__(self, size: Any) -> tuple:
        shape = self[size] = tuple(map(int, size))  # a symbolic size raises: no plain shape
        return shape


class _TypeInfo:
    """What the walk learned about one autograd node class, computed once per class."""

    __slots__ = ("name", "saved_attrs", "saved_fields", "python_function", "is_leaf",
                 "has_saved", "special")

    def __init__(self, fn: Any, attributed: bool = False, saved: bool = True) -> None:
        self.name = type(fn).__name__
        self.is_leaf = self.name == "AccumulateGrad"
        self.python_function = isinstance(fn, torch.autograd.function.BackwardCFunction)
        # Saved attributes that hold tensors (those with a ``_raw_saved_*`` twin); scalars and
        # sizes are not activation memory. Told by name, not by reading a value: a read
        # unpacks the tensor, which under checkpointing re-runs a forward.
        names = set(dir(fn))
        self.saved_attrs = tuple(sorted(a for a in names
                                        if a.startswith("_saved_") and "_raw" + a in names))
        # (attribute, its _raw_ twin, the name shown): strings built once per class
        self.saved_fields = tuple((a, "_raw" + a, a[len("_saved_"):]) for a in self.saved_attrs)
        self.has_saved = bool(self.saved_attrs) or self.python_function
        # Does a node of this class need more than op and shape? Most of a big graph does not.
        self.special = self.is_leaf or attributed or (saved and self.has_saved)


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
        self._str_cache = _Strings({None: None})  # (None: a node without metadata)
        self._shapes = _Shapes()  # torch.Size -> tuple of ints, for saved tensors and leaves
        self._records: dict = {}  # what the fast path read of a saved tensor -> its record
        # Parameters are not activation memory: a saved weight is never counted.
        self._storages: set = set(param_storage_keys)
        self._param_storages: dict = {}  # id(parameter) -> storage_key(parameter)
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
        # One tight loop that only appends to lists: at a million nodes every attribute lookup,
        # call and allocation shows. What only some nodes need (leaves, module attribution,
        # saved tensors) is read in a second pass over those nodes; names of dtypes and
        # devices and the shapes' tuples are made in bulk at the end.
        #
        # Breadth-first order is discovery order, so the list of discovered nodes doubles as the
        # queue (a list iterator sees items appended while it runs). ``fns`` keeps the Python
        # wrappers alive, so none is freed and its address reused during the walk.
        #
        # "Seen?" is a set of the wrapper objects, not a dict and not id() ints: an object
        # hashes by its rotated address, a set probes neighbouring slots first, and a node
        # reached a second time (a shared input, a parameter used twice) is the rarer case.
        # Measured on a 1,000,000-node chain: id()-keyed dict 0.7 s, object-keyed dict 0.55 s,
        # this set 0.27 s (bare traversal, no records).
        #
        # Each edge's source is kept as the node itself (``targets``) and made a position
        # after the loop: in a tree every edge found a new node, in order, so the positions
        # are a range; else one index of the nodes, built in C, looks them all up. (An index
        # kept up to date in the loop was a dict store per node; the re-reached edges' places
        # kept for a second pass cost a tuple and two appends each: 0.1 s more on a
        # million-node recurrence, where a third of the edges reach a node seen before.)
        fns, root_index = _seeds(roots)
        seen = set(fns)
        targets: list = []
        ops: list = []
        shapes: list = []
        dtypes: list = []
        devices: list = []
        outputs: list = []
        dst: list = []
        special: list = []
        add_op, add_shape, add_dtype, add_device, add_out = (
            ops.append, shapes.append, dtypes.append, devices.append, outputs.append)
        add_target, add_dst, add_fn, add_seen, add_special = (
            targets.append, dst.append, fns.append, seen.add, special.append)
        types = self._types
        want_shapes = self._has_metadata
        slow = 0  # nodes whose metadata took the slow path (their shape is a tuple or None)
        every = self.attribution is not None  # every node is attributed: no list of them
        for i, fn in enumerate(fns):
            info = types.get(type(fn)) or self._type_info(fn)
            add_op(info.name)
            if want_shapes and info.is_leaf:
                # A leaf's metadata is its tensor's, read from the tensor with the leaf's
                # other details (cheaper than the metadata's four pybind reads)
                add_shape(())
                add_dtype(None)
                add_device(None)
                add_out(1)
            elif want_shapes:
                # Inline, not a method: over half the cost of a walk with shapes is here.
                try:
                    meta = fn._input_metadata
                    m = meta[0]
                    shape, dtype, device = m.shape, m.dtype, m.device
                    n_out = len(meta)
                except Exception:  # noqa: BLE001 - no outputs, symbolic shape, older torch
                    shape, dtype, device, n_out = self._slow_metadata(fn)
                    slow += 1
                add_shape(shape)
                add_dtype(dtype)
                add_device(device)
                add_out(n_out)
            if info.special and not every:
                add_special(i)
            for nf, _slot in fn.next_functions:
                if nf is None:
                    continue
                if nf not in seen:
                    add_seen(nf)
                    add_fn(nf)
                add_target(nf)
                add_dst(i)
        count = len(fns)
        src = _positions(targets, fns, len(root_index))
        del targets
        columns: dict = {"op": ops}
        if want_shapes:
            strs = self._str_cache
            columns.update(shape=_tuples(shapes, slow), dtype=list(map(strs.__getitem__, dtypes)),
                           device=list(map(strs.__getitem__, devices)), outputs=outputs)
        self.fns = fns  # autograd nodes in graph order, for callers that hook them (then drop)
        self._details(fns, range(count) if every else special, columns, count)
        return Graph.from_columns(count, columns, src, dst, root_index)

    def _type_info(self, fn: Any) -> "_TypeInfo":
        info = self._types[type(fn)] = _TypeInfo(fn, self.attribution is not None, self.saved)
        return info

    def _details(self, fns: list, special: Any, columns: dict, count: int) -> None:
        """What only some nodes need: leaf identity, module attribution, saved tensors. One
        loop over those nodes, the common cases inline (a trace attributes every node)."""
        if not special:
            return
        types = self._types
        for name in ("model", "module", "param", "leaf"):
            columns[name] = [None] * count
        if "shape" not in columns:  # a structure-only walk: leaves get theirs from the tensor
            for name in ("shape", "dtype", "device"):
                columns[name] = [None] * count
        saved_col = columns["saved"] = [()] * count if self.saved else None
        models, modules, params_col, leaves = (columns["model"], columns["module"],
                                               columns["param"], columns["leaf"])
        shapes, dtypes, devices = columns["shape"], columns["dtype"], columns["device"]
        shape_of, strs, records = self._shapes, self._str_cache, self._records
        owner_of = self.attribution
        # (the sweep behind ModuleTracker.attribution(): looked up inline, no call per node)
        bounds, owners = getattr(owner_of, "bounds", None), getattr(owner_of, "owners", None)
        by_param, inputs, params = self.params.get, self.inputs, self.params
        want_saved = self.saved
        counting = self.forwards is not None
        forwards_before = self.forwards() if counting else None
        plain, tensor_type = _SavedTensor, _Tensor
        storages, add_storage = self._storages, self._storages.add
        param_keys = self._param_storages
        for i in special:
            fn = fns[i]
            info = types[type(fn)]
            if info.is_leaf:
                var = getattr(fn, "variable", None)
                if var is None:
                    if dtypes[i] is None:
                        shapes[i] = None  # (not the () the loop put there: unknown)
                    continue
                if dtypes[i] is None:  # the tensor's shape, dtype and device
                    try:
                        shapes[i] = shape_of[var.shape]
                    except Exception:  # noqa: BLE001 - nested tensors have no single shape
                        shapes[i] = None
                    dtypes[i] = strs[var.dtype]
                    devices[i] = "cpu" if var.is_cpu else strs[var.device]  # (no object)
                listed = by_param(id(var))  # (model, parameter name)
                if listed is not None:
                    models[i], params_col[i] = listed
                    modules[i] = listed[1].rpartition(".")[0]
                    leaves[i] = LEAF_PARAMETER
                elif id(var) in inputs:
                    leaves[i] = LEAF_INPUT
                else:
                    leaves[i] = LEAF_UNREGISTERED
                    if self.describe_leaf is not None:
                        self.unregistered[f"n{i}"] = self.describe_leaf(var)
                continue
            if bounds is not None:
                k = bisect_right(bounds, fn._sequence_nr()) - 1
                owner = owners[k] if k >= 0 else None
                if owner is not None:
                    models[i], modules[i] = owner
            elif owner_of is not None:
                owner = owner_of(fn._sequence_nr())
                if owner is not None:
                    models[i], modules[i] = owner
            if not (want_saved and info.has_saved):
                continue
            if not info.python_function:
                # Inline (a method call per node was a third of the cost): the usual node,
                # whose saved tensors are plain tensors held without saved-tensor hooks (no
                # unpack hook runs, so no forward is re-run). A storage is counted at its
                # first appearance in node order; a weight's never (its storage is in the set).
                found = []
                for attr, raw_attr, name in info.saved_fields:
                    try:
                        raw = getattr(fn, raw_attr)
                        if type(raw) is not plain or raw.unpack_hook is not None:
                            break
                        t = getattr(fn, attr)
                        if t is None:
                            continue  # an optional input that was not given
                        if id(t) in params:  # a weight (every matmul and conv saves one)
                            key, nbytes = param_keys.get(id(t)) or self._param_storage(t)
                        elif type(t) is tensor_type:
                            st = t.untyped_storage()
                            key, nbytes = st._cdata, st.nbytes()  # (as in storage_key)
                        else:
                            break  # a subclass, an unlisted parameter: the general reader
                        counted = key not in storages
                        # One record per distinct (name, shape, dtype, size, counted), shared:
                        # a big graph saves the same kind of tensor at every layer or step.
                        # The key holds the torch.Size and dtype as read (no conversion, no
                        # name lookup); an unhashable (symbolic) size goes to the general reader.
                        seen_as = (name, t.shape, t.dtype, nbytes, counted)
                        rec = records.get(seen_as) or self._record(seen_as)
                        if counted:  # (nothing raises from here on)
                            add_storage(key)
                        found.append(rec)
                    except Exception:  # noqa: BLE001 - freed, nested, meta: general reader
                        break
                else:
                    if found:
                        saved_col[i] = tuple(found)
                    continue
                # The general reader goes on from the attribute this loop stopped at (a
                # hooked, listed, subclass or unreadable value); what it read stays.
                saved = self._saved(fn, info, forwards_before, devices[i],
                                    info.saved_attrs.index(attr), found)
            else:
                saved = self._saved(fn, info, forwards_before, devices[i])
            if saved:
                saved_col[i] = tuple(saved)
            if counting and self.forwards() != forwards_before:
                # That read re-ran a forward: a checkpointed segment (non-reentrant
                # checkpointing unpacks by recomputing). Stop reading saved tensors, so
                # each further segment is not recomputed (and BatchNorm statistics not
                # updated again) just for a memory figure.
                want_saved = False
                self.saved_incomplete = True

    # -- one node ------------------------------------------------------------------------------
    def _slow_metadata(self, fn: Any) -> tuple:
        """``(shape, dtype, device, outputs)`` the slow way: a node with no outputs, a nested
        or symbolic shape, or a torch without ``_input_metadata`` (then shapes come only from
        leaves)."""
        try:
            meta = fn._input_metadata
        except Exception:  # noqa: BLE001 - no such attribute, or a node that cannot say
            return None, None, None, 1
        if not meta:
            return None, None, None, 0
        m = meta[0]
        try:
            shape = tuple(map(int, m.shape))  # a jagged dim is a SymInt: not plain data
        except Exception:  # noqa: BLE001 - nested / symbolic shapes
            shape = None
        try:
            return shape, m.dtype, m.device, len(meta)
        except Exception:  # noqa: BLE001
            return shape, None, None, len(meta)

    # -- saved tensors -------------------------------------------------------------------------
    def _saved(self, fn: Any, info: _TypeInfo, forwards_before: Optional[int] = None,
               device: Optional[str] = None, start: int = 0, out: Optional[list] = None
               ) -> list:
        """The node's saved tensors, from its ``start``-th saved attribute on, added to
        ``out`` (the records of the attributes before it)."""
        if out is None:
            out = []
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
        for attr, raw_attr, name in info.saved_fields[start:]:
            try:
                raw = getattr(fn, raw_attr)
                if _hooked(raw):
                    # Held by saved-tensor hooks (checkpointing, save_on_cpu offloading):
                    # unpacking would recompute the segment or copy the tensor back to the
                    # device. Measure what the hook packed instead, without unpacking.
                    self.hooked += 1
                    self._add_packed(out, name, raw, device)
                    continue
                value = getattr(fn, attr)
            except Exception:  # freed by an earlier backward: nothing left to measure
                continue
            if forwards_before is not None and self.forwards() != forwards_before:
                break  # that read re-ran a checkpointed forward: read no more
            if isinstance(value, (list, tuple)):
                for k, t in enumerate(value):
                    self._add_saved(out, f"{name}[{k}]", t)
            else:
                self._add_saved(out, name, value)
        return out

    def _record(self, seen_as: tuple) -> SavedTensor:
        """The shared record of a saved tensor read as ``(name, torch.Size, dtype, bytes,
        counted)`` (raises for a size that is not plain ints)."""
        name, size, dtype, nbytes, counted = seen_as
        rec = self._records[seen_as] = _new_tuple(
            SavedTensor, (name, self._shapes[size], self._str_cache[dtype], nbytes, counted))
        return rec

    def _param_storage(self, t: torch.Tensor) -> tuple:
        found = self._param_storages.get(id(t))
        if found is None:
            found = self._param_storages[id(t)] = storage_key(t)
        return found

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
        if id(t) in self.params:  # a weight (saved by every matmul and conv): never counted,
            key, nbytes = self._param_storage(t)  # its storage looked up once per walk
        else:
            key, nbytes = storage_key(t)
        counted = key not in self._storages and not elsewhere
        self._storages.add(key)
        try:
            shape = self._shapes[t.shape]
        except Exception:  # nested tensors have no single shape, or a ragged SymInt one
            shape = None
        # tuple.__new__: a NamedTuple's own constructor is a Python function, slow per tensor
        out.append(_new_tuple(SavedTensor, (name, shape, self._str_cache[t.dtype], nbytes,
                                            counted)))


def _seeds(roots: Iterable[Any]) -> tuple:
    """The distinct root nodes in order, and each root's position among them."""
    fns = list(dict.fromkeys(fn for fn in (r.grad_fn if isinstance(r, torch.Tensor) else r
                                           for r in roots) if fn is not None))
    return fns, list(range(len(fns)))


def _positions(targets: list, fns: list, first: int) -> list:
    """The position of each edge's source node (``targets``: the nodes, edge by edge; ``fns``:
    the nodes in walk order, of which the first ``first`` are roots, found by no edge)."""
    if len(targets) == len(fns) - first:  # every edge found a new node, in walk order
        return list(range(first, len(fns)))
    return list(map(dict(zip(fns, range(len(fns)))).__getitem__, targets))


def _tuples(shapes: list, slow: int) -> list:
    """The walk's shapes (lists of ints from the fast path; tuples or None from the slow one)
    as tuples, each distinct shape made once and shared (one pass), and checked once: a
    symbolic size is not plain data (None then)."""
    if not slow:
        tuples: Iterable = map(tuple, shapes)
    else:
        tuples = (s if s is None or type(s) is tuple else tuple(s) for s in shapes)
    distinct = Interned()
    try:
        shared = list(map(distinct.__getitem__, tuples))
    except TypeError:  # an unhashable (symbolic) size: the slow way, one at a time
        return [_plain_shape(None if s is None else tuple(s)) for s in shapes]
    plain = {s: _plain_shape(s) for s in distinct}
    if all(p is s for s, p in plain.items()):
        return shared
    return list(map(plain.__getitem__, shared))


def _plain_shape(shape: Optional[tuple]) -> Optional[tuple]:
    if shape is None or all(type(d) is int for d in shape):
        return shape
    try:
        return tuple(map(int, shape))
    except Exception:  # noqa: BLE001 - a jagged or symbolic size
        return None


def _hooked(raw: Any) -> bool:
    """Is this ``_raw_saved_*`` value (a SavedTensor, or a list of them) held by saved-tensor
    hooks? Then reading ``_saved_*`` would run the unpack hook."""
    if type(raw) is _SavedTensor:  # the usual case, without a loop
        return raw.unpack_hook is not None
    items = raw if isinstance(raw, (list, tuple)) else (raw,)
    return any(getattr(st, "unpack_hook", None) is not None for st in items)


# Without it (another torch) every value takes the general path above.
_SavedTensor = getattr(getattr(torch._C, "_autograd", None), "SavedTensor", None)
_Tensor = torch.Tensor


def storage_id(t: torch.Tensor) -> Any:
    """``storage_key(t)[0]`` without reading the storage's size (a parameter table's keys)."""
    try:
        return t.untyped_storage()._cdata
    except Exception:  # noqa: BLE001 - sparse, nested, fake or meta tensors
        return storage_key(t)[0]


def storage_key(t: torch.Tensor) -> tuple:
    """A key identifying the memory a tensor occupies, and that memory's size in bytes.

    The key is the address of the storage's C++ object (``_cdata``): every view of a tensor,
    and the copy of an output autograd saves, share that object, and while the graph holds the
    tensors no two live storages have the same one. One int, on any device, read without
    asking the device: in the walk's set, 0.4 us less per saved tensor than
    ``(get_device(), data_ptr())`` pairs. (Two storages made over the same memory, as
    ``torch.from_numpy`` twice on one array, count twice.)"""
    try:
        st = t.untyped_storage()
        return st._cdata, st.nbytes()
    except Exception:  # sparse, nested, fake or meta tensors: fall back to the tensor itself
        return ("id", id(t)), t.numel() * t.element_size()


def walk_autograd_graph(roots: Iterable[Any], params: Optional[dict] = None,
                        inputs: Optional[set] = None, attribution: Optional[Attribution] = None,
                        param_storage_keys: Iterable = (), shapes: bool = True) -> Graph:
    """Walk the autograd graph behind ``roots`` (tensors or grad_fn nodes) into a Graph."""
    return AutogradWalker(params, inputs, attribution, param_storage_keys=param_storage_keys,
                          shapes=shapes, saved=shapes).walk(roots)
