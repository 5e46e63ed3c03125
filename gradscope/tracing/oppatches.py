"""The torch functions the op watch looks at, wrapped for as long as a trace capture is open.

A ``TorchFunctionMode`` would see every torch call of the program, but it costs torch's mode
dispatch on every one of them, about 10 us a call here (a 1000-layer MLP's forward went from
29 ms to 49 ms with a mode that does nothing), and almost none is of interest. Instead, only the
functions the op watch has something to do for are wrapped (copies between devices, host
reads, in-place ops, losses, subtractions, dropout, softmax, the layer functions and the ways of
leaving autograd, see ``opwatch``), and, only to hide the calls they make, the other torch
functions written in Python that a mode would see (``Tensor.__format__``, ``torch.split``,
``F.max_pool2d``, ...): about 620 in all. Every other call runs as it would without gradscope.
A wrapper costs a Python call (~0.5 us) and passes straight through:

- while torch.compile traces, or AOTAutograd or export runs (``is_compiling()`` first: the
  compiled graph gets none of our code), and inside a backward;
- on a thread with no open capture, or while torch-function handling is off (our own
  bookkeeping runs so, as do C++ extensions that disable it);
- inside another wrapped call (``F.softmax`` calls ``Tensor.softmax``, ``F.relu(inplace=True)``
  calls ``torch.relu_``, printing a tensor calls ``.detach()``): like a mode, which is off while
  it handles a call, the op watch sees the outer call only.

Two properties of ``torch.Tensor`` are wrapped too: reading ``.data`` (history left behind) and
setting ``.requires_grad`` (switched on), when the program's own code does it. Reading
``.requires_grad`` stays torch's own C getter. Names that alias a wrapped function in the
program's modules (``from torch.nn.functional import dropout`` before the trace) are wrapped
too.

Everything is put back when the last capture closes, also on errors and Ctrl-C
(``SharedPatches``); an attribute someone else replaced after us is left as it is, with our
wrapper under it passing through.
"""
from __future__ import annotations

import inspect
import sys
import threading
import types
from typing import Any, Callable, Optional

import torch
from torch.nn import functional as F

from .locations import is_installed_file
from .patches import SharedPatches

_get_ident = threading.get_ident
# (folded to True while torch.compile traces, and True while AOTAutograd and export run)
_compiling = torch.compiler.is_compiling
_tf_enabled = torch._C._is_torch_function_enabled
_no_tf = torch._C.DisableTorchFunction
# -1 unless the autograd engine runs a backward on this thread: nothing a backward does
# (checkpointing's recomputation, hooks) is the program's call (a mode saw none of it either:
# loss.backward() is itself a torch function, which hides what runs inside it)
_graph_task = getattr(torch._C, "_current_graph_task_id", lambda: -1)


class _ThreadWatches:
    """The op watches open on one thread, and how deep in wrapped calls that thread is."""

    __slots__ = ("watches", "stacks", "depth")

    def __init__(self) -> None:
        self.watches: list = []
        # each watch's module tracker's stacks of running modules (thread ident -> stack),
        # read by the layer functions' wrappers without a call
        self.stacks: list = []
        self.depth = 0


_STATE: dict = {}  # thread ident -> _ThreadWatches


def _watching() -> Optional[_ThreadWatches]:
    """This thread's watches when a call here is the program's to look at, else None: not
    while torch.compile traces, not inside another wrapped call (a mode, too, sees the outer
    call only), not with torch-function handling off (our own bookkeeping), not in a backward."""
    if _compiling():
        return None
    state = _STATE.get(_get_ident())
    if state is None or state.depth or not _tf_enabled() or _graph_task() != -1:
        return None
    return state


def _inside(state: _ThreadWatches, original: Callable, args: tuple, kwargs: dict) -> Any:
    """The call, with every wrapped call it makes hidden (it is one torch call, as a mode
    sees it: F.softmax's Tensor.softmax, nn.MultiheadAttention's inner softmax, ...)."""
    state.depth += 1
    try:
        return original(*args, **kwargs)
    finally:
        state.depth -= 1


def _handled(state: _ThreadWatches, name: str, original: Callable, args: tuple, kwargs: dict,
             inplace: bool, frame: Any) -> Any:
    """A call of interest: each watch looks before and after; the call itself runs once."""
    watches = list(state.watches)
    with _no_tf():  # (our reads of the tensors are not the program's torch calls)
        tokens = [w.before(name, args, kwargs, inplace, frame) for w in watches]
    result = _inside(state, original, args, kwargs)
    with _no_tf():
        for w, token in zip(watches, tokens):
            w.after(name, original, args, kwargs, inplace, result, token)
    return result


# Layer functions: run while no forward is, they come from a module's forward called directly
# (``model.head.forward(x)``), which no module hook sees (directcall.py attributes them).
LAYER_FUNCS = frozenset((
    "linear", "bilinear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "embedding", "embedding_bag", "layer_norm", "group_norm", "batch_norm",
    "instance_norm", "rms_norm", "lstm", "gru", "rnn_tanh", "rnn_relu",
    "multi_head_attention_forward", "prelu"))
# Trailing underscore, yet no data is written: not in-place ops.
NOT_INPLACE = frozenset(("requires_grad_", "retain_grad", "share_memory_", "record_stream",
                         "pin_memory"))
# Operators that torch hands to a mode under their function's name (``y - x`` is ``sub``,
# ``y += 1`` is ``add_``): the op watch's records keep those names.
_REPORTED_AS = {"__sub__": "sub", "__gt__": "gt", "__lt__": "lt", "__ge__": "ge", "__le__": "le",
                "__ne__": "ne", "__iadd__": "add_", "__isub__": "sub_", "__imul__": "mul_",
                "__itruediv__": "div_", "__ifloordiv__": "floor_divide_",
                "__imod__": "remainder_", "__ipow__": "pow_"}


def _wrap(name: str, original: Callable, at: Optional[int] = None) -> Callable:
    """A function of interest by its name; ``at``: the position of its ``inplace``
    parameter, if it has one (``F.dropout(x, 0.5, True, True)``)."""
    if name in LAYER_FUNCS:
        return _wrap_layer(name, original)
    reported = _REPORTED_AS.get(name, name)

    def op(*args: Any, **kwargs: Any) -> Any:
        state = _watching()
        if state is None:
            return original(*args, **kwargs)
        inplace = at is not None and kwargs.get(
            "inplace", args[at] if len(args) > at else False) is True
        return _handled(state, reported, original, args, kwargs, inplace, sys._getframe(1))
    return _mark(op, original)


def _wrap_layer(name: str, original: Callable) -> Callable:
    """A layer function (``F.linear``, ``F.conv2d``, ...): of interest only when no module's
    forward that is running called it (a submodule's forward called directly). Called from
    the running module's own forward, the usual, it runs after one comparison; when that
    forward is torch's own (``nn.Linear``'s, ``nn.Conv2d``'s), after one set lookup, without
    reading the caller's frame."""
    leaf = isinstance(original, types.BuiltinFunctionType)  # (C: it calls nothing of ours)
    trusted = _torch_forwards(name)

    def op(*args: Any, **kwargs: Any) -> Any:
        # _watching()'s tests, inline and in another order: the usual call (from the running
        # module's forward, of a C function) is told before the torch-function and backward
        # tests, which only decide between the calls that are looked at
        if _compiling():
            return original(*args, **kwargs)
        ident = _get_ident()
        state = _STATE.get(ident)
        if state is None or state.depth:
            return original(*args, **kwargs)
        frame = None
        for stacks in state.stacks:
            stack = stacks.get(ident)  # (the module running now on this thread)
            code = None
            if stack:
                module = stack[-1][0]
                cls = type(module)
                own = module.__dict__
                # (with forward hooks, which run inside the module's call (modulecall), a hook
                # calling another module's forward of the same class has the same code: no
                # code, the frames decide, by the method's self in the op watch's nested_op)
                if not (own.get("_forward_hooks") or _GLOBAL_FORWARD_HOOKS):
                    if cls in trusted and "forward" not in own \
                            and not own.get("_forward_pre_hooks") and not _GLOBAL_PRE_HOOKS:
                        continue
                    code = _FORWARD_CODES.get(cls) or forward_code(cls)
            if frame is None:
                frame = sys._getframe(1)
            if code is None or frame.f_code is not code:
                if not _tf_enabled() or _graph_task() != -1:
                    return original(*args, **kwargs)
                return _handled(state, name, original, args, kwargs, False, frame)
        if leaf or not _tf_enabled() or _graph_task() != -1:
            return original(*args, **kwargs)
        return _inside(state, original, args, kwargs)
    return _mark(op, original)


# torch's module classes whose forward calls the layer function itself (some through a
# helper, like Conv2d's _conv_forward, which a frame comparison would not recognise)
_TORCH_LAYERS = {
    "linear": ("Linear",), "bilinear": ("Bilinear",), "conv1d": ("Conv1d",),
    "conv2d": ("Conv2d",), "conv3d": ("Conv3d",), "conv_transpose1d": ("ConvTranspose1d",),
    "conv_transpose2d": ("ConvTranspose2d",), "conv_transpose3d": ("ConvTranspose3d",),
    "embedding": ("Embedding",), "embedding_bag": ("EmbeddingBag",),
    "layer_norm": ("LayerNorm",), "group_norm": ("GroupNorm",), "rms_norm": ("RMSNorm",),
    "batch_norm": ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"),
    "instance_norm": ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"),
    "lstm": ("LSTM",), "gru": ("GRU",), "rnn_tanh": ("RNN",), "rnn_relu": ("RNN",),
    "multi_head_attention_forward": ("MultiheadAttention",), "prelu": ("PReLU",)}
_GLOBAL_PRE_HOOKS = torch.nn.modules.module._global_forward_pre_hooks
_GLOBAL_FORWARD_HOOKS = torch.nn.modules.module._global_forward_hooks


def _torch_forwards(name: str) -> frozenset:
    """torch's own module classes (these classes exactly, not subclasses, which may override a
    helper or a property that the forward calls) whose forward calls layer function ``name``
    where it should. While such a module runs, with torch's forward (none set on the instance)
    and no forward pre-hook (the tracker's own runs from its ``_call_impl``, see modulecall),
    nothing else can call the function; the frame decides for every other module."""
    classes = set()
    for cls_name in _TORCH_LAYERS.get(name, ()):
        cls = getattr(torch.nn, cls_name, None)
        forward = getattr(cls, "forward", None)
        if getattr(forward, "__module__", "").startswith("torch.nn."):  # (not replaced)
            classes.add(cls)
    return frozenset(classes)


def _wrap_inplace_arg(name: str, original: Callable, at: int) -> Callable:
    """A function with an ``inplace`` parameter (``F.relu(x, inplace=True)``): of interest
    only when it is true."""
    def op(*args: Any, **kwargs: Any) -> Any:
        # (not in place, these call only torch's C functions: nothing of ours to hide)
        if kwargs.get("inplace", args[at] if len(args) > at else False) is not True:
            return original(*args, **kwargs)
        state = _watching()
        if state is None:
            return original(*args, **kwargs)
        return _handled(state, name, original, args, kwargs, True, sys._getframe(1))
    return _mark(op, original)


def _wrap_hiding(name: str, original: Callable) -> Callable:
    """A torch function written in Python that the op watch has nothing to do for
    (``Tensor.__format__``, ``torch.split``, ``F.max_pool2d``, ...): it only hides the calls
    it makes (``.detach()`` and ``.item()`` inside a print of a tensor), as a mode would."""
    def op(*args: Any, **kwargs: Any) -> Any:
        state = _watching()
        if state is None:
            return original(*args, **kwargs)
        return _inside(state, original, args, kwargs)
    return _mark(op, original)


def _mark(op: Callable, original: Callable) -> Callable:
    for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
        try:
            setattr(op, attr, getattr(original, attr))
        except (AttributeError, TypeError):
            pass
    op.__gradscope_wraps__ = original  # type: ignore[attr-defined]
    return op


def _noted(state: _ThreadWatches, name: str, func: Any, args: tuple) -> None:
    """A property get/set of interest (``.data``, ``.requires_grad = ...``): the watches note
    it as the op watch notes ``__get__``/``__set__`` calls."""
    with _no_tf():
        for w in list(state.watches):
            w.after(name, func, args, {}, False, None, None)


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)  # (not the compiler's fake tensors)


def _by_the_program(frame: Any) -> bool:
    """Is ``frame`` the program's own code (not torch's, or another library's)? A ``.data``
    read or a ``requires_grad`` switch inside torch (an optimizer, torch.compile's runtime,
    export) is not one the program wrote."""
    return not is_installed_file(frame.f_code.co_filename) \
        and not frame.f_code.co_filename.startswith("<eval_with_key>")  # (fx-generated code)


def _data_property(original: Any) -> property:
    getter = original.__get__

    def get(self: torch.Tensor) -> Any:
        value = getter(self, type(self))
        if type(self) in _PLAIN_TENSORS and _by_the_program(sys._getframe(1)):
            state = _watching()
            if state is not None:
                _noted(state, "__get__", getter, (self,))
        return value

    def set_(self: torch.Tensor, value: Any) -> None:
        original.__set__(self, value)
    return property(get, set_, doc=original.__doc__)


def _requires_grad_property(original: Any) -> property:
    setter = original.__set__

    def set_(self: torch.Tensor, value: Any) -> None:
        setter(self, value)  # (first: one that raises, on an integer tensor, switched nothing)
        if type(self) in _PLAIN_TENSORS and _by_the_program(sys._getframe(1)):
            state = _watching()
            if state is not None:
                _noted(state, "__set__", setter, (self, value))
    # reading stays torch's C getter (called by property without a Python frame)
    return property(original.__get__, set_, doc=original.__doc__)


# -- what is wrapped ---------------------------------------------------------------------------
_VF_FUNCTIONS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def _inplace_names(owner: Any, private: bool) -> list:
    names = []
    for name in dir(owner):
        if not name.endswith("_") or name.startswith("__") or name in NOT_INPLACE \
                or (not private and name.startswith("_")) or "__" in name.strip("_"):
            continue
        if callable(getattr(owner, name, None)) and not isinstance(getattr(owner, name), type):
            names.append(name)
    return names


def _inplace_parameter(fn: Any) -> Optional[int]:
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None
    return params.index("inplace") if "inplace" in params else None


def _names_of_interest() -> list:
    """Every name the op watch has something to do for (``opwatch``'s sets), as a torch
    function or method, plus the operators torch reports under one of them."""
    from . import opwatch as ow

    names = set().union(ow._LAYER_FUNCS, ow._COPY_METHODS, ow._HOST_READS, ow._FACTORIES,
                        ow._LOSSES, ow._SUBTRACTIONS, ow._SHAPE_LOSSES, ow._HISTORY_NAMES,
                        ow._ITERATIONS,
                        ow._INPLACE_DUNDERS, _REPORTED_AS)
    # (iterating a tensor reaches the op watch as its unbind call, as a mode sees it)
    return sorted(names - {"__get__", "__set__", "__iter__"})


def targets() -> list:
    """``(owner, attribute, make wrapper)`` for everything the op watch wraps."""
    out: list = []
    interest = _names_of_interest()
    vf = getattr(torch, "_VF", None)
    for owner, private in ((torch.Tensor, True), (torch, True), (F, False)):
        names = dict.fromkeys(interest + _inplace_names(owner, private))
        for name in names:
            if name.startswith("__") and owner is not torch.Tensor:
                continue  # operators are the tensor's (a module's __eq__ is the module's)
            fn = getattr(owner, name, None)
            if fn is None or not callable(fn) or isinstance(fn, type):
                continue
            at = _inplace_parameter(fn) if owner is F else None
            out.append((owner, name, lambda n, o, at=at: _wrap(n, o, at)))
    chosen = {name for owner, name, _ in out if owner is F}
    for name in dir(F):
        fn = getattr(F, name)
        if name.startswith("_") or name in chosen or not callable(fn) or isinstance(fn, type):
            continue
        at = _inplace_parameter(fn)
        if at is not None:  # of interest only with inplace=True (relu, elu, hardtanh, ...)
            out.append((F, name, lambda n, o, at=at: _wrap_inplace_arg(n, o, at)))
    for name in _VF_FUNCTIONS:
        if vf is not None and hasattr(vf, name):
            out.append((vf, name, _wrap))
    return out + _hiding_targets({(id(owner), name) for owner, name, _ in out})


def _hiding_targets(taken: set) -> list:
    """The torch functions written in Python that dispatch to torch-function modes, and
    that no other wrapper covers: wrapped only to hide the calls they make. nn.init's own
    dispatching functions (``kaiming_uniform_``, ...) are in-place ops by their name."""
    from torch.overrides import get_overridable_functions

    out: list = []
    python = {id(f) for funcs in get_overridable_functions().values() for f in funcs
              if getattr(f, "__code__", None) is not None}
    spaces = [torch, torch.Tensor, F] + [getattr(torch, n) for n in ("functional", "linalg",
                                                                      "fft", "special")
                                          if hasattr(torch, n)]
    for owner in spaces:
        for name, value in list(vars(owner).items()):
            if id(value) in python and (id(owner), name) not in taken \
                    and name not in ("__torch_function__", "data", "requires_grad"):
                taken.add((id(owner), name))
                out.append((owner, name, _wrap_hiding))
    init = torch.nn.init
    for name in dir(init):
        fn = getattr(init, name)
        if name.endswith("_") and not name.startswith("_") and callable(fn) \
                and "has_torch_function" in _source(fn):
            out.append((init, name, _wrap))
    return out


def _source(fn: Any) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return ""


class _OpPatches(SharedPatches):
    """Installed with the first open op watch, removed with the last (``add``/``remove``
    take the op watch)."""

    def __init__(self) -> None:
        super().__init__()
        self.installed: list = []  # (owner, name, had its own attribute, original, wrapper)
        self._targets: Optional[list] = None
        self._made: dict = {}      # (id(owner), name) -> its wrapper, made once
        self.aliases: list = []    # (module namespace, name, original, wrapper)
        self._scanned: dict = {}   # id(module) -> (module, namespace size, alias names)
        self._modules_seen = -1    # len(sys.modules) at the last scan

    def add(self, watch: Any) -> None:
        super().add(watch)
        with self.lock:
            state = _STATE.setdefault(watch.thread, _ThreadWatches())
            state.watches.append(watch)
            state.stacks.append(watch.tracker._stacks if watch.tracker is not None else {})

    def remove(self, watch: Any) -> None:
        with self.lock:
            state = _STATE.get(watch.thread)
            if state is not None and watch in state.watches:
                del state.stacks[state.watches.index(watch)]
                state.watches.remove(watch)
                if not state.watches:
                    del _STATE[watch.thread]
        super().remove(watch)

    def _open(self) -> list:  # (SharedPatches' is for captures; watches have no state)
        return list(self.captures)

    def _install(self) -> None:
        try:
            self._wrap_all()
            self._wrap_aliases()
        except BaseException:  # (Ctrl-C half way: nothing stays wrapped)
            self._uninstall()
            raise

    def _wrap_all(self) -> None:
        if self._targets is None:  # (dir() of torch and inspect.signature: once a process)
            self._targets = targets()
        made, installed, spaces = self._made, self.installed, {}
        add = installed.append
        for owner, name, make in self._targets:
            space = spaces.get(id(owner))
            if space is None:  # (one namespace view per owner, not one per name)
                space = spaces[id(owner)] = vars(owner)
            original = space.get(name, _ABSENT)
            own = original is not _ABSENT
            if not own:
                original = getattr(owner, name)
            # never a wrapper of a wrapper (only a Python function can be one: a builtin has
            # no attributes of its own); no static or class methods
            if (type(original) is _FUNCTION
                    and getattr(original, "__gradscope_wraps__", None) is not None) \
                    or isinstance(original, (staticmethod, classmethod)):
                continue
            wrapper = made.get((id(owner), name))
            if wrapper is None or wrapper.__gradscope_wraps__ is not original:
                wrapper = made[(id(owner), name)] = make(name, original)  # (torch's changed)
            if type(owner) is _MODULE:
                space[name] = wrapper  # (a module's own dict: what setattr would write)
            else:
                setattr(owner, name, wrapper)
            add((owner, name, own, original, wrapper))
        for name, make in (("data", _data_property), ("requires_grad", _requires_grad_property)):
            original = getattr(torch.Tensor, name)  # the C descriptor (on TensorBase)
            own = name in vars(torch.Tensor)
            wrapper = make(original)
            setattr(torch.Tensor, name, wrapper)
            add((torch.Tensor, name, own, vars(torch.Tensor).get(name) if own else original,
                 wrapper))

    def _wrap_aliases(self) -> None:
        """The same functions under other names: ``from torch.nn.functional import dropout``
        in a module imported before the capture opened (a mode sees those calls too). Every
        module outside torch and gradscope is looked at once, and again when its namespace
        changed size; an import after the capture opened binds the wrapper itself."""
        wrapped = {id(original): (original, wrapper) for _, _, _, original, wrapper
                   in self.installed if callable(original)}
        scanned = self._scanned
        if len(sys.modules) != self._modules_seen:  # (else: no module came since the last time)
            self._modules_seen = len(sys.modules)
            for module in list(sys.modules.values()):
                space = getattr(module, "__dict__", None)
                if not isinstance(space, dict) or not _foreign(module):
                    continue
                known = scanned.get(id(module))
                if known is None or known[0] is not module or known[1] != len(space):
                    names = [k for k, v in list(space.items()) if id(v) in wrapped]
                    scanned[id(module)] = (module, len(space), names)
        for module, _, names in scanned.values():
            space = module.__dict__
            for name in names:
                original, wrapper = wrapped.get(id(space.get(name)), (None, None))
                if original is not None and space.get(name) is original:
                    space[name] = wrapper
                    self.aliases.append((space, name, original, wrapper))

    def _uninstall(self) -> None:
        aliases, self.aliases = self.aliases, []
        for space, name, original, wrapper in aliases:
            if space.get(name) is wrapper:
                space[name] = original
        _FORWARD_CODES.clear()  # (holds module classes: let them go with the last capture)
        installed, self.installed = self.installed, []
        spaces: dict = {}
        for owner, name, own, original, wrapper in reversed(installed):
            space = spaces.get(id(owner))
            if space is None:
                space = spaces[id(owner)] = vars(owner)
            if space.get(name) is not wrapper:
                continue  # replaced after us: theirs stays (ours passes through under it)
            if own:
                if type(owner) is _MODULE:
                    space[name] = original
                else:
                    setattr(owner, name, original)
            else:
                delattr(owner, name)


def _foreign(module: Any) -> bool:
    """A module whose names may alias torch functions: not torch's own, not gradscope's."""
    name = getattr(module, "__name__", None)
    return isinstance(name, str) and not name.startswith(_OWN_PACKAGES)


_OWN_PACKAGES = ("torch", "gradscope", "functorch", "builtins", "sys")
_ABSENT = object()
_FUNCTION = types.FunctionType
_MODULE = types.ModuleType
# module class -> its forward's code object (the layer functions' wrappers): cleared on uninstall
_FORWARD_CODES: dict = {}


def forward_code(cls: type) -> Any:
    """The code object of ``cls.forward`` (0 if it has none), remembered per class."""
    code = _FORWARD_CODES[cls] = getattr(getattr(cls, "forward", None), "__code__", 0)
    return code

OP_PATCHES = _OpPatches()
