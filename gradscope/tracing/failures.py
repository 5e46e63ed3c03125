"""When the traced program fails with an error gradscope can explain, gather the facts the
explanation needs while the objects are still alive: the tensors named on the failing line and
their devices, the module whose forward raised, the autograd node whose saved tensor was
modified in place and the in-place operation that did it. Everything is turned into plain data.
"""
from __future__ import annotations

import collections
import linecache
import re
from typing import Any, Optional

import torch
from torch import nn

from .locations import display_path, frame_locals, is_library_file

DEVICE_MISMATCH = ("to be on the same device", "is not on the expected device",
                   "same device as tensor", "but expected it to be on", "found at least two devices",
                   "Expected object of device type",
                   "not at the same device",                 # nn.LSTM/GRU/RNN, input vs weights
                   "same device as the indexed tensor")      # cpu_tensor[cuda_index]
CUDA_UNAVAILABLE = ("Torch not compiled with CUDA enabled", "Cannot initialize CUDA without",
                    "No CUDA GPUs are available", "Found no NVIDIA driver",
                    "CUDA driver version is insufficient", "no CUDA-capable device")
INPLACE = "modified by an inplace operation"
# backward() on a tensor without history: the graph was cut before the loss (dead-training)
NO_GRAD_LOSS = "does not require grad and does not have a grad_fn"
# backward through a graph an earlier backward freed: history carried across steps
GRAPH_FREED = ("Trying to backward through the graph a second time",
               "access saved tensors after they have already been freed")
_INPLACE_DETAIL = re.compile(
    r"\[(?P<type>[\w.]+) \[(?P<shape>[\d, ]*)\]\](?:, which is output (?P<output>\d+) of "
    r"(?P<producer>\w+),)? is at version (?P<version>\d+); expected version (?P<expected>\d+)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)*")
MAX_STALE_WALK = 200_000


def classify(exc: BaseException) -> Optional[str]:
    """``device-mismatch``, ``cuda-unavailable``, ``inplace-modified``, ``no-grad-loss``,
    ``graph-freed`` or None."""
    text = str(exc)
    if INPLACE in text:
        return "inplace-modified"
    if NO_GRAD_LOSS in text:
        return "no-grad-loss"
    if any(p in text for p in GRAPH_FREED):
        return "graph-freed"
    if any(p in text for p in CUDA_UNAVAILABLE):
        return "cuda-unavailable"
    if any(p in text for p in DEVICE_MISMATCH) or (
            "Input type (" in text and "should be the same" in text and "cuda" in text.lower()):
        return "device-mismatch"
    return None


def chain(error: BaseException) -> list:
    """The error and those it was raised from or during (``__cause__``, ``__context__``)."""
    out: list = []
    while error is not None and all(error is not e for e in out) and len(out) < 20:
        out.append(error)
        error = error.__cause__ or error.__context__
    return out


def describe_tensor(t: torch.Tensor) -> dict:
    return {"device": str(t.device), "shape": list(t.shape) if t.layout == torch.strided else None,
            "dtype": str(t.dtype).replace("torch.", "")}


# -- the failing line ----------------------------------------------------------------------------
def failing_site(exc: BaseException) -> tuple:
    """(frame, ``file:line``, source line) of the innermost user frame in the traceback."""
    tb = exc.__traceback__
    found = None
    while tb is not None:
        if not is_library_file(tb.tb_frame.f_code.co_filename):
            found = tb
        tb = tb.tb_next
    if found is None:
        return None, None, None
    path = found.tb_frame.f_code.co_filename
    line = linecache.getline(path, found.tb_lineno).strip()
    return found.tb_frame, f"{display_path(path)}:{found.tb_lineno}", line or None


def _static_attr(obj: Any, name: str) -> Any:
    """``obj.name`` without running properties or ``__getattr__`` of the user's classes
    (except nn.Module's own tables, read directly)."""
    if isinstance(obj, nn.Module):
        for table in (obj._parameters, obj._buffers, obj._modules):
            if name in table:
                return table[name]
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict) and name in d:
        return d[name]
    raise LookupError(name)


def tensors_on_line(frame: Any, line: Optional[str], limit: int = 12) -> list:
    """Tensors (and modules' parameters) named on ``line``, looked up in ``frame``."""
    if frame is None or not line:
        return []
    scope = {**frame.f_globals, **frame_locals(frame)}
    out, seen = [], set()
    for match in _NAME.finditer(line.split("#", 1)[0]):
        path = re.sub(r"\s+", "", match.group(0))
        parts = path.split(".")
        if parts[0] not in scope:
            continue
        obj = scope[parts[0]]
        try:
            for part in parts[1:]:
                obj = _static_attr(obj, part)
        except LookupError:
            # a method call such as x.to(...) names x: keep the longest resolvable prefix
            obj = scope[parts[0]]
            resolved = [parts[0]]
            for part in parts[1:]:
                try:
                    obj = _static_attr(obj, part)
                except LookupError:
                    break
                resolved.append(part)
            path = ".".join(resolved)
        if path in seen:
            continue
        if isinstance(obj, torch.Tensor):
            seen.add(path)
            out.append({"name": path, **describe_tensor(obj)})
        elif isinstance(obj, nn.Module) and obj._parameters:
            seen.add(path)
            first = next((p for p in obj._parameters.values() if p is not None), None)
            if first is not None:
                out.append({"name": f"{path} (parameters)", **describe_tensor(first)})
        if len(out) >= limit:
            break
    return out


def module_devices(module: nn.Module, args: Any) -> list:
    """Devices of what a module's forward touches: its own parameters, buffers, plain tensor
    attributes, and the tensors passed in."""
    rows = []
    for name, p in module._parameters.items():
        if p is not None:
            rows.append({"name": name, "kind": "parameter", **describe_tensor(p)})
    for name, b in module._buffers.items():
        if b is not None:
            rows.append({"name": name, "kind": "buffer", **describe_tensor(b)})
    for name, value in vars(module).items():
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            rows.append({"name": name, "kind": "attribute", **describe_tensor(value),
                         "unregistered": True})
    below: dict = {}  # parameters of submodules: one row per device, with an example name
    for name, p in module.named_parameters():
        if "." in name:
            below.setdefault(str(p.device), []).append(name)
    for device, names in below.items():
        rows.append({"name": f"{len(names)} parameters of submodules (e.g. {names[0]})",
                     "kind": "parameter", "device": device, "shape": None, "dtype": None,
                     "count": len(names)})
    for i, a in enumerate(args if isinstance(args, tuple) else (args,)):
        if isinstance(a, torch.Tensor):
            rows.append({"name": f"input {i}", "kind": "input", **describe_tensor(a)})
    return rows[:40]


# -- in-place modification -----------------------------------------------------------------------
def parse_inplace(message: str) -> dict:
    m = _INPLACE_DETAIL.search(message)
    if m is None:
        return {}
    shape = [int(s) for s in m.group("shape").replace(" ", "").split(",") if s]
    return {"tensor_type": m.group("type"), "shape": shape,
            "output": int(m.group("output")) if m.group("output") else None,
            "producer": m.group("producer"), "version": int(m.group("version")),
            "expected": int(m.group("expected"))}


def stale_saved(roots: list, attribution: Any = None, producer: Optional[str] = None) -> list:
    """The autograd node behind ``roots`` that autograd failed on: one whose saved tensor was
    modified in place since it was saved (reading that ``_saved_*`` attribute raises
    autograd's own version error), made by ``producer`` when the error names it.

    Only nodes made by the producer, or fed by it, have their saved tensors read: each read
    unpacks a tensor (recomputing a checkpointed segment, or copying back from the CPU under
    save_on_cpu). Returns ``[row]`` or ``[]``.
    """
    roots = [t.grad_fn for t in roots if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    if producer:
        found = _walk_stale(roots, attribution, producer)
        if found:
            return found
    return _walk_stale(roots, attribution, None)  # a leaf, or a view named differently


def _walk_stale(roots: list, attribution: Any, producer: Optional[str]) -> list:
    queue = collections.deque(roots)
    seen = {id(fn) for fn in queue}
    attrs_of: dict = {}
    visited = 0
    while queue and visited < MAX_STALE_WALK:
        fn = queue.popleft()
        visited += 1
        inputs = [n for n, _ in getattr(fn, "next_functions", ()) if n is not None]
        if producer is None or type(fn).__name__.startswith(producer) or any(
                type(n).__name__.startswith(producer) for n in inputs):
            attrs = attrs_of.get(type(fn))
            if attrs is None:
                attrs = attrs_of[type(fn)] = [a for a in dir(fn) if a.startswith("_saved_")]
            for attr in attrs:
                try:
                    getattr(fn, attr)
                except RuntimeError as e:
                    if INPLACE in str(e):
                        return [_stale_row(fn, attr, attribution)]
                except Exception:  # noqa: BLE001 - other odd attributes: not our question
                    continue
        for nxt in inputs:
            if id(nxt) not in seen:
                seen.add(id(nxt))
                queue.append(nxt)
    return []


def _stale_row(fn: Any, attr: str, attribution: Any) -> dict:
    seq = sequence_nr(fn)
    owner = attribution(seq) if attribution is not None and seq is not None else None
    inputs = [(type(n).__name__, sequence_nr(n)) for n, _ in getattr(fn, "next_functions", ())
              if n is not None]
    return {"op": type(fn).__name__, "saved": attr[len("_saved_"):], "seq": seq,
            "model": owner[0] if owner else None, "module": owner[1] if owner else None,
            "inputs": inputs}


def sequence_nr(fn: Any) -> Optional[int]:
    """An autograd node's sequence number (forward order), or None (no node, no number, or
    AccumulateGrad's UINT64_MAX)."""
    try:
        seq = fn._sequence_nr()
    except Exception:  # noqa: BLE001 - None, or a node type without one
        return None
    return seq if seq < 2 ** 62 else None


def culprit(detail: dict, stale: list, records: list) -> Optional[dict]:
    """The in-place operation that broke the first stale node: the one that moved the tensor's
    version from the expected one to the next, on a tensor made by the op the error names."""
    if not detail:
        return None
    bumped = detail["expected"] + 1
    producer = detail.get("producer")
    matches: list = []
    for row in stale[:1]:  # the node backward failed on (the first one it reaches)
        candidates = [(row["op"], row["seq"])] + [tuple(i) for i in row["inputs"]]
        seqs = {seq for op, seq in candidates
                if producer and op.startswith(producer) and seq is not None}
        matches = [r for r in records if r["version"] == bumped and seqs & set(r["producers"])]
    if not matches:  # a leaf, or an op we could not tie to a node: same shape and version
        matches = [r for r in records if r["version"] == bumped and r["shape"] == detail["shape"]]
    if not matches:
        return None
    best = matches[-1]  # the most recent forward's
    return {k: best[k] for k in ("op", "shape", "model", "module", "location", "forward")}


def stale_parameters(models: dict, detail: dict) -> list:
    """Parameters of the traced models at the version the error reports, with its shape (or
    the transposed one: a Linear saves weight.t())."""
    if not detail:
        return []
    shape = detail["shape"]
    out = []
    for label, model in models.items():
        if model is None:
            continue
        for name, p in model.named_parameters():
            dims = list(p.shape)
            if p._version == detail["version"] and (dims == shape or dims[::-1] == shape):
                out.append(f"{label}.{name}")
    return out[:10]
