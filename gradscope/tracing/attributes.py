"""Module attributes that torch does not manage: plain tensors and plain Python containers.

``Module.__setattr__`` registers Parameters, Modules and buffers; anything else is a plain Python
attribute: a tensor there is missed by ``.to()``, ``state_dict()`` and ``.half()``; a list of
modules hides their parameters from ``model.parameters()``. This scan reads ``vars(module)`` of
every module once, at the end of the run, and also names tensors reachable through those
attributes (``heads[0].weight``) so that unregistered graph leaves get a readable name.
"""
from __future__ import annotations

import bisect
import functools
import inspect
import operator
import re
from typing import Any, Optional

import torch
from torch import nn

from .failures import sequence_nr
from .locations import display_path, is_installed_file

# Attributes every nn.Module has: torch's own bookkeeping, never user state.
_MODULE_INTERNALS = frozenset(vars(nn.Module())) | {"_compiled_call_impl"}
MAX_ITEMS = 1000  # elements of one container looked at


@functools.lru_cache(maxsize=512)
def _assignment_lines(cls: type) -> dict:
    """``attr -> "file:line"`` of the first ``self.attr = ...`` in the class's source."""
    found: dict = {}
    for klass in cls.__mro__:
        if klass in (nn.Module, object) or klass.__module__.startswith("torch."):
            continue
        try:
            lines, start = inspect.getsourcelines(klass)
            path = display_path(inspect.getsourcefile(klass) or "?")
        except (OSError, TypeError):
            continue
        for k, line in enumerate(lines):
            for m in re.finditer(r"self\.([A-Za-z_]\w*)\s*(?::[^=]+)?=(?!=)", line):
                found.setdefault(m.group(1), f"{path}:{start + k}")
    return found


def assignment_location(module: nn.Module, attr: str) -> Optional[str]:
    return _assignment_lines(type(module)).get(attr)


def container_items(value: Any) -> list:
    """(``[key]`` path suffix, item) for the first MAX_ITEMS elements of a container."""
    if isinstance(value, dict):
        return [(f"[{k!r}]", v) for k, v in list(value.items())[:MAX_ITEMS]]
    if isinstance(value, set):
        return [("[?]", v) for v in list(value)[:MAX_ITEMS]]
    return [(f"[{i}]", v) for i, v in enumerate(list(value)[:MAX_ITEMS])]


def scan_attributes(models: dict, backward_seqs: Any = (),
                    named_modules: Any = None) -> tuple:
    """Returns (records, names): plain tensor and container attributes of every model's
    modules, and ``id(tensor) -> attribute path`` for tensors reachable through them.
    ``backward_seqs``: the autograd sequence number at each backward call, ascending;
    ``named_modules``: ``model -> [(name, module)]`` when the caller has the listing."""
    records: list = []
    names: dict = {}
    layouts: dict = {}  # attribute names of a module -> those that are not torch's own
    for label, model in models.items():
        if model is None:
            continue
        # one traversal serves all three uses
        tree = named_modules(model) if named_modules is not None else list(model.named_modules())
        registered = _Registered(tree)  # (made only for a container attribute: rare)
        for (qual, mod), state in zip(tree, map(vars, map(_SECOND, tree))):
            buffers = state.get("_buffers")
            if buffers:
                for attr, value in list(buffers.items()):
                    if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                        # a registered buffer re-assigned a value with autograd history
                        records.append({**_tensor_record(label, qual, mod, attr, value,
                                                         backward_seqs), "kind": "buffer"})
            # torch's own attributes left out, once per layout of attribute names (most
            # modules share one with many others and have none of their own but sizes); in
            # the dict's order, for deterministic records
            names_in = tuple(state)
            own = layouts.get(names_in)
            if own is None:
                own = layouts[names_in] = tuple(a for a in names_in if a not in _MODULE_INTERNALS)
            for a in own:
                if type(state[a]) not in _PLAIN:
                    break
            else:
                continue  # sizes, flags, strings: nothing torch would have to manage
            prefix = f"{qual}." if qual else ""
            for attr in own:
                value = state[attr]
                if not isinstance(value, (torch.Tensor, list, tuple, dict, set)):
                    continue
                path = prefix + attr
                if isinstance(value, torch.Tensor) and _derived_by_torch(mod, attr):
                    continue
                if isinstance(value, torch.Tensor):
                    names.setdefault(id(value), path)
                    records.append(_tensor_record(label, qual, mod, attr, value,
                                                  backward_seqs))
                elif isinstance(value, (list, tuple, dict, set)) and value:
                    rec = _container_record(label, qual, mod, attr, value, path, names,
                                            registered.modules, registered.params,
                                            backward_seqs)
                    if rec is not None:
                        records.append(rec)
    return records, names


_SECOND = operator.itemgetter(1)
_PLAIN = frozenset((int, float, bool, str, type(None)))


class _Registered:
    """The ids of a model's registered modules and parameters, made when first asked for."""

    def __init__(self, tree: list) -> None:
        self._tree = tree
        self._modules: Optional[set] = None
        self._params: Optional[set] = None

    @property
    def modules(self) -> set:
        if self._modules is None:
            self._modules = {id(m) for _, m in self._tree}
        return self._modules

    @property
    def params(self) -> set:
        if self._params is None:
            self._params = {id(p) for _, m in self._tree for p in m._parameters.values()
                            if p is not None}
        return self._params


def _derived_by_torch(mod: nn.Module, attr: str) -> bool:
    """weight_norm, spectral_norm and prune recompute ``module.weight`` as a plain tensor from
    registered ``weight_g``/``weight_v`` or ``weight_orig``: by design, not a bug."""
    own = mod._parameters
    return f"{attr}_orig" in own or (f"{attr}_g" in own and f"{attr}_v" in own)


def _tensor_record(label: str, qual: str, mod: nn.Module, attr: str, t: torch.Tensor,
                   backward_seqs: Any = ()) -> dict:
    nodes, crossed = history_size(t, backward_seqs)
    return {"kind": "tensor", "model": label, "module": qual, "attr": attr,
            "type": type(mod).__name__, "shape": list(t.shape),
            "dtype": str(t.dtype).replace("torch.", ""), "device": str(t.device),
            "requires_grad": bool(t.requires_grad), "is_leaf": bool(t.is_leaf),
            "history": nodes, "backwards_crossed": crossed,
            "grad_fn": type(t.grad_fn).__name__ if t.grad_fn is not None else None,
            "location": assignment_location(mod, attr)}


MAX_HISTORY = 100_000


def history_size(t: torch.Tensor, backward_seqs: Any = ()) -> tuple:
    """(autograd nodes a tensor keeps alive through its ``grad_fn``, how many backward calls
    its history spans): iterative, capped at MAX_HISTORY; (0, 0) for a leaf or a detached
    tensor. A history spanning a backward was built on both sides of it: carried over."""
    fn = t.grad_fn
    if fn is None:
        return 0, 0
    seen = {id(fn)}
    todo = [fn]
    lo = hi = None
    while todo and len(seen) < MAX_HISTORY:
        node = todo.pop()
        seq = sequence_nr(node)
        if seq is not None:
            lo = seq if lo is None else min(lo, seq)
            hi = seq if hi is None else max(hi, seq)
        for nxt, _ in node.next_functions:
            if nxt is not None and id(nxt) not in seen:
                seen.add(id(nxt))
                todo.append(nxt)
    crossed = 0 if lo is None else \
        bisect.bisect_right(backward_seqs, hi) - bisect.bisect_right(backward_seqs, lo)
    return len(seen), crossed


def _container_record(label: str, qual: str, mod: nn.Module, attr: str, value: Any, path: str,
                      names: dict, registered_modules: set, registered_params: set,
                      backward_seqs: Any = ()) -> Optional[dict]:
    modules, params, tensors = [], 0, 0
    hidden_params = 0
    history, crossed, with_history = 0, 0, 0  # tensors holding autograd history (an RNN state)
    for key, item in container_items(value):
        if isinstance(item, nn.Module):
            own = id(item) in registered_modules
            modules.append({"path": f"{attr}{key}", "type": type(item).__name__,
                            "registered": own})
            for pname, p in item.named_parameters():
                names.setdefault(id(p), f"{path}{key}.{pname}")
                if id(p) not in registered_params:
                    hidden_params += p.numel()
        elif isinstance(item, torch.Tensor) and item.grad_fn is not None:
            # an activation kept with its history (self.hidden = (h, c)): not a parameter
            nodes, spanned = history_size(item, backward_seqs)
            history, crossed = max(history, nodes), max(crossed, spanned)
            with_history += 1
            tensors += 1
        elif isinstance(item, torch.Tensor):
            names.setdefault(id(item), f"{path}{key}")
            if isinstance(item, nn.Parameter) or item.requires_grad:
                params += 1
                if id(item) not in registered_params:
                    hidden_params += item.numel()
            else:
                tensors += 1
    if not modules and not params and not with_history:
        return None
    return {"kind": "container", "model": label, "module": qual, "attr": attr,
            "type": type(mod).__name__, "container": type(value).__name__,
            "modules": modules, "parameters": params, "tensors": tensors,
            "hidden_parameters": hidden_params, "location": assignment_location(mod, attr),
            "with_history": with_history, "history": history, "backwards_crossed": crossed,
            "library": _library_class(type(mod))}


@functools.lru_cache(maxsize=512)
def _library_class(cls: type) -> bool:
    """Is the module's class defined in an installed library (transformers' attention keeping
    its kernel functions in a dict), not in the user's code?"""
    try:
        path = inspect.getsourcefile(cls) or ""
    except (OSError, TypeError):
        return False
    return is_installed_file(path)
