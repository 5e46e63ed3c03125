"""``model.forward(x)`` (or ``model.encode(x)``, any method) called without ``model(x)``.

Module hooks fire from ``Module.__call__``: a ``forward`` called directly runs none of them,
gradscope's included, so the modules it calls look like separate models and its own ops belong
to none. When a module is called while no forward is running, the frames above the call are
asked whether they are a method of an ``nn.Module``: if so, that module is running without its
hooks. Its submodules are then named inside it, its own ops between them are attributed to it
(a range from its first submodule call to its last), and the site is recorded: a direct
``forward`` call skips the module's own hooks too (``torch.nn.utils.prune``, the old
``weight_norm``/``spectral_norm``, the user's), which changes what it computes.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from torch import nn

from .locations import display_path, frame_locals, is_installed_file

MAX_FRAMES = 24
MAX_SITES = 50
_GLOBAL_FORWARD_HOOKS = nn.modules.module._global_forward_hooks


class DirectCalls:
    """Owned by a ModuleTracker; ``enter(child, frame)`` at a module call with no forward
    running, ``child_done()`` when such a call returns."""

    def __init__(self, tracker: Any, peek: Any) -> None:
        self.tracker = tracker
        self.peek = peek              # the autograd sequence counter, or None
        self.records: dict = {}
        self._current: Optional[dict] = None
        # Calls inside a running forward are looked at only under ``gradscope trace`` (the op
        # watch on): a frame check per layer op, too much for a watch left on in training.
        self.nested = False

    def enter(self, child: nn.Module, frame: Any) -> Optional[tuple]:
        """The child's ``(module, model, name)`` entry inside the module whose method is
        running, or None when no such module is (a genuine top-level call)."""
        found = _running_method(frame, skip=child)
        if found is None:
            self.flush()
            return None
        owner, method, method_frame = found
        names = self.tracker.lookup(owner) or self._register(owner, method_frame)
        entry = self.tracker._names.get(id(child))
        if names is None or entry is None or entry[0] is not child or entry[1] != names[0]:
            return None
        current = self._current
        # (the frame's id, not the frame: holding it would keep the forward's locals alive)
        if current is None or current["frame"] != (id(method_frame), method_frame.f_code):
            self._start(owner, names, method, method_frame)
        return entry

    def leaf_op(self, frame: Any) -> None:
        """A layer op (``linear``, ``conv2d``, ...) runs while no forward is: from a module's
        own ``forward`` called directly (``model.head.forward(x)`` on a module without
        submodules, which no module hook ever sees), its ops are that module's."""
        if self.tracker.muted() or under_construction(frame):
            return  # a parametrization computing a weight, or a model sizing its layers
        found = _running_method(frame)
        if found is None:
            return
        owner, method, method_frame = found
        names = self.tracker.lookup(owner) or self._register(owner, method_frame)
        if names is None:
            return
        current = self._current
        if current is None or current["frame"] != (id(method_frame), method_frame.f_code):
            self._start(owner, names, method, method_frame)

    def nested_op(self, frame: Any) -> Optional[tuple]:
        """A layer op inside a running forward: ``(model, name)`` of the module whose
        ``forward`` made it without ``__call__`` (``self.head.forward(x)`` inside the model's
        forward), recorded as a direct call, else None. The running module's own forward is
        told by its code object: one comparison per op in the usual case."""
        top = self.tracker.current_module()
        frame = _past_torch_functions(frame)
        if top is None or frame is None:
            return None
        if frame.f_code is getattr(getattr(type(top), "forward", None), "__code__", None) and (
                not (top.__dict__.get("_forward_hooks") or _GLOBAL_FORWARD_HOOKS)
                or frame_locals(frame).get("self") is top):
            # (a trace runs forward hooks inside the module's call: one of them may call
            # another module's forward of the same class, told by its self)
            return None
        found = _running_method(frame)
        if found is None or found[0] is top or self.tracker.running(found[0]):
            return None
        owner, method, method_frame = found
        names = self.tracker.lookup(owner)
        if names is None:
            return None
        self._site(owner, names, method, method_frame)
        return names

    def nested_call(self, child: nn.Module, top: nn.Module, frame: Any) -> None:
        """A submodule called inside a running forward, by a module that is not running through
        ``__call__`` (``self.enc.forward(x)``): record the direct call."""
        frame = _past_torch_functions(frame)
        if frame is None or frame.f_code is getattr(
                getattr(type(top), "forward", None), "__code__", None):
            return
        found = _running_method(frame, skip=child)
        if found is None or found[0] is top or self.tracker.running(found[0]):
            return
        owner, method, method_frame = found
        names = self.tracker.lookup(owner)
        if names is not None:
            self._site(owner, names, method, method_frame)

    def _start(self, owner: nn.Module, names: tuple, method: str, frame: Any) -> None:
        self.flush()
        seq = self.peek() if self.peek is not None else 0
        self._current = {"frame": (id(frame), frame.f_code), "model": names[0],
                         "name": names[1],
                         "start": seq, "end": seq}
        self._site(owner, names, method, frame)
        model = self.tracker.models.get(names[0])
        if names[1] == "" and model is owner and self.tracker.on_root_call is not None:
            self.tracker.on_root_call(owner, names[0], ())

    def _site(self, owner: nn.Module, names: tuple, method: str, frame: Any) -> None:
        """Count one direct call of ``owner.method`` at the line that made it."""
        caller = _user_caller(frame)
        location = f"{display_path(caller.f_code.co_filename)}:{caller.f_lineno}" \
            if caller is not None else None
        key = (names[0], names[1], method, location)
        rec = self.records.get(key)
        if rec is None and len(self.records) < MAX_SITES:
            hooks = []
            if method == "forward":
                for table in (owner._forward_pre_hooks, owner._forward_hooks):
                    hooks += [_hook_name(h) for h in table.values()]
            rec = self.records[key] = {
                "model": names[0], "module": names[1], "type": type(owner).__name__,
                "method": method, "location": location, "calls": 0, "hooks": hooks}
        if rec is not None:
            rec["calls"] += 1
        self.tracker.count_call(names[0], names[1], owner)

    def child_done(self) -> None:
        if self._current is not None and self.peek is not None:
            self._current["end"] = self.peek()

    def flush(self) -> None:
        """The running method's ops between its first and last submodule call are its own."""
        current, self._current = self._current, None
        if current is not None and current["end"] > current["start"] \
                and self.tracker.record_ranges:
            self.tracker._ranges.append((current["start"], current["end"], current["model"],
                                         current["name"]))

    def _register(self, owner: nn.Module, frame: Any) -> Optional[tuple]:
        """Name a module first seen running a method: after the caller's variable for it, or
        inside a model a caller holds (``model.encoder.forward(x)``), else its class."""
        label, container = holder_in_frames(owner, frame.f_back)
        if label is None and container is not None:
            self.tracker.add_model(container[1], container[0])
        else:
            self.tracker.add_model(owner, label or type(owner).__name__)
        return self.tracker.lookup(owner)

    def records_list(self) -> list:
        return [dict(r) for r in self.records.values()]


def under_construction(frame: Any) -> bool:
    """Is a module's ``__init__`` on the stack (a model sizing its head from a dummy batch)?
    Such calls are not forwards of the program: the module is not a model yet."""
    looked = 0
    while frame is not None and looked < MAX_FRAMES:
        code = frame.f_code
        looked += 1
        if code.co_name == "__init__" and code.co_argcount and code.co_varnames[0] == "self" \
                and not _ours(code.co_filename) \
                and isinstance(frame_locals(frame).get("self"), nn.Module):
            return True
        frame = frame.f_back
    return False


def _running_method(frame: Any, skip: Optional[nn.Module] = None) -> Optional[tuple]:
    """(module, method name, frame) of the innermost frame that is a method of an
    ``nn.Module`` other than ``skip`` (first argument ``self``): with no forward running, that
    module's method runs without its hooks. torch's own frames count too (``Linear.forward``
    called directly); gradscope's never do."""
    looked = 0
    while frame is not None and looked < MAX_FRAMES:
        code = frame.f_code
        looked += 1
        if code.co_name == "__init__":
            return None  # a module calling its parts while it is built (shape inference)
        if code.co_argcount and code.co_varnames[0] == "self" and not _ours(code.co_filename):
            owner = frame_locals(frame).get("self")
            if isinstance(owner, nn.Module) and owner is not skip \
                    and "_modules" in vars(owner):  # (not half-built)
                return owner, code.co_name, frame
        frame = frame.f_back
    return None


_OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _ours(path: str) -> bool:
    return path.startswith(_OURS)


def holder_in_frames(module: nn.Module, frame: Any) -> tuple:
    """(the user's variable holding ``module``, or None; (variable, model) of a model a user
    frame holds that contains it, or None), from ``frame`` up."""
    container = None
    looked = 0
    while frame is not None and looked < 4:
        if frame.f_code.co_name == "__init__":
            break  # a model under construction is not a model yet
        if not is_installed_file(frame.f_code.co_filename):
            looked += 1
            scope = frame.f_globals if frame.f_code.co_name == "<module>" \
                else {**frame.f_globals, **frame_locals(frame)}
            for var, value in list(scope.items()):
                if var.startswith("_") or not isinstance(value, nn.Module):
                    continue
                if value is module:
                    return var, None
                if container is None and value is not module \
                        and not isinstance(value, _COLLECTIONS) and "_modules" in vars(value) \
                        and any(m is module for m in value.modules()):
                    container = (var, value)
        frame = frame.f_back
    return None, container


_TORCH_FUNCTION_FILES = (os.path.join("torch", "nn", "functional.py"),
                         os.path.join("torch", "overrides.py"),
                         os.path.join("torch", "functional.py"))


def _past_torch_functions(frame: Any) -> Any:
    """The frame that called a torch function: past ``F.embedding``'s own frame and
    ``handle_torch_function``'s (C functions such as ``F.linear`` have none)."""
    while frame is not None and frame.f_code.co_filename.endswith(_TORCH_FUNCTION_FILES):
        frame = frame.f_back
    return frame


# Collections of models (a ModuleDict "zoo") are not a model: naming one member inside it would
# make the others look like unused parts.
_COLLECTIONS = (nn.ModuleDict, nn.ModuleList)


def _user_caller(frame: Any) -> Any:
    caller = frame.f_back
    while caller is not None and is_installed_file(caller.f_code.co_filename):
        caller = caller.f_back
    return caller


def _hook_name(hook: Any) -> str:
    name = getattr(hook, "__qualname__", None) or type(hook).__name__
    module = getattr(hook, "__module__", None) or type(hook).__module__
    return f"{module}.{name}" if module and not module.startswith("builtins") else name
