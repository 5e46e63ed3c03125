"""Graphs kept alive across steps by the user's own variables.

Two patterns users post as "memory keeps growing" or "Trying to backward through the graph a
second time":

- **a variable that accumulates history**: ``total_loss += loss`` (or an EMA of the loss, or
  ``losses.append(loss)``) chains every step's graph onto the last. Seen by looking, now and
  then, at the variables of the frames that call a model: a tensor whose history contains the
  node that variable held at the previous look, built across a backward call, is a chain; a
  list that keeps growing and holds tensors with history from before a backward call keeps
  every step's graph.
- **an input carried into the next forward with its history**: an RNN's hidden state passed
  to the next batch without ``.detach()``. Seen at each forward of a model: a tensor argument
  whose ``grad_fn`` is older than the last backward call. That alone is normal (a GAN feeds
  ``fake`` to the discriminator after the generator's graph was made); it explains a failure
  (backward through a freed graph, or weights changed in place by the step in between) and,
  with a chain, growth.

The looks are spread out (forward calls 2, 3, 4, 6, 9, 13, ...: about 20 looks in 10,000
steps), each a copy of a few frames' variables; a chain costs a walk of the nodes made since
the previous look. Everything recorded is plain data: names, counts, ``file:line``.
"""
from __future__ import annotations

import ast
import bisect
import functools
import linecache
import sys
import types
from typing import Any, Callable, Optional

import torch

from .failures import sequence_nr
from .locations import display_path, frame_locals, is_installed_file, user_variable_name
from .walk import _TypeInfo, _hooked, storage_key

MAX_FRAMES = 4          # user frames looked at above a model call
MAX_VARIABLES = 200     # candidate variables remembered
MAX_LIST = 10_000       # longer containers are not looked into
MAX_WALK = 200_000      # nodes walked to confirm or measure one chain
MAX_CARRIED = 50
MAX_LOOKS = 6           # measured confirmations per chain; its growth is known by then
EVAL_LOOKS = 6          # looks at the first forwards of an evaluation run without no_grad
MAX_MEMBERS = 50        # entries of a dict / attributes of an object looked into


class KeepAliveWatch:
    """``backward_seqs``: the capture's list of autograd sequence numbers at each backward
    call; ``counters()``: (backward calls, optimizer steps)."""

    def __init__(self, backward_seqs: list, counters: Callable[[], tuple],
                 step_seqs: Optional[list] = None) -> None:
        self.backward_seqs = backward_seqs
        self.step_seqs = step_seqs if step_seqs is not None else []
        self.counters = counters
        self.calls = 0
        self._next_look = 2
        self._eval_run = 0          # eval-mode forwards with grad enabled in a row
        self._seen_now: set = set()
        self._evaluating = False    # the look now is during one
        self._last: dict = {}      # variable key -> what it held at the last look
        self.kept: dict = {}       # variable key -> record
        self.carried: dict = {}    # (model, arg, location) -> record
        self._types: dict = {}

    # -- at every model forward ----------------------------------------------------------------
    def on_forward(self, label: str, args: Any, attribution: Callable[[], Any],
                   training: bool = True) -> None:
        """A forward of a model with grad enabled. An eval-mode one with grad enabled is an
        evaluation without torch.no_grad(): the first few of each such run are all looked at,
        since a short validation loop falls between the spread-out looks."""
        self.calls += 1
        if self.backward_seqs and len(self.carried) < MAX_CARRIED:
            self._note_carried(label, args, attribution)
        self._eval_run = 0 if training else self._eval_run + 1
        if self.calls >= self._next_look or 0 < self._eval_run <= EVAL_LOOKS:
            if self.calls >= self._next_look:
                self._next_look = max(self.calls + 1, int(self.calls * 1.4))
            self._evaluating = not training
            self._look(sys._getframe(1))

    def _note_carried(self, label: str, args: Any, attribution: Callable[[], Any]) -> None:
        last = self.backward_seqs[-1]
        for i, arg in enumerate(args if isinstance(args, tuple) else (args,)):
            t = _first_with_history(arg)
            if t is None:
                continue
            seq = sequence_nr(t.grad_fn)
            if seq is None or seq >= last:
                continue  # made since the last backward call: this step's own history
            from .locations import user_location
            location = user_location()
            key = (label, i, location)
            rec = self.carried.get(key)
            if rec is None:
                owner = attribution()(seq)
                rec = self.carried[key] = {
                    "model": label, "arg": i, "location": location,
                    "name": user_variable_name(arg), "op": type(t.grad_fn).__name__,
                    "made_by": owner[0] if owner else None, "count": 0,
                    "first_backward": len(self.backward_seqs), "backwards": []}
            rec["count"] += 1
            if len(rec["backwards"]) < 64:
                rec["backwards"].append(len(self.backward_seqs))

    # -- looks at the callers' variables -------------------------------------------------------
    def _look(self, frame: Any) -> None:
        self._seen_now = set()  # ids looked at in this look: one object, one record
        looked = 0
        while frame is not None and looked < MAX_FRAMES:
            if not is_installed_file(frame.f_code.co_filename):
                looked += 1
                self._look_at_frame(frame)
            frame = frame.f_back

    def _look_at_frame(self, frame: Any) -> None:
        code = frame.f_code
        module_level = code.co_name == "<module>"
        scope = frame.f_globals if module_level else frame_locals(frame)
        for var, value in list(scope.items()):
            if var.startswith("__"):
                continue
            self._look_at_value((code.co_filename, code.co_name, var), value, frame,
                                module_level)
            # one level into dicts and the user's own objects: stats["loss"] += loss,
            # history["loss"].append(loss), an AverageMeter's .sum, a Trainer's self.epoch_loss
            for path, member in _members(var, value):
                self._look_at_value((code.co_filename, code.co_name, path), member, frame,
                                    module_level)

    def _look_at_value(self, key: tuple, value: Any, frame: Any, module_level: bool) -> None:
        if id(value) in self._seen_now:
            return  # the same object under another name, in an outer frame (meter / losses)
        if isinstance(value, (torch.Tensor, list, tuple)):
            self._seen_now.add(id(value))
        if isinstance(value, torch.Tensor):
            if value.grad_fn is not None:
                self._tensor(key, value, frame, module_level)
        elif isinstance(value, (list, tuple)) and value and len(value) <= MAX_LIST:
            self._container(key, value, frame, module_level)

    def _tensor(self, key: tuple, t: torch.Tensor, frame: Any, module_level: bool) -> None:
        seq = sequence_nr(t.grad_fn)
        if seq is None:
            return
        now = {"seq": seq, "op": type(t.grad_fn).__name__, "counters": self.counters(),
               "forwards": self.calls, "eval": self._evaluating}
        before = self._last.get(key)
        if before is None and len(self._last) >= MAX_VARIABLES:
            return
        rec = self.kept.get(key)
        self._last[key] = now
        if before is None or before["seq"] == seq:
            return  # first look, or the very same tensor
        old = _reaches(t.grad_fn, before["seq"], before["op"])
        if old is None:
            return  # a new history (the next step's, say), not the old one grown
        crossed = self._crossed(before["seq"], seq)
        if rec is None:
            rec = self.kept[key] = self._record("chain", key, frame, module_level, now["op"])
        if rec.get("tip") != before["seq"]:
            # a chain seen for the first time, or started anew (the next epoch's val_loss):
            # its growth is measured from what it held at the previous look
            rec["measures"], rec["looks"] = [], 0
            self._measure(rec, [old], before)
        rec["tip"] = seq
        rec["looks"] += 1
        rec["crossed_backwards"] = max(rec["crossed_backwards"], crossed[0])
        rec["crossed_steps"] = max(rec["crossed_steps"], crossed[1])
        if rec["looks"] <= MAX_LOOKS:  # then its growth is known: no more walks of a long chain
            self._measure(rec, [t.grad_fn], now)

    def _container(self, key: tuple, items: Any, frame: Any, module_level: bool) -> None:
        # (the kinds of the items first, in C: a list of floats or of records, the usual in a
        # training loop's frame, is then passed over without a Python step per item)
        try:
            kinds = set(map(type, items))
        except TypeError:  # a class whose metaclass defines __eq__ without __hash__
            kinds = {torch.Tensor}  # (then item by item, below)
        if not any(issubclass(kind, torch.Tensor) for kind in kinds):
            return
        with_history = [t for t in items if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        if not with_history:
            return
        seqs = [s for s in (sequence_nr(t.grad_fn) for t in with_history) if s is not None]
        if not seqs:
            return
        now = {"len": len(items), "oldest": min(seqs), "newest": max(seqs),
               "counters": self.counters(), "forwards": self.calls, "eval": self._evaluating}
        before = self._last.get(key)
        if before is None and len(self._last) >= MAX_VARIABLES:
            return
        self._last[key] = now
        if before is None or "len" not in before or now["len"] <= before["len"]:
            return
        crossed = self._crossed(now["oldest"], now["newest"])
        rec = self.kept.get(key)
        if rec is None:
            rec = self.kept[key] = self._record("list", key, frame, module_level,
                                                type(with_history[-1].grad_fn).__name__)
            older = [t.grad_fn for t in list(items)[:before["len"]]
                     if isinstance(t, torch.Tensor) and t.grad_fn is not None]
            self._measure(rec, older, before)  # the items it held at the previous look
        rec["looks"] += 1
        rec["crossed_backwards"] = max(rec["crossed_backwards"], crossed[0])
        rec["crossed_steps"] = max(rec["crossed_steps"], crossed[1])
        rec["items"] = len(with_history)
        self._measure(rec, [t.grad_fn for t in with_history], now)

    def _crossed(self, old: int, new: int) -> tuple:
        """(backward calls, optimizer steps) that began after node ``old`` was made and before
        node ``new``: history carried across them was kept on purpose by nobody."""
        def between(seqs: list) -> int:
            return bisect.bisect_right(seqs, new) - bisect.bisect_right(seqs, old)
        return between(self.backward_seqs), between(self.step_seqs)

    def _record(self, kind: str, key: tuple, frame: Any, module_level: bool, op: str) -> dict:
        path, function, var = key
        line = update_line(path, frame.f_code.co_firstlineno, var, module_level, frame.f_lineno)
        source = linecache.getline(path, line).strip()[:120] if line else None
        return {"kind": kind, "name": var, "scope": "global" if module_level else "local",
                "function": None if module_level else function,
                "location": f"{display_path(path)}:{line or frame.f_lineno}",
                "source": source or None,
                "op": op, "looks": 0, "crossed_backwards": 0, "crossed_steps": 0,
                "measures": []}

    def _measure(self, rec: dict, fns: list, look: dict) -> None:
        """Size of the history behind autograd nodes ``fns``, at the time of ``look``."""
        nodes, saved = history_memory(fns, self._types)
        measures = rec["measures"]
        counters = look["counters"]
        row = {"forwards": look["forwards"], "backward_calls": counters[0],
               "optimizer_steps": counters[1], "nodes": nodes, "saved_bytes": saved,
               "capped": nodes >= MAX_WALK, "eval": look.get("eval", False)}
        if len(measures) < 2:
            measures.append(row)
        else:
            measures[-1] = row  # the first and the latest: growth over the longest span

    def records(self) -> list:
        """Chains and growing lists (``kind`` "chain"/"list"), then carried inputs."""
        return [{k: v for k, v in r.items() if k != "tip"} for r in self.kept.values()] + \
            [{"kind": "carried", **r} for r in self.carried.values()]


def _members(var: str, value: Any) -> list:
    """(path, value) of the entries of a dict and the attributes of an object of the user's
    own class (defined in the user's files: not a module, a tensor or a library's object),
    one level deep. Never raises (lazy modules, proxies)."""
    try:
        if type(value) is dict:
            items = list(value.items())[:MAX_MEMBERS]
            return [(f"{var}[{k!r}]", v) for k, v in items if isinstance(k, (str, int))]
        if isinstance(value, (torch.Tensor, torch.nn.Module, type, types.ModuleType,
                              types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
            return []
        source = getattr(sys.modules.get(type(value).__module__), "__file__", None)
        if not source or is_installed_file(source):
            return []
        own = object.__getattribute__(value, "__dict__")  # (none: AttributeError, below)
        if not isinstance(own, dict):  # (a dict subclass: an AttrDict is its own __dict__)
            return []
        attrs = list(own.items())[:MAX_MEMBERS]
    except Exception:  # noqa: BLE001 - an object that resists being looked at is not ours
        return []
    return [(f"{var}.{a}", v) for a, v in attrs if isinstance(a, str) and not a.startswith("_")]


def _first_with_history(arg: Any) -> Optional[torch.Tensor]:
    """The argument, or the first tensor of a (nested, shallow) tuple/list, with a grad_fn:
    an LSTM's state is one ``(h, c)`` argument."""
    if isinstance(arg, torch.Tensor):
        return arg if arg.grad_fn is not None else None
    if isinstance(arg, (tuple, list)) and len(arg) <= 8:
        for item in arg:
            found = _first_with_history(item) if not isinstance(item, (tuple, list)) \
                or len(item) <= 8 else None
            if found is not None:
                return found
    return None


def _reaches(fn: Any, seq: int, op: str) -> Any:
    """The node numbered ``seq`` (of type ``op``) in the history behind ``fn``, or None. A
    node's inputs are older than it, so only nodes newer than ``seq`` are walked."""
    todo = [fn]
    seen = {id(fn)}
    while todo and len(seen) < MAX_WALK:
        node = todo.pop()
        s = sequence_nr(node)
        if s == seq and type(node).__name__ == op:
            return node
        if s is not None and s < seq:
            continue
        for nxt, _ in node.next_functions:
            if nxt is not None and id(nxt) not in seen:
                seen.add(id(nxt))
                todo.append(nxt)
    return None


def history_memory(fns: list, types: dict) -> tuple:
    """(autograd nodes, bytes of saved tensors still held) behind autograd nodes ``fns``,
    bounded. Saved tensors held by hooks (checkpointing, offloading) are not unpacked, and
    parameters are not counted: only what the kept graphs themselves hold."""
    todo = [fn for fn in fns if fn is not None]
    seen = {id(fn) for fn in todo}
    storages: set = set()
    saved = 0
    while todo and len(seen) < MAX_WALK:
        fn = todo.pop()
        info = types.get(type(fn))
        if info is None:
            info = types[type(fn)] = _TypeInfo(fn)
        if not info.is_leaf and not info.python_function:
            for attr in info.saved_attrs:
                try:
                    if _hooked(getattr(fn, "_raw" + attr)):
                        continue
                    value = getattr(fn, attr)
                except Exception:  # noqa: BLE001 - freed by its backward: nothing held
                    continue
                for v in value if isinstance(value, (list, tuple)) else (value,):
                    if isinstance(v, torch.Tensor) and not isinstance(v, torch.nn.Parameter):
                        key, nbytes = storage_key(v)
                        if key not in storages:
                            storages.add(key)
                            saved += nbytes
        for nxt, _ in fn.next_functions:
            if nxt is not None and id(nxt) not in seen:
                seen.add(id(nxt))
                todo.append(nxt)
    return len(seen), saved


@functools.lru_cache(maxsize=256)
def _tree(path: str) -> Optional[ast.AST]:
    try:
        with open(path, encoding="utf-8") as f:
            return ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None


def update_line(path: str, first_line: int, var: str, module_level: bool,
                near: int = 0) -> Optional[int]:
    """The line where ``var`` is grown in the function starting at ``first_line`` (or at
    module level): ``var += ...``, ``var = ... var ...``, ``var.append(...)``; not inside other
    functions or classes defined there, and the one nearest ``near`` (the line running)."""
    tree = _tree(path)
    if tree is None:
        return None
    scope = tree
    if not module_level:
        scope = next((n for n in ast.walk(tree)
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and (n.decorator_list[0].lineno if n.decorator_list else n.lineno)
                      <= first_line <= n.lineno), None)
        if scope is None:
            return None
    lines, calls = [], []
    base = var.split(".")[0].split("[")[0]
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue  # another scope: its `total` is another variable
        line = _grows(node, var)
        if line is not None:
            lines.append(line)
        elif base != var and _updates(node, base) is not None:
            calls.append(node.lineno)
        todo.extend(ast.iter_child_nodes(node))
    lines = lines or calls
    return min(lines, key=lambda k: (abs(k - near), k)) if lines else None


def _text(node: ast.AST) -> str:
    return ast.unparse(node) if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)) \
        else ""


def _grows(node: ast.AST, var: str) -> Optional[int]:
    """The line of ``var += ...``, ``var = ... var ...`` or ``var.append(...)``; ``var`` may
    be a path (``self.epoch_loss``, ``stats['loss']``)."""
    if isinstance(node, ast.AugAssign) and _text(node.target) == var:
        return node.lineno
    if isinstance(node, ast.Assign) and any(_text(t) == var for t in node.targets):
        if any(_text(n) == var for n in ast.walk(node.value)):
            return node.lineno
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr in ("append", "extend", "insert") \
            and _text(node.func.value) == var:
        return node.lineno
    return None


def _updates(node: ast.AST, base: str) -> Optional[int]:
    """The line of a method call on ``base`` (``losses.update(loss, n)``: an AverageMeter
    growing its own ``.sum``)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and _text(node.func.value) == base:
        return node.lineno
    return None
