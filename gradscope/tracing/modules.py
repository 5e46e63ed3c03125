"""Which module's forward was running when each autograd node was created.

Two hooks, pre and post, push and pop a stack of running modules and record, for every call,
the range of autograd sequence numbers handed out while it ran
(``torch._C._autograd._get_sequence_nr`` peeks the thread's counter for the price of a dict
lookup). After the run, a node's sequence number is looked up in those nested ranges: the
innermost range that holds it is the module that made it.
This costs two counter reads per module call and nothing per op, unlike wrapping every torch
function. A trace calls the hooks from its own ``Module._call_impl`` (modulecall.py, cheaper); a
watch registers them as global forward hooks (``always_call=True``, so that the stack stays
balanced when a forward raises), which it can take out and put back between steps.
"""
from __future__ import annotations

import bisect
import dataclasses
import difflib
import math
import sys
import threading
import weakref
from typing import Any, Callable, Optional

import torch
from torch import nn

from . import modulecall
from .abandoned import call_frame, unwound
from .attributes import container_items
from .directcall import DirectCalls, holder_in_frames, under_construction
from .failures import classify, module_devices
from . import selftime
from .handles import HandleGroup, hook_of_ours
from .locations import code_location, user_variable_name

_GraphModule = torch.fx.GraphModule
no_torch_function = torch._C.DisableTorchFunction
try:  # parametrizations (spectral_norm, orthogonal, weight_norm's new form) run on .weight reads
    from torch.nn.utils.parametrize import ParametrizationList as _ParametrizationList
except ImportError:  # pragma: no cover - older torch
    _ParametrizationList = ()
_peek_sequence_nr: Optional[Callable[[], int]] = getattr(
    getattr(torch._C, "_autograd", None), "_get_sequence_nr", None)


# Tests only: every module call through the full hooks (the fast path must record the same)
FULL_HOOKS_ONLY = False


class _NotCounting:
    enabled = False


_NOT_COUNTING = _NotCounting()


class ModuleRecord:
    """What was seen of one module (one qualified name in one model). A plain class with
    slots: a trace makes one per module called (2,000 in a 1000-layer MLP)."""

    __slots__ = ("model", "name", "type", "registered", "calls", "output", "location",
                 "has_parameters", "objects", "last", "batch_stats")

    def __init__(self, model: str, name: str, type: str, registered: bool,
                 location: Optional[str] = None, has_parameters: bool = False) -> None:
        self.model = model
        self.name = name                # qualified name inside the model, "" for the model
        self.type = type
        self.registered = registered    # False: not a submodule of its caller (built in forward)
        self.calls = 0
        # the first call's output: its torch.Size (a tensor), else its description already;
        # see output_text()
        self.output: Any = None
        self.location = location        # first call site in user code (unregistered modules)
        self.has_parameters = has_parameters
        self.objects = 1                # distinct module objects seen under this name
        self.last: Any = None           # weak reference to the last one
        # batch norm in training mode: (batch size, values per channel) -> calls
        self.batch_stats: Optional[dict] = None

    @property
    def output_text(self) -> Optional[str]:
        """Shapes of the first call's outputs, e.g. ``"(8, 10)"`` (formatted when read)."""
        out = self.output
        return str(tuple(out)) if isinstance(out, torch.Size) else out


def describe_output(out: Any, limit: int = 4) -> Optional[str]:
    """Shapes of the tensors a forward returned, shallowly: tensors, tuples, dicts, dataclasses."""
    found: list = []

    def shape(t: torch.Tensor) -> str:
        try:
            return str(tuple(t.shape))
        except RuntimeError:  # nested (jagged) tensors have no single shape
            return "nested"

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            found.append(f"{prefix}{shape(value)}")

    if isinstance(out, torch.Tensor):
        return shape(out)
    if isinstance(out, dict):  # Hugging Face ModelOutput is an OrderedDict
        for k, v in out.items():
            add(f"{k}: ", v)
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        for f in dataclasses.fields(out):
            add(f"{f.name}: ", getattr(out, f.name, None))
    elif isinstance(out, (list, tuple)):
        for v in out:
            add("", v)
    if not found:
        return None if out is None else type(out).__name__
    more = f", +{len(found) - limit}" if len(found) > limit else ""
    return ", ".join(found[:limit]) + more


class ModuleTracker:
    """Names modules, keeps the stack of running forwards and the sequence ranges of each call."""

    def __init__(self) -> None:
        self.models: dict = {}        # label -> root module
        self._records: dict = {}      # (model, name) -> ModuleRecord (read: .records)
        # module calls the fast post hook left to count: (stack frame, end seq, output size)
        self._pending: list = []
        self.input_ids: set = set()   # ids of leaf tensors that were passed to a model's forward
        self._input_refs: list = []   # keeps those tensors alive so ids stay unique
        self.record_ranges = True
        self.record_inputs = True
        self._names: dict = {}        # id(module) -> (module, model, name), strong refs
        self._transient: dict = {}    # same, for modules not registered anywhere (this root call)
        # Per thread: [module, model, name, start_seq, unregistered_counter] of running forwards.
        self._stacks: dict = {}
        self._muted_depth: dict = {}  # thread -> depth inside a parametrization run outside forward
        # Per thread: the Module._call_impl frame of the outermost forward running (see
        # abandoned.py), and what a light forward's state must forget when one was abandoned
        self._root_frames: dict = {}
        self.on_abandoned: Optional[Callable[[], None]] = None
        # Sequence numbers are per thread: ranges are only recorded in the thread that owns the
        # capture (the one running the script or the watch block).
        self._owner = threading.get_ident()
        self._ranges: list = []       # (start, end, model, name)
        self._explicit_labels: dict = {}
        self._stale = False           # a model's module tree changed: rename before next call
        self._overflow = 0            # top-level module calls past MAX_MODELS, not kept
        self.root_calls = 0           # top-level forwards so far (counts "per forward")
        self.unwound = 0              # times calls were taken off the stack unfinished
        self.paused = False           # while our graph walk runs: forwards it triggers
        self.replayed = 0             # are counted here, and recorded nowhere else
        self.compiled: dict = {}      # model label -> compiled module names ("" = all of it)
        self.failure: Optional[dict] = None  # the module a device error escaped first
        self.failure_exc: Optional[BaseException] = None  # that error (until the next forward)
        self._failure_exc_id: Optional[int] = None
        self._norm_types: dict = {}   # type -> is a batch norm
        self._plain_types: set = set()  # module types seen that are no batch norm
        self._handles: Optional[HandleGroup] = None
        self._forward_handles: list = []
        # a trace sees module calls through its own Module._call_impl (modulecall.py); a
        # watch, which takes its hooks out and puts them back between steps, through two
        # global forward hooks
        self.patch_calls = False
        self.light_entry: Optional[tuple] = None  # (model, name) of a light forward running
        # model -> list(model.named_modules()): the capture's listing, shared by its passes
        self.listing: Callable[[nn.Module], list] = lambda m: list(m.named_modules())
        self.root_modules: dict = {}  # id -> weak ref of every module called at top level
        self._wrapped: set = set()    # ids of modules whose compiled call we wrapped
        self.on_root_call: Optional[Callable[..., None]] = None
        self.direct = DirectCalls(self, _peek_sequence_nr)  # model.forward(x) called directly

    # -- set-up --------------------------------------------------------------------------------
    def add_model(self, model: nn.Module, label: Optional[str] = None) -> str:
        """Name ``model`` and its submodules before any forward runs (API use); without a
        label, the caller's variable name for it (``model``, ``net``) or its class name."""
        if label is not None:
            self._explicit_labels[id(model)] = label
            self._explicit_labels[id(unwrap(model))] = label
        return self._register_root(model)[1]

    def install(self, handles: HandleGroup) -> None:
        self._handles = handles
        self.forward_hooks(True)
        handles.on_remove(lambda: self.forward_hooks(False))

    def forward_hooks(self, on: bool) -> None:
        """Put the two hooks in (they see every module call; a trace's through modulecall, a
        watch's as global forward hooks) or take them out (a watch session's light steps, see
        ``lightmode``). Idempotent."""
        if on and not self._forward_handles:
            if self.patch_calls:  # (modulecall's _call_impl tells is_compiling() first)
                self._forward_handles = [modulecall.install(*self._fast_hooks(False))]
                return
            reg = nn.modules.module
            pre, post = self._fast_hooks(True)
            self._forward_handles = [
                reg.register_module_forward_pre_hook(pre),
                reg.register_module_forward_hook(post, always_call=True)]
        elif not on:
            for handle in self._forward_handles:
                handle.remove()
            self._forward_handles = []

    def clear_references(self) -> None:
        """Drop every strong reference to user objects (called when the session ends)."""
        self.direct.flush()
        self._names.clear()
        self._transient.clear()
        # The error (and its traceback's frames) is let go; its id stays to be compared with
        # the error the runner reports, which is still alive then, so the id is not reused.
        self._failure_exc_id = id(self.failure_exc) if self.failure_exc is not None else None
        self.failure_exc = None
        self._stacks.clear()
        self._muted_depth.clear()
        self._root_frames.clear()
        self.root_modules.clear()
        self._input_refs.clear()
        self.models = {k: None for k in self.models}

    @property
    def _stack(self) -> list:
        stack = self._stacks.get(threading.get_ident())
        if stack is None:
            stack = self._stacks[threading.get_ident()] = []
        return stack

    @property
    def records(self) -> dict:
        """``(model, name) -> ModuleRecord``, every call counted (see :meth:`flush_calls`)."""
        if self._pending:
            self.flush_calls()
        return self._records

    def flush_calls(self) -> None:
        """Count the module calls the fast post hook only noted: their records, first output
        sizes and attribution ranges. The hook runs between two torch kernels, where every
        lookup is slowed by cold caches; this loop runs once, at the end of the forward."""
        pending = self._pending[:]  # (the fast hook holds this list: emptied, not replaced)
        self._pending.clear()
        records, ranges = self._records, self._ranges
        keep = self.record_ranges
        for frame, end, size in pending:
            _, model, name, start, _ = frame
            if keep and end > start:
                ranges.append((start, end, model, name))
            key = (model, name)
            rec = records.get(key)
            if rec is None:
                rec = records[key] = ModuleRecord(model, name, type(frame[0]).__name__, True)
            rec.calls += 1
            if rec.output is None:
                rec.output = size

    def clear_ranges(self) -> None:
        self.flush_calls()
        self._ranges.clear()

    def in_forward(self) -> bool:
        return bool(self._stack) or self.light_entry is not None

    def count_call(self, model: str, name: str, module: nn.Module) -> None:
        """A call the hooks did not see (a forward called directly): counted all the same."""
        rec = self.records.get((model, name))
        if rec is None:
            rec = self.records[(model, name)] = ModuleRecord(model, name, type(module).__name__,
                                                              True)
        rec.calls += 1

    def add_range(self, start: int, end: int, model: str, name: str) -> None:
        """Ops numbered ``start`` to ``end`` belong to ``model.name`` (a directly-called
        module's op, seen by the op watch)."""
        if self.record_ranges and end > start and threading.get_ident() == self._owner:
            self._ranges.append((start, end, model, name))

    def running(self, module: nn.Module) -> bool:
        """Is ``module``'s forward on this thread's stack (called through ``__call__``)?"""
        return any(entry[0] is module for entry in self._stack)

    def current_module(self) -> Optional[nn.Module]:
        """The innermost module whose forward is running now, or None."""
        return self._stack[-1][0] if self._stack else None

    def current(self) -> Optional[tuple]:
        """``(model, name)`` of the innermost forward running now (in a light forward: the
        model), or None."""
        return (self._stack[-1][1], self._stack[-1][2]) if self._stack else self.light_entry

    def invalidate_names(self) -> None:
        """A module was assigned onto a model: name its tree again before the next call."""
        self._stale = True

    # -- naming --------------------------------------------------------------------------------
    def _register_root(self, module: nn.Module) -> tuple:
        known = self._names.get(id(module))
        if known is not None and known[0] is module:
            return known
        if len(self.models) >= MAX_MODELS:
            # A module built anew at top level on every step (nn.CrossEntropyLoss()(...) in the
            # loop) would otherwise become a new model, kept alive, each step.
            self._overflow += 1
            return (module, f"<{type(module).__name__}>", "")
        explicit = self._explicit_labels.get(id(module))
        if explicit is None and user_variable_name(module) is None:
            # ``model.encoder(x)`` from the loop: name it inside the model the loop holds
            _, container = _quietly(holder_in_frames, module, sys._getframe(1)) or (None, None)
            if container is not None and id(container[1]) not in self._names:
                self.add_model(container[1], container[0])
                known = self._names.get(id(module))
                if known is not None and known[0] is module:
                    return known
        label = self._unique_label(explicit or _guess_label(module))
        inner = unwrap(module)
        compiled = compiled_parts(module, self.listing)
        if compiled:
            self.compiled[label] = compiled
            self._wrap_compiled_calls(module)
        if inner is not module:
            # DistributedDataParallel / DataParallel: the user's model is .module. Name that
            # one as the model (no "module." prefixes); the wrapper is a box around it.
            known = self._names.get(id(inner))
            if known is not None and known[0] is inner:
                label = known[1]
            else:
                self.models[label] = inner
                self._name_tree(label, inner)
            self._names[id(module)] = (module, label, f"<{type(module).__name__}>", "")
            return self._names[id(module)]
        self.models[label] = module
        self._name_tree(label, module)
        return self._names[id(module)]

    def _wrap_compiled_calls(self, root: nn.Module) -> None:
        """``module.compile()`` compiles the whole ``_call_impl``, global hooks included, so
        our hooks never see that module's calls. Its ``_compiled_call_impl`` runs eagerly:
        wrap it (an instance attribute, put back when the session ends) so the call is seen
        from outside, as a call of a compiled region."""
        if self._handles is None:
            return
        for module in root.modules():
            original = module.__dict__.get("_compiled_call_impl")
            if original is None or id(module) in self._wrapped:
                continue
            self._wrapped.add(id(module))
            module._compiled_call_impl = self._compiled_call(module, original)

            def undo(module: nn.Module = module, original: Any = original) -> None:
                wrapper = module.__dict__.get("_compiled_call_impl")
                if getattr(wrapper, "__gradscope_wraps__", None) is original:
                    module._compiled_call_impl = original
            self._handles.on_remove(undo)

    def _compiled_call(self, module: nn.Module, original: Callable) -> Callable:
        tracker = self

        def call(*args: Any, **kwargs: Any) -> Any:
            tracker._pre_hook(module, args)
            try:
                out = original(*args, **kwargs)
            except BaseException:
                tracker._post_hook(module, args, None)
                raise
            tracker._post_hook(module, args, out)
            return out
        call.__gradscope_wraps__ = original  # type: ignore[attr-defined]
        return call

    def _name_tree(self, label: str, module: nn.Module) -> None:
        for name, sub in self.listing(module):
            known = self._names.get(id(sub))
            if known is None or known[0] is not sub:
                # (module, model label, name, parent's name)
                self._names[id(sub)] = (sub, label, name, name.rpartition(".")[0])

    def _rename_stale(self) -> None:
        self._stale = False
        for label, model in self.models.items():
            if model is not None:
                self._name_tree(label, model)

    def _unique_label(self, label: str) -> str:
        if label not in self.models:
            return label
        k = 2
        while f"{label}#{k}" in self.models:
            k += 1
        return f"{label}#{k}"

    def _name_unregistered(self, module: nn.Module, parent: list) -> tuple:
        # A module its caller does not own: built inside forward, or held in a plain list/dict.
        prefix = f"{parent[2]}." if parent[2] else ""
        held = _held_in_container(parent[0], module)
        if held is not None:  # reached through a plain list/dict attribute: use that path
            name = prefix + held
        else:
            parent[4] += 1
            name = f"{prefix}<{type(module).__name__}#{parent[4] - 1}>"
        for sub_name, sub in module.named_modules():
            if id(sub) not in self._names and id(sub) not in self._transient:
                full = f"{name}.{sub_name}" if sub_name else name
                self._transient[id(sub)] = (sub, parent[1], full)
                key = (parent[1], full)
                rec = self.records.get(key)
                if rec is None:
                    rec = self.records[key] = ModuleRecord(
                        parent[1], full, type(sub).__name__, False, location=code_location(),
                        has_parameters=bool(sub._parameters))
                elif rec.last is not None and rec.last() is not sub:
                    rec.objects += 1  # a new object under the same name: rebuilt every call
                rec.last = weakref.ref(sub)
        return self._transient[id(module)]

    def lookup(self, module: nn.Module) -> Optional[tuple]:
        """``(model, name)`` for a module seen so far, else None."""
        for table in (self._names, self._transient):
            hit = table.get(id(module))
            if hit is not None and hit[0] is module:
                return hit[1], hit[2]
        return None

    # -- hooks ---------------------------------------------------------------------------------
    def _compiler_internal(self, module: nn.Module) -> bool:
        # torch.compile's own fx GraphModules run through Module.__call__ at run time: not the
        # user's modules (the same test in both hooks keeps the stack balanced). Neither are
        # DataParallel's per-GPU replicas, rebuilt on every forward and run one per thread:
        # registering them as models kept every replica (and its weights) alive and ran the
        # checks on them. Their work is the user's model's, which the wrapper's call records.
        # (Parametrizations run outside any forward are muted instead: see _muted.)
        # (__dict__, not getattr: a missing attribute goes through Module.__getattr__, a
        # microsecond and a half twice per module call)
        return (isinstance(module, _GraphModule) and id(module) not in self._names) \
            or module.__dict__.get("_is_replica", False)

    def _fast_hooks(self, check_compiling: bool) -> tuple:
        """The two hooks (global hooks, or called by modulecall's ``_call_impl``): the common
        call (a named submodule of a running forward, not a batch norm, nothing special going
        on) handled in a few lookups, the rest by :meth:`_pre_hook` / :meth:`_post_hook`.

        Every module call pays these twice: in a 1000-layer MLP of 32-wide layers a module's
        own work is ~10 us, and the full hooks cost about as much (a wrapper frame, five
        method calls, torch-function handling switched off). The fast path touches no tensor
        attribute, so it needs no torch-function guard, and defers to the full hook for
        anything it does not decide itself (the first call of a module, which describes its
        output; the top of a forward; muting, pausing, direct calls).

        Made while the watch benchmark counts our own time (``selftime``), the fast path is
        counted too, as a whole; counting switched on after they were made sends every call
        to the full hooks, which count themselves.
        """
        slow_pre, slow_post = self._pre_hook, self._post_hook
        if FULL_HOOKS_ONLY:
            return slow_pre, slow_post
        timed = selftime.enabled
        timing = _NOT_COUNTING if timed else selftime  # (the fast paths' test of counting)
        stacks, names, records = self._stacks, self._names, self._records
        pending = self._pending
        muted, direct, plain = self._muted_depth, self.direct, self._plain_types
        get_ident, peek = threading.get_ident, _peek_sequence_nr
        # (folded to True while torch.compile traces; True while AOTAutograd and export run)
        # (called by modulecall's _call_impl, which has told it already: bool() is False,
        # one C call)
        compiling = torch.compiler.is_compiling if check_compiling else bool
        modes = getattr(torch._C, "_len_torch_function_stack", lambda: 1)
        tensor = torch.Tensor
        inputs = self.input_ids

        def pre(module: nn.Module, args: Any) -> None:
            if compiling():  # first: a constant to the compiler, no Python of ours traced
                return None
            stack = stacks.get(get_ident())
            if stack and not self.paused and not muted and peek is not None \
                    and not timing.enabled:
                entry = names.get(id(module))
                # (DataParallel's replicas, new objects at each forward, are never named)
                # (entry[2]: a model's own call, "", or a wrapper's, "<DDP>", goes to the
                # full hook, which tells a forward left by a Ctrl-C from one running)
                if entry is not None and entry[0] is module and type(module) in plain \
                        and entry[2] and entry[2][0] != "<":
                    top = stack[-1]
                    # entry[3]: the parent's name (a grandchild called while only its
                    # grandparent runs goes to the full hook: a direct call, or a container)
                    if not direct.nested or entry[1] != top[1] or entry[3] == top[2]:
                        stack.append([module, entry[1], entry[2], peek(), 0])
                        return None
            return slow_pre(module, args)

        def post(module: nn.Module, args: Any, output: Any) -> None:
            if compiling():
                return None
            ident = get_ident()
            stack = stacks.get(ident)
            if stack and len(stack) > 1 and output is not None and not self.paused \
                    and not muted and not timing.enabled:
                frame = stack[-1]
                if frame[0] is module and frame[2][:1] != "<":  # (a wrapper: the full hook)
                    if type(output) is tensor and ident == self._owner and not modes():
                        # the usual: a plain tensor out, on the thread that records ranges;
                        # counted later (flush_calls), only what cannot wait is read now
                        del stack[-1]
                        if self.record_inputs and output.is_leaf \
                                and id(output) not in inputs:
                            inputs.add(id(output))
                            self._input_refs.append(output)
                        try:
                            size = output.shape
                        except RuntimeError:  # a nested tensor has no single shape
                            size = "nested"
                        pending.append((frame, peek(), size))
                        return None
                    if pending:  # counted in call order: ranges of equal span, first outputs
                        self.flush_calls()
                    del stack[-1]
                    if self.record_ranges and get_ident() == self._owner:
                        end = peek()
                        if end > frame[3]:
                            self._ranges.append((frame[3], end, frame[1], frame[2]))
                    key = (frame[1], frame[2])
                    rec = records.get(key)
                    if rec is None:
                        rec = records[key] = ModuleRecord(frame[1], frame[2],
                                                          type(module).__name__, True)
                    rec.calls += 1
                    if not self.record_inputs and rec.output is not None:
                        return None
                    with no_torch_function():
                        self._note_leaf_output(output)
                        if rec.output is None:
                            self._describe(rec, output)
                    return None
            return slow_post(module, args, output)

        if timed:
            fast_pre, fast_post, count = pre, post, selftime.call

            def pre(module: nn.Module, args: Any) -> None:  # noqa: F811 - the counted form
                return count(fast_pre, (module, args), {})

            def post(module: nn.Module, args: Any, output: Any) -> None:  # noqa: F811
                return count(fast_post, (module, args, output), {})
        return pre, post

    def unmute(self) -> None:
        """Backward calls and optimizer steps never run inside a parametrization: a muting
        left over by an exception that skipped the post hooks (KeyboardInterrupt, SystemExit
        are not Exceptions) ends here. Nor inside a forward called directly: its range ends."""
        self._muted_depth.pop(threading.get_ident(), None)
        self.direct.flush()
        if self._root_frames:
            self.drop_abandoned()

    def drop_abandoned(self) -> bool:
        """Forget the forward this thread was running if it has been unwound without its post
        hooks (a caught Ctrl-C, see abandoned.py): its stack, the light forward's state. True
        when there was one. (Called with no forward running, or from a model's own call.)"""
        ident = threading.get_ident()
        frame = self._root_frames.get(ident)
        if frame is None or not unwound(frame):
            return False
        if self._pending:
            self.flush_calls()
        stack = self._stacks.get(ident)
        if stack:
            stack.clear()
        self._muted_depth.pop(ident, None)
        self._transient.clear()
        self.light_entry = None
        if self.on_abandoned is not None:
            self.on_abandoned()
        self._root_frames.pop(ident, None)  # (last: another Ctrl-C in here finds it again)
        return True

    def note_root_frame(self, frame: Optional[Any]) -> None:
        """The outermost forward of this thread starts (its hook's caller frame)."""
        found = call_frame(frame)
        if found is not None:
            self._root_frames[threading.get_ident()] = found

    def root_frame(self) -> Optional[Any]:
        """The kept frame of this thread's outermost forward running, if any."""
        return self._root_frames.get(threading.get_ident())

    def end_root_frame(self) -> None:
        self._root_frames.pop(threading.get_ident(), None)

    def muted(self) -> bool:
        """Inside a parametrization run outside any forward (see _muted), or our own walk."""
        return self.paused or bool(self._muted_depth.get(threading.get_ident(), 0))

    def _muted(self, module: nn.Module, entering: bool) -> bool:
        """Inside a parametrization computing ``module.weight`` outside any forward (when
        spectral_norm registers it, or other code reads the weight): part of its model, named
        through it once that model runs, never a model of its own; nor are the modules it
        calls. A per-thread depth, kept balanced by the always-called post hook."""
        key = threading.get_ident()
        depth = self._muted_depth.get(key, 0)
        if depth:
            self._muted_depth[key] = depth + (1 if entering else -1)
            return True
        if entering and isinstance(module, _ParametrizationList) and not self._stack:
            self._muted_depth[key] = 1
            return True
        return False

    @hook_of_ours
    def _pre_hook(self, module: nn.Module, args: Any) -> None:
        if self.paused:  # a forward re-run by our own graph walk (checkpointing): not the user's
            self.replayed += 1
            return
        if self._muted(module, True) or self._compiler_internal(module):
            return  # (the same order as in the post hook: the muting depth stays balanced)
        stack = self._stack
        entry = self._names.get(id(module))
        if entry is None or entry[0] is not module:
            entry = self._transient.get(id(module))
            if entry is not None and entry[0] is not module:
                entry = None
        if stack and entry is not None and _model_call(entry):
            self.drop_abandoned()  # a model called again after a Ctrl-C inside its forward
        if not stack and entry is None and _quietly(under_construction, sys._getframe(1)):
            return  # called while a model is built (its __init__ sizing a layer): not a forward
        if not stack and (entry is None or not _model_call(entry)):
            # No forward is running, and this is not a whole model: is a module's forward (or
            # other method) running without __call__ (model.forward(x))? Then it is a part.
            entry = _quietly(self.direct.enter, module, sys._getframe(1)) or entry
        elif stack and self.direct.nested and entry is not None and entry[1] == stack[-1][1] \
                and entry[2].rpartition(".")[0] != stack[-1][2]:
            # a grandchild called while only its grandparent's forward runs: either the
            # parent's forward was called directly (self.enc.forward(x)), or the running
            # module indexes into a container (self.layers[0](x)); the frame tells
            _quietly(self.direct.nested_call, module, stack[-1][0], sys._getframe(1))
        if entry is None:
            entry = (self._name_unregistered(module, stack[-1]) if stack
                     else self._register_root(module))
        self.note_batch(module, entry, args)
        if not stack:
            self.note_root_frame(sys._getframe(1))
            self.root_call(module, entry, args)
        start = _peek_sequence_nr() if _peek_sequence_nr is not None else 0
        stack.append([module, entry[1], entry[2], start, 0])

    def root_call(self, module: nn.Module, entry: tuple, args: Any) -> None:
        """A forward at top level (no other running): count it and tell the capture."""
        self.root_calls += 1
        self.root_modules[id(module)] = weakref.ref(module)
        self.failure = self.failure_exc = None  # an error caught by the program is past
        self._note_inputs(args)
        if self._stale:
            self._rename_stale()
        # A model, or a wrapper around one (DDP, DataParallel, torch.compile: the model
        # itself then runs nested, or compiled without hooks): one forward of the model.
        model = self.models.get(entry[1])
        if self.on_root_call is not None and model is not None \
                and _model_call(entry):
            self.on_root_call(model, entry[1], args)

    def entry_of(self, module: nn.Module) -> Optional[tuple]:
        """``(module, model, name)`` of a module named so far, else None."""
        entry = self._names.get(id(module))
        return entry if entry is not None and entry[0] is module else None

    @hook_of_ours
    def _post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._pending:  # the calls the fast hook queued come first (see flush_calls)
            self.flush_calls()
        if self._muted(module, False):
            return
        stack = self._stack
        if not stack or self.paused or self._compiler_internal(module):
            return
        if output is None:  # normal for a few modules; after a raise, torch passes None too
            self._note_failure(module, args)
        # Normally the top; after a forward raised inside a nested call, unwind to this module.
        k = len(stack) - 1
        while k > 0 and stack[k][0] is not module:
            k -= 1
        if k < len(stack) - 1:
            self.unwound += 1  # calls inside it ended without their post hooks (a Ctrl-C)
        frame = stack[k]
        del stack[k:]
        _, model, name, start, _ = frame
        if self.record_ranges and _peek_sequence_nr is not None \
                and threading.get_ident() == self._owner:
            end = _peek_sequence_nr()
            if end > start:
                # ops a wrapper runs (a compiled region, DDP's bookkeeping) belong to the model
                owner = "" if name.startswith("<") and type(module).__name__ in _WRAPPERS \
                    else name
                self._ranges.append((start, end, model, owner))
        rec = self.records.get((model, name))
        if rec is None:
            rec = self.records[(model, name)] = ModuleRecord(model, name, type(module).__name__,
                                                              True)
        rec.calls += 1
        self._note_leaf_output(output)
        if rec.output is None:
            self._describe(rec, output)
        if not stack:
            self._transient.clear()
            self.direct.child_done()
            self.end_root_frame()

    @staticmethod
    def _describe(rec: ModuleRecord, output: Any) -> None:
        if type(output) is torch.Tensor:  # the usual: its size now, formatted when read
            try:
                rec.output = output.shape
                return
            except RuntimeError:  # nested (jagged) tensors have no single shape
                pass
        try:
            rec.output = describe_output(output)
        except Exception:  # noqa: BLE001 - an odd output type must not break the forward
            rec.output = type(output).__name__

    def _is_batchnorm(self, cls: type) -> bool:
        known = self._norm_types.get(cls)
        if known is None:
            known = self._norm_types[cls] = issubclass(cls, nn.modules.batchnorm._BatchNorm)
            if not known:
                self._plain_types.add(cls)  # its calls may take the fast path (_fast_hooks)
        return known

    def note_batch(self, module: nn.Module, entry: tuple, args: Any) -> None:
        """A batch norm's call that uses batch statistics (training mode, or a norm that
        tracks no running statistics): its batch size and values per channel are counted."""
        if not self._is_batchnorm(type(module)) or not (
                module.training or (module.running_mean is None and module.running_var is None)):
            return
        x = args[0] if isinstance(args, tuple) and args else args
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[1] == 0:
            return
        key = (entry[1], entry[2])
        rec = self.records.get(key)
        if rec is None:
            rec = self.records[key] = ModuleRecord(entry[1], entry[2], type(module).__name__, True)
        stats = rec.batch_stats if rec.batch_stats is not None else {}
        rec.batch_stats = stats
        shape = (int(x.shape[0]), int(x.numel() // x.shape[1]))
        if shape in stats or len(stats) < 20:
            stats[shape] = stats.get(shape, 0) + 1

    def _note_failure(self, module: nn.Module, args: Any) -> None:
        exc = sys.exc_info()[1]
        if exc is None or exc is self.failure_exc or classify(exc) != "device-mismatch":
            return
        self.failure_exc = exc  # the innermost module sees it first; outer ones are skipped
        names = self.lookup(module)
        try:
            devices = module_devices(module, args)
        except Exception:  # noqa: BLE001 - an odd module: the error is explained without it
            devices = []
        self.failure = {"model": names[0] if names else None,
                        "module": names[1] if names else None,
                        "type": type(module).__name__, "devices": devices}

    def failure_for(self, errors: list) -> Optional[dict]:
        """The module record of the device error if it is one of ``errors`` (the reported
        error and what it was raised from), else None: an error the program caught earlier
        must not explain a later one."""
        if self.failure is None:
            return None
        wanted = id(self.failure_exc) if self.failure_exc is not None else self._failure_exc_id
        return self.failure if any(id(e) == wanted for e in errors) else None

    def stop_noting_inputs(self) -> None:
        """The drawn graph is captured: input leaves are no longer needed (keeping them alive
        for the whole session would hold every batch that required grad)."""
        self.record_inputs = False
        self._input_refs.clear()

    def _note_inputs(self, args: Any) -> None:
        if not self.record_inputs:
            return
        for a in args if isinstance(args, tuple) else (args,):
            # Leaf tensors only; requires_grad may be switched on later, inside forward
            # (x.requires_grad_() for input gradients).
            if isinstance(a, torch.Tensor) and a.grad_fn is None and id(a) not in self.input_ids:
                self.input_ids.add(id(a))
                self._input_refs.append(a)

    def _note_leaf_output(self, output: Any) -> None:
        # A module output without grad_fn (frozen weights, no grad in) that a hook then makes
        # require grad, as adapters' enable_input_require_grads does: an input to what follows.
        if self.record_inputs and isinstance(output, torch.Tensor) and output.grad_fn is None \
                and id(output) not in self.input_ids:
            self.input_ids.add(id(output))
            self._input_refs.append(output)

    # -- attribution ---------------------------------------------------------------------------
    def attribution(self) -> Callable[[int], Optional[tuple]]:
        """A function from sequence number to the innermost ``(model, module)`` that made it."""
        self.flush_calls()
        bounds, owners = flatten_ranges(self._ranges)

        def owner_of(seq: int) -> Optional[tuple]:
            i = bisect.bisect_right(bounds, seq) - 1
            return owners[i] if i >= 0 else None

        owner_of.bounds, owner_of.owners = bounds, owners  # type: ignore[attr-defined]
        return owner_of  # (the graph walk reads the two lists inline)


def flatten_ranges(ranges: list) -> tuple:
    """Nested ``[start, end)`` ranges to sorted breakpoints and the innermost owner after each.

    Ranges from properly nested forward calls never partly overlap, so one sweep with a stack
    gives, for every breakpoint, the owner of the sequence numbers from there to the next one.
    """
    bounds: list = []
    owners: list = []
    stack: list = []
    # Equal ranges (a module whose whole forward is one child's call): ranges are appended when
    # calls end, inner first, so the later one is the outer and must come first. (Sorted as
    # tuples, in C: no key function per range.)
    order = sorted([(r[0], -r[1], -i) for i, r in enumerate(ranges)])
    order.append((math.inf, 0, None))  # past the end: every range still open closes
    for start, _, neg_i in order:
        while stack and stack[-1][0] <= start:  # ranges that ended: their parent owns again
            pos = stack.pop()[0]
            owner = stack[-1][1] if stack else None
            if bounds and bounds[-1] == pos:
                owners[-1] = owner
            else:
                bounds.append(pos)
                owners.append(owner)
        if neg_i is None:
            break
        _, end, model, name = ranges[-neg_i]
        owner = (model, name)
        if bounds and bounds[-1] == start:
            owners[-1] = owner
        else:
            bounds.append(start)
            owners.append(owner)
        stack.append((end, owner))
    return bounds, owners


def _model_call(entry: tuple) -> bool:
    """Is this named module a whole model (``""``) or a wrapper around one (``"<DDP>"``)?
    (The fast pre-hook makes the same test inline.)"""
    return entry[2] == "" or entry[2].startswith("<")


def _quietly(fn: Callable, *args: Any) -> Any:
    """Naming help that must never raise inside the user's module call (a module half built,
    an odd frame): without it, the call is named the plain way."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - naming is a nicety; the user's call is not
        return None


def _guess_label(module: nn.Module) -> str:
    """The user's variable name for a model (``model``, ``net``, ``self.encoder``), else its class."""
    return user_variable_name(module) or type(module).__name__


# Wrapper class -> the attribute holding the user's model.
_WRAPPERS = {"DistributedDataParallel": "module", "DataParallel": "module",
             "OptimizedModule": "_orig_mod"}  # torch.compile(model)
MAX_MODELS = 32


def unwrap(module: nn.Module) -> nn.Module:
    """The user's model inside a DistributedDataParallel/DataParallel/torch.compile wrapper,
    else itself."""
    while True:
        attr = _WRAPPERS.get(type(module).__name__)
        inner = getattr(module, attr, None) if attr else None
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def compiled_parts(module: nn.Module,
                   listing: Callable[[nn.Module], list] = lambda m: list(m.named_modules())
                   ) -> list:
    """Names of the compiled parts of a model: ``""`` for ``torch.compile(model)`` (or
    ``model.compile()``), else submodules compiled on their own (``blocks.0``)."""
    outer = module
    while True:
        name = type(outer).__name__
        if name == "OptimizedModule" or getattr(outer, "_compiled_call_impl", None) is not None:
            return [""]
        attr = _WRAPPERS.get(name)
        inner = getattr(outer, attr, None) if attr else None
        if not isinstance(inner, nn.Module):
            break
        outer = inner
    parts = []
    for name, sub in listing(outer):
        if name and (type(sub).__name__ == "OptimizedModule"
                     or getattr(sub, "_compiled_call_impl", None) is not None):
            parts.append(name)
    return parts[:50]


def _held_in_container(owner: nn.Module, module: nn.Module) -> Optional[str]:
    """``heads[0]`` when ``module`` sits in a plain list/tuple/dict attribute of ``owner``; the
    same paths the attribute scan gives the tensors inside (``heads[0].weight``)."""
    for attr, value in vars(owner).items():
        if attr in ("_modules", "_parameters", "_buffers"):
            continue  # registered children: not a plain container
        if isinstance(value, (list, tuple, dict)):
            for key, item in container_items(value):
                if item is module:
                    return f"{attr}{key}"
    return None


def init_typo(cls: type) -> Optional[str]:
    """The misspelled ``__init__`` of a module class (seed 003's ``__int__``), if any: a class
    that defines no ``__init__`` of its own but a method whose name is one typo away."""
    own = vars(cls)
    if "__init__" in own:
        return None
    candidates = [n for n, v in own.items() if callable(v) and n not in ("__iter__", "__index__")]
    close = difflib.get_close_matches("__init__", candidates, n=1, cutoff=0.8)
    return close[0] if close else None
