"""Capture: installs every hook of one run, records plain data, removes everything on exit.

States: ``new`` -> ``open`` (inside ``with``) -> ``closed``. A closed capture cannot be reopened.
While open it holds the models and optimizers it saw; on close it snapshots what the report
needs into plain data and drops every reference to user objects.
"""
from __future__ import annotations

import operator
import sys
import threading
import time
from itertools import compress, repeat
import weakref
import warnings
from typing import Any, Callable, Iterable, Optional

import torch
import torch.optim.optimizer as torch_optimizer

from ..errors import GradscopeWarning, SessionClosedError
from ..graph import Graph
from .handles import HandleGroup, ours
from .locations import refresh_cwd, user_location, user_variable_name
from .attributes import scan_attributes
from . import failures
from . import gradients as _gradients
from .gradients import GradientRecorder, read_per_device, uninitialized as _uninitialized
from .modules import ModuleTracker, _peek_sequence_nr, init_typo
from .nonfinite import NonfiniteFinder
from .keepalive import KeepAliveWatch
from .listing import listings
from .lightmode import LightForwards
from .opwatch import OpWatch
from . import oppatches
from .patches import PATCHES, tensors_in
from .optimizers import OptimizerRegistry
from . import steporder
from .userwarnings import CompileHookWarningFilter, WarningRelocator
from .registrations import RegistrationRecorder
from .steady import SteadySteps, backward_key
from .walk import AutogradWalker, _Strings, storage_id

MAX_EVENTS = 10_000
FLUSH_SECONDS = 5.0  # a distributed rank writes its report this often: a crash loses little


_DROPOUT = torch.nn.modules.dropout._DropoutNd
_BATCHNORM = torch.nn.modules.batchnorm._BatchNorm
_INSTANCENORM = torch.nn.modules.instancenorm._InstanceNorm
_MODE_BASES = (_DROPOUT, _BATCHNORM, _INSTANCENORM)


def _obeys_training(m: torch.nn.Module) -> bool:
    """Modules whose forward depends on .training (dropout, batch norm, tracked instance norm).
    Dropout with p=0 (common in LLM fine-tuning configs) is the identity in both modes."""
    if isinstance(m, _DROPOUT):
        return m.p > 0
    if isinstance(m, _BATCHNORM):
        return True
    return isinstance(m, _INSTANCENORM) and m.track_running_stats


def _mode_modules(listing: list) -> list:
    """The ``(name, module)`` of ``listing`` that obey ``.training`` (:func:`_obeys_training`),
    each class told once: a deep model has thousands of modules of a few classes."""
    kinds: dict = {}  # class -> may its modules obey .training?
    out = []
    for name, m in listing:
        cls = type(m)
        may = kinds.get(cls)
        if may is None:
            may = kinds[cls] = issubclass(cls, _MODE_BASES)
        if may and _obeys_training(m):
            out.append((name, m))
    return out


_Tensor = torch.Tensor
_storage_impl = operator.attrgetter("_cdata")  # (walk.storage_id's key)
_Parameter = torch.nn.Parameter


def buffer_copies(models: Iterable[torch.nn.Module],
                  listing: Optional[Callable[[torch.nn.Module], list]] = None) -> list:
    """``(buffer, copy)`` for every buffer of ``models`` that has values (not lazy, not meta),
    to put running statistics back after work of ours moved them. ``listing``: a model's
    ``named_modules()`` list, when the caller has it (a capture's, shared)."""
    if listing is None:
        buffers = [b for model in models for b in model.buffers()]
    else:  # each module's own dict: most are empty, and no generator per module
        buffers = list(dict.fromkeys(b for model in models for _, m in listing(model)
                                     for b in m._buffers.values() if b is not None))
    return [(b, b.detach().clone()) for b in buffers
            if not _uninitialized(b) and b.device.type != "meta"]


def changed_buffers(buffers: list, versions: list) -> list:
    """The ``(buffer, copy)`` pairs whose buffer moved on since the copy: a new version, or new
    values. The values are compared on their device and read back once per device, not once
    per buffer (each read is a synchronisation on a GPU)."""
    out, pending = [], []
    for (b, saved), version in zip(buffers, versions):
        if b._version != version:
            out.append((b, saved))
        else:
            pending.append((b, saved, torch.ne(b, saved).any()))
    moved = read_per_device([flag for _, _, flag in pending])
    out.extend((b, saved) for (b, saved, _), m in zip(pending, moved) if m)
    return out


def _batch_rows(stats: dict) -> list:
    return [{"batch": b, "per_channel": v, "calls": n} for (b, v), n in sorted(stats.items())]


# Autograd nodes whose scalar arguments a check needs (softmax-batch-dim: over which dim).
_ARG_OPS = {"SoftmaxBackward0": ("dim",), "LogSoftmaxBackward0": ("dim",)}


def _node_args(graph: Graph, fns: Optional[list]) -> dict:
    """``node id -> {"dim": d}`` for the graph's softmax nodes: ``_saved_dim`` is a plain
    integer, so reading it unpacks nothing."""
    out: dict = {}
    if not fns or not graph.ops() & _ARG_OPS.keys():
        return out
    for i, op in enumerate(graph.column("op")):
        names = _ARG_OPS.get(op)
        if not names:
            continue
        fn = fns[i]
        values = {}
        for name in names:
            try:
                values[name] = int(getattr(fn, "_saved_" + name))
            except Exception:  # noqa: BLE001 - a torch that names it differently
                continue
        if values:
            out[graph.id_of(i)] = values
    return out


def _has_model(graph: Graph) -> bool:
    return any(m is not None for m in graph.column("model"))


def _not_compiled(fn: Callable) -> Callable:
    """``fn`` run eagerly, never traced by torch.compile (``torch.compiler.disable``), once the
    program uses the compiler. Until then it is called as it is: ``disable`` imports Dynamo
    (1.5 s here), and in a 2-rank gloo run that import made gloo's teardown hang in 3 of 6
    runs (0 of 6 without it); a program that never compiles has nothing to keep us out of."""
    if "torch._dynamo" in sys.modules:  # the program compiled something already
        return torch.compiler.disable(fn)
    disabled: list = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)
    return call


# The parameter table's columns, in the order of its rows' keys.
_ROW_KEYS = ("model", "name", "module", "shape", "dtype", "device", "numel", "requires_grad",
             "in_graph", "in_optimizer", "has_grad", "grad_seen", "aliases", "grad_norm")
_shape_of, _dtype_of, _grad_of, _needs_grad, _on_cpu = map(
    operator.attrgetter, ("shape", "dtype", "grad", "requires_grad", "is_cpu"))
_NAMES = _Strings()  # dtypes' and devices' names, for every parameter table of the process


def _parameter_rows(label: str, unique: list, more: dict, in_graph: set,
                    optimized: Optional[set], seen: Optional[set], norms: dict,
                    sizes: dict) -> tuple:
    """``(rows, total size)``: one row of the parameter table per ``(name, parameter)`` of
    ``unique``, and each one's size put in ``sizes`` (by id). ``more``: tied weights' other
    names; ``optimized`` / ``seen``: None when no optimizer is known / no backward ran.

    Column by column, the reads in C (``map`` over the tensors' getters), then one dict per
    row from them."""
    names = [n for n, _ in unique]
    params = [p for _, p in unique]
    ids = list(map(id, params))
    count = len(params)
    if all(map(operator.is_, map(type, params), repeat(_Parameter))):
        numels = list(map(_Tensor.numel, params))
        shapes: Any = map(list, map(_shape_of, params))
    else:  # a subclass, maybe a LazyModule's parameter that never ran: no shape yet
        lazy = list(map(_uninitialized, params))
        numels = [0 if z else p.numel() for p, z in zip(params, lazy)]
        shapes = [None if z else list(p.shape) for p, z in zip(params, lazy)]
    sizes.update(zip(ids, numels))
    dtypes = map(_NAMES.__getitem__, map(_dtype_of, params))
    if all(map(_on_cpu, params)):  # (.device builds an object per parameter)
        devices: Any = repeat("cpu", count)
    else:
        devices = ["cpu" if p.is_cpu else _NAMES[p.device] for p in params]
    rows = list(map(dict, map(zip, repeat(_ROW_KEYS), zip(
        repeat(label, count), names, [n.rpartition(".")[0] for n in names], shapes, dtypes,
        devices, numels, map(_needs_grad, params),
        map(in_graph.__contains__, zip(repeat(label, count), names)),
        repeat(None, count) if optimized is None else map(optimized.__contains__, ids),
        map(operator.is_not, map(_grad_of, params), repeat(None, count)),
        repeat(None, count) if seen is None else map(seen.__contains__, ids),
        [more.get(pid) or [] for pid in ids], map(norms.get, names)))))
    return rows, sum(numels)


class Capture(steporder.StepOrderEvents):
    """Records one run. Use as ``with Capture(...) as cap: ...`` then ``cap.trace()``."""

    def __init__(self, mode: str = "api", intercept_backward: bool = False,
                 find_nonfinite: bool = False) -> None:
        self.mode = mode
        # Device copies and in-place ops: a Python call per torch function, so trace runs only.
        self.opwatch: Optional[OpWatch] = None
        self.nonfinite = NonfiniteFinder() if find_nonfinite else None
        self.flush: Optional[Callable[["Capture"], None]] = None  # called at most every 5 s
        self._last_flush = 0.0
        self.intercept_backward = intercept_backward
        self.state = "new"
        self.tracker = ModuleTracker()
        self.tracker.listing = self.named_modules
        if mode != "watch":
            self.opwatch = OpWatch(self.tracker)
            self.opwatch.history.counters = lambda: (self.backward_calls, self.optimizer_steps)
            self.tracker.direct.nested = True  # the op watch looks inside forwards too
            self.tracker.patch_calls = True  # module calls through our _call_impl: cheaper
        # watch: after the first steps, module calls recorded without a hook per call
        self.light = LightForwards(self.tracker) if mode == "watch" else None
        self.failure: Optional[dict] = None      # an error of the run, explained (plain data)
        self._backward_failure: Optional[dict] = None
        self.registrations = RegistrationRecorder(self.tracker)
        self.handles = HandleGroup()
        self.leaves: list = []               # unregistered leaves of the drawn graph, described
        self._leaf_refs: dict = {}           # node id -> weak reference to that leaf tensor
        # accumulation, norms, non-finite values (norms sampled only under watch)
        self.gradients = GradientRecorder(sampled=mode == "watch")
        self._mode_modules: dict = {}        # id(model) -> [(name, module)] that obey .training
        self._trainable: dict = {}           # id(model) -> has parameters that require grad
        self.graph: Optional[Graph] = None
        self.graph_location: Optional[str] = None
        self.node_args: dict = {}            # node id -> scalar arguments (softmax dim)
        self._graph_has_model = False
        self.backward_calls = 0
        # the autograd sequence number at each backward call: a tensor whose history has nodes
        # on both sides of one survived that backward (attribute-keeps-graph)
        self.backward_seqs: list = []
        self.grad_calls = 0
        # variables and forward inputs that keep autograd history across backward calls
        self.step_seqs: list = []            # the same at each optimizer step
        self.keepalive = KeepAliveWatch(self.backward_seqs,
                                        lambda: (self.backward_calls, self.optimizer_steps),
                                        self.step_seqs)
        self.optimizer_steps = 0
        self.events: list = []
        self.notes: list = []
        self.internal_errors: list = []
        self.grad_norms: dict = {}           # model -> {parameter: float}, set by run_model
        self.optimizers = OptimizerRegistry()  # weakly held: one built per step is let go
        self._watch_key: Any = None          # what the watched parameter set was made from
        self._watch_waiting = True           # a parameter was left for a later pass
        # run_model (one forward and backward on clean gradients) tells which parameters got
        # a gradient itself: no per-parameter states then
        self.gradient_watch = True
        self._param_lists: dict = {}         # id(model) -> (key, weak ref, named parameters)
        self._module_lists: dict = {}        # id(model) -> (key, weak ref, named modules)
        self._unique_lists: dict = {}        # id(model) -> (listing, unique, aliases)
        self._scalers: Any = weakref.WeakSet()  # GradScalers seen scaling or stepping
        self._scaler_steps: set = set()      # (id(scaler), id(optimizer)) it stepped
        self._snapshot: Optional[dict] = None
        self._lock = threading.Lock()
        # watch: a loop repeating the same step runs idle between full steps (steady.py)
        self.steady = SteadySteps(self) if mode == "watch" else None
        if self.light is not None:
            self.light.steady = self.steady

    # -- life cycle ----------------------------------------------------------------------------
    def __enter__(self) -> "Capture":
        if self.state != "new":
            raise SessionClosedError(
                f"this gradscope capture is {self.state}; a capture records one run. "
                "Create a new one for the next run.")
        self.state = "open"
        refresh_cwd()
        try:
            self.tracker.on_root_call = self._on_root_call
            quiet = CompileHookWarningFilter()
            quiet.install()  # before our hooks exist: it looks for the program's own
            self.handles.on_remove(quiet.remove)
            self.tracker.install(self.handles)
            if self.light is not None:
                self.handles.on_remove(self.light.stop)  # before the tracker's hooks go
            self.registrations.install(self.handles)
            # Run eagerly even when the user compiles opt.step(): traced, the hook's Python
            # became graph breaks and recompiles (8 graphs instead of 1 in a reviewer's test).
            self.handles.add(torch_optimizer.register_optimizer_step_post_hook(
                _not_compiled(self._on_optimizer_step)))
            if self.intercept_backward:
                PATCHES.add(self)
                self.handles.on_remove(lambda: PATCHES.remove(self))
            steporder.PATCHES.add(self)
            self.handles.on_remove(lambda: steporder.PATCHES.remove(self))
            if self.opwatch is not None:
                self.opwatch.__enter__()
                self.handles.on_remove(self.opwatch.stop)
                relocator = WarningRelocator(oppatches.__name__, oppatches.__file__)
                relocator.install()
                self.handles.on_remove(relocator.remove)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook and patch, snapshot the models, drop references. Idempotent."""
        if self.state == "closed":
            return
        self._wake()  # the idle steps into the records, before anything reads them
        self.state = "closed"
        try:
            self.handles.remove()
        finally:
            try:
                refresh_cwd()
                self.gradients.finish(self.optimizer_steps)
                self._snapshot = self._take_snapshot()
            finally:
                self.tracker.clear_references()
                self._param_lists.clear()
                self._module_lists.clear()
                self._unique_lists.clear()
                self.optimizers.clear()
                self._mode_modules.clear()
                self._trainable.clear()
                self._leaf_refs.clear()

    def on_backward_error(self, roots: Any, error: BaseException) -> None:
        """A backward raised: for autograd's in-place error, find the node and the in-place op
        now, while the graph and the models are alive."""
        self._wake()
        if self._backward_failure is not None or failures.classify(error) != "inplace-modified":
            return

        def record() -> None:
            detail = failures.parse_inplace(str(error))
            tensors = [t for t in tensors_in(roots) if t.grad_fn is not None]
            stale = failures.stale_saved(tensors, self.tracker.attribution(),
                                         detail.get("producer"))
            records = self.opwatch.inplace_records() if self.opwatch is not None else []
            steps = [e for e in self.events if e["kind"] == "step"]
            self._backward_failure = {
                "detail": detail, "stale": stale,
                "inplace_op": failures.culprit(detail, stale, records),
                "parameters": failures.stale_parameters(self.tracker.models, detail),
                "backward": self.backward_calls, "backward_location": user_location(),
                "last_step": steps[-1] if steps else None,
                "ops_watched": self.opwatch is not None}
        self._guard("an in-place error", record)

    def note_failure(self, error: Optional[BaseException]) -> None:
        """Explain the run's error, if it is one gradscope knows (device, CUDA, in-place)."""
        self._wake()
        if error is None:
            return
        kind = failures.classify(error)
        if kind is None:
            return

        def record() -> None:
            frame, location, line = failures.failing_site(error)
            info = {"kind": kind, "error": str(error).strip().splitlines()[0][:500],
                    "location": location, "line": line}
            if kind == "device-mismatch":
                info["tensors"] = failures.tensors_on_line(frame, line)
                # the module record only if it is about this error (not one the program
                # caught earlier): the same exception, or one it was raised from
                info["module"] = self.tracker.failure_for(failures.chain(error))
            elif kind == "inplace-modified":
                info.update(self._backward_failure or {})
            self.failure = info
        self._guard("the error", record)

    def add_model(self, model: torch.nn.Module, label: Optional[str] = None) -> str:
        self._wake()
        return self.tracker.add_model(model, label)

    # -- graph ---------------------------------------------------------------------------------
    @ours
    def capture_graph(self, roots: Iterable[torch.Tensor], location: Optional[str] = None) -> Graph:
        """Walk the graph behind ``roots`` with module attribution.

        The first graph is kept, unless it touched no traced model (a warm-up on a bare tensor,
        say) and a later one does: the report is about the model, so that one replaces it.
        """
        params, storages = self._parameter_tables()
        names: list = []  # the attribute names of tensors, scanned at the first leaf to name

        def attribute_names() -> dict:
            if not names:
                models = self.tracker.models
                names.append(scan_attributes(models, (), self.named_modules)[1]
                             if any(m is not None for m in models.values()) else {})
            return names[0]

        walker = AutogradWalker(params, self.tracker.input_ids, self.tracker.attribution(),
                                param_storage_keys=storages,
                                describe_leaf=lambda t: self._describe_leaf(t, attribute_names))
        walker.forwards = lambda: self.tracker.replayed
        buffers = buffer_copies((m for m in self.tracker.models.values() if m is not None),
                                self.named_modules)
        versions = [b._version for b, _ in buffers]
        self.tracker.paused = True
        try:
            graph = walker.walk(roots)
        finally:
            self.tracker.paused = False
        if walker.saved_incomplete:
            # A saved-tensor read re-ran a checkpointed forward: put the buffers it changed
            # (BatchNorm statistics) back, so training is what it would have been without us.
            # Only those, and through .data: a write to the buffer itself would move its
            # version counter, and autograd would then refuse every node that saved it
            # (BERT's position_ids, a BatchNorm's running_mean outside the segment). The
            # values are compared: batch_norm updates running statistics inside its kernel,
            # which moves no version counter.
            with torch.no_grad():
                for b, saved in changed_buffers(buffers, versions):
                    b.data.copy_(saved)
        if walker.hooked and not any("saved-tensor hooks" in n for n in self.notes):
            self.notes.append(
                f"{walker.hooked} saved tensor(s) are held by saved-tensor hooks (activation "
                "checkpointing, or offloading such as save_on_cpu): gradscope measured what the "
                "hooks keep without unpacking them (unpacking would recompute a checkpointed "
                "segment or copy the tensor back). A checkpointed segment keeps nothing until "
                "backward recomputes it; offloaded copies are listed but not counted as device "
                "memory.")
        if walker.saved_incomplete and not any("checkpointed" in n for n in self.notes):
            self.notes.append(
                "Saved-tensor memory is shown only up to the first checkpointed segment: "
                "reading a checkpointed node's saved tensors re-runs its forward, so gradscope "
                "stopped there (once) rather than recompute every segment.")
        if self.graph is None or (not self._graph_has_model and _has_model(graph)):
            if self.graph is not None:
                self.notes.append(
                    f"The first backward call ({self.graph_location}) involved no model; the "
                    f"graph shown is from the first backward through one ({location}).")
            self.graph = graph
            self.graph_location = location
            self.node_args = _node_args(graph, getattr(walker, "fns", None))
            self.leaves = []
            for nid, info in walker.unregistered.items():
                ref = info.pop("_ref", None)
                # the id too: optimizers are held weakly, and a leaf only an optimizer kept
                # alive (CLIP's logit_scale) may be gone by the end of a script
                self._leaf_refs[nid] = (ref, id(ref()) if ref is not None and ref() is not None
                                        else None)
                self.leaves.append({"node": nid, **info})
            self._graph_has_model = _has_model(graph)
            if self._graph_has_model:
                self.tracker.stop_noting_inputs()
                if self.nonfinite is None:
                    self.tracker.record_ranges = False  # later graphs are not drawn
        return graph

    def _describe_leaf(self, tensor: Any, attribute_names: Callable[[], dict]) -> dict:
        ref = weakref.ref(tensor)  # to ask the optimizers about it at the end, without keeping it
        owner = self.registrations.owner_of(tensor)
        if owner is not None:
            return {"origin": "built-in-forward", "construction": owner[0], "name": owner[1],
                    "_ref": ref}
        name = attribute_names().get(id(tensor))
        if name is not None:
            return {"origin": "attribute", "name": name, "_ref": ref}
        return {"origin": "unknown", "name": None, "_ref": ref}

    def _watch_gradients(self) -> None:
        # Checked before each backward, so heads added late and lazy parameters (materialised in
        # the first forward) are watched too; the recorder ignores parameters it already has.
        # The walk over every parameter is skipped while nothing it depends on changed: at the
        # first backward calls only while a parameter waits (frozen, then unfrozen in the first
        # steps; lazy); every 64th call still walks, for requires_grad switched on later.
        optimizers = self.optimizers.live()
        key = (self.registrations.generation, len(self.tracker.models),
               [(id(o), [len(g["params"]) for g in o.param_groups]) for o in optimizers])
        calls = self.backward_calls + self.grad_calls
        if key == self._watch_key and (calls > 8 or not self._watch_waiting) \
                and (calls + 1) % 64:
            return  # (walks at backward calls 64, 128, ...: each with a periodic full step)
        self._watch_key = key
        waiting = 0
        for label, model in self.tracker.models.items():
            if model is not None:  # (named_parameters()'s list, from the shared listing)
                waiting += self.gradients.watch_named(label, self.unique_parameters(model)[0],
                                                      self.handles)
        # Tensors an optimizer trains outside any model (CLIP's logit_scale, a learned loss
        # weight): a forgotten optimizer.zero_grad() behind model.zero_grad() piles up there.
        for o, opt in enumerate(optimizers):
            kind = type(opt).__name__ + (f"#{o + 1}" if o else "")  # unique per optimizer
            for g, group in enumerate(opt.param_groups):
                for k, p in enumerate(group["params"]):
                    if not isinstance(p, torch.Tensor) or self.gradients.watching(p):
                        continue
                    if not p.requires_grad or _uninitialized(p):
                        waiting += 1
                        continue
                    name = user_variable_name(p) or f"{kind}.param_groups[{g}][{k}]"
                    self.gradients.watch(p, (None, name), self.handles)
        self._watch_waiting = waiting > 0

    def _arm_nonfinite(self, roots: Any) -> bool:
        """--find-nonfinite: hook every node of this backward's graph (until the first hit)."""
        if self.nonfinite is None or not self.nonfinite.active or _gradients.stream_capturing():
            return False  # (its read after the backward would break a CUDA graph capture)
        tensors = [t for t in tensors_in(roots) if t.grad_fn is not None]
        if not tensors:
            return False
        armed = [False]

        def arm() -> None:
            params, storages = self._parameter_tables()
            walker = AutogradWalker(params, self.tracker.input_ids, self.tracker.attribution(),
                                    param_storage_keys=storages, saved=False)
            graph = walker.walk(tensors)
            self.nonfinite.arm(graph, walker.fns, self.backward_calls, user_location())
            walker.fns = []
            self.tracker.clear_ranges()  # this step's forwards are attributed: keep memory flat
            armed[0] = True
        self._guard("the non-finite search", arm)
        return armed[0]

    def add_optimizer(self, optimizer: Any) -> None:
        """An optimizer the user handed us: its parameters count as optimized before it steps."""
        self._wake()
        self.optimizers.give(optimizer)

    def _on_root_call(self, model: torch.nn.Module, label: str, args: Any = ()) -> None:
        """A forward of a whole model starts: note its mode and whether grad is enabled, and
        look for history carried into it (keepalive)."""
        grad = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()

        def record() -> None:
            deps = self._mode_modules.get(id(model))
            if deps is None:  # (modules from the shared listing: a deep model's, once; not
                # the parameters, which torch.func.functional_call swaps for this call alone)
                deps = self._mode_modules[id(model)] = _mode_modules(self.named_modules(model))
                self._trainable[id(model)] = any(p.requires_grad for p in model.parameters())
            if grad and self._trainable[id(model)]:  # a model's forward, not a loss module's
                self._guard("a look for kept graphs", lambda: self.keepalive.on_forward(
                    label, args, self.tracker.attribution, model.training))
            event = {"model": label, "training": model.training, "grad": grad,
                     "location": user_location()}
            if torch.is_inference_mode_enabled():
                event["inference"] = True
            if not grad:
                train_mode = [name for name, m in deps if m.training]
                if train_mode:
                    event["train_mode"] = train_mode[:20]
                    event["train_mode_count"] = len(train_mode)
                    event["bn_updated"] = any(
                        isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                        and m.training and m.track_running_stats for _, m in deps)
            elif self._trainable.get(id(model)) and not model.training:
                # A frozen loss network may run in eval mode; and a model in train mode with
                # some layers put in eval on purpose (frozen BatchNorm when fine-tuning on small
                # batches) is a recipe, not the forgotten model.train() this looks for.
                eval_mode = [name for name, m in deps if not m.training]
                if eval_mode:
                    event["eval_mode"] = eval_mode[:20]
                    event["eval_mode_count"] = len(eval_mode)
            self._event("forward", **event)
        self._guard("a forward call", record)

    def _wants_graph(self) -> bool:
        # Look for a model graph during the first few backward calls only: a script that never
        # runs a model should not pay for a walk on every step.
        return self.graph is None or (not self._graph_has_model
                                      and self.backward_calls + self.grad_calls <= 20)

    def named_parameters(self, model: torch.nn.Module) -> list:
        """``list(model.named_parameters(remove_duplicate=False))``, shared (see
        :meth:`_listing`) by the graph walk's tables, the gradient norms, the snapshot and the
        watched set (``_watch_gradients``)."""
        return self._listing(self._param_lists, model, lambda: self._both(model)[1])

    def named_modules(self, model: torch.nn.Module) -> list:
        """``list(model.named_modules())``, shared by the module table and the attribute
        scans (see :meth:`_listing`)."""
        return self._listing(self._module_lists, model, lambda: self._both(model)[0])

    def unique_parameters(self, model: torch.nn.Module) -> tuple:
        """``(unique, aliases)``: ``[(name, parameter)]`` with each parameter under its first
        name (what ``named_parameters()`` lists), and ``id(parameter) -> [its other names]``
        for tied weights; from the shared listing, made once for each of its versions (the
        snapshot, the gradient norms, the preserved state and the walk's tables read it)."""
        listing = self.named_parameters(model)
        hit = self._unique_lists.get(id(model))
        if hit is not None and hit[0] is listing:
            return hit[1], hit[2]
        first: dict = {}
        aliases: dict = {}
        unique = []
        for name, p in listing:
            if id(p) in first:
                aliases.setdefault(id(p), []).append(name)
            else:
                first[id(p)] = name
                unique.append((name, p))
        self._unique_lists[id(model)] = (listing, unique, aliases)
        return unique, aliases

    def _both(self, model: torch.nn.Module) -> tuple:
        """Both listings from one walk of the model (``listing.listings``): the one not asked
        for yet is kept too, under the same key."""
        modules, params = listings(model)
        key = (self.registrations.generation, self.optimizer_steps)
        ref = weakref.ref(model)
        self._module_lists[id(model)] = (key, ref, modules)
        self._param_lists[id(model)] = (key, ref, params)
        return modules, params

    def _listing(self, cache: dict, model: torch.nn.Module, make: Callable[[], list]) -> list:
        """``make()``, made once for the passes that follow each other without a training event
        between them (a 3000-layer model takes ~10 ms a listing): made again after any
        registration (a new parameter or module) and after each optimizer step."""
        key = (self.registrations.generation, self.optimizer_steps)
        hit = cache.get(id(model))
        if hit is not None and hit[0] == key and hit[1]() is model:
            return hit[2]
        listing = make()
        if len(cache) >= 64:  # models come and go (one per episode, say)
            for k in [k for k, v in cache.items() if v[1]() is None]:
                del cache[k]
        cache[id(model)] = (key, weakref.ref(model), listing)
        return listing

    def _parameter_tables(self) -> tuple:
        params: dict = {}
        storages: set = set()
        for label, model in self.tracker.models.items():
            if model is None:
                continue
            unique = self.unique_parameters(model)[0]
            try:  # the storages in bulk (reads in C); one at a time if one cannot say
                storages.update(map(_storage_impl, map(_Tensor.untyped_storage,
                                                       (p for _, p in unique))))
            except Exception:  # noqa: BLE001 - sparse, nested, fake or meta parameters
                storages.update(storage_id(p) for _, p in unique)
            for name, p in unique:
                if id(p) not in params:  # (a parameter shared by two models: the first's)
                    params[id(p)] = (label, name)
        return params, storages

    # -- backward and optimizer hooks ----------------------------------------------------------
    @ours
    def _guard(self, what: str, fn: Callable[[], None]) -> None:
        # A bug of ours must never break the user's training: keep it, warn once, carry on.
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - reported, not swallowed
            if not self.internal_errors:
                warnings.warn(f"gradscope could not record {what}: {e!r}; the report will lack it",
                              GradscopeWarning, stacklevel=3)
            self.internal_errors.append(f"{what}: {e!r}")

    def _wake(self) -> None:
        """Idle steps (see ``steady``) are written into the records; record in full again."""
        if self.steady is not None:
            self.steady.wake()

    def on_zero_grad(self, owner: Any) -> None:
        """``zero_grad()`` of an optimizer or a module is about to run."""
        steady = self.steady
        key = ("z", id(owner))
        if steady is not None and steady.idle and steady.entry(key) is not None:
            return
        self._guard("a zero_grad call", lambda: self._event(
            "zero_grad", owner=type(owner).__name__, location=user_location()))
        if steady is not None:
            steady.note(key)

    def _event(self, kind: str, **data: Any) -> None:
        self._add_event({"kind": kind, **data})

    def _add_event(self, event: dict) -> None:
        steady = self.steady
        if steady is not None:
            if steady.idle:
                steady.wake()  # an event no idle step has: the idle steps come first
            steady.add_event(event)
        self._keep_event(event)

    def _keep_event(self, event: dict) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append(event)
        elif len(self.events) == MAX_EVENTS:
            self.notes.append(f"Only the first {MAX_EVENTS} events are kept in the timeline.")
            self.events.append({"kind": "truncated"})

    def events_room(self) -> int:
        """How many more events the timeline keeps (negative once it was cut)."""
        return MAX_EVENTS - len(self.events)

    def replayed_events(self, events: list) -> None:
        """The events of idle steps, written back in order when they end (steady.py): kept as
        :meth:`_add_event` keeps each, in one go (none is the full step's, being recorded)."""
        if len(events) < self.events_room():
            self.events += events
            return
        for event in events:
            self._keep_event(event)

    def on_backward(self, roots: Any, kind: str = "backward", retain: bool = False) -> None:
        """Called just before a backward (or ``autograd.grad``) call runs."""
        steady = self.steady
        if steady is not None and steady.idle and steady.backward(roots, kind, retain):
            return

        def record() -> None:
            if self.gradient_watch:
                self._watch_gradients()
            location = user_location()
            with self._lock:  # threads of the user's script may call backward at once
                if kind == "backward":
                    self.backward_calls += 1
                    index = self.backward_calls
                else:
                    self.grad_calls += 1
                    index = self.grad_calls
            given = tensors_in(roots)
            roots_ = [t for t in given if t.grad_fn is not None]
            extra: dict = {}
            if retain:
                extra["retain_graph"] = True
            if given and not roots_ and any(t.requires_grad for t in given):
                # backward() on a tensor with no history: requires_grad was switched on after
                # the graph was lost (loss.requires_grad = True), so no parameter gets anything
                extra["leaf_root"] = True
            self._event(kind, index=index, location=location,
                        root=type(roots_[0].grad_fn).__name__ if roots_ else None, **extra)
            self.tracker.unmute()
            light = self.light
            if light is not None and light.steps_after and not self.tracker.in_forward():
                light.take_up_steps()  # optimizer steps that ran inside the forward
            if kind == "backward":
                self.gradients.before_backward()
                self.gradients.note_loss(roots, index, location)
                if _peek_sequence_nr is not None and len(self.backward_seqs) < 100_000:
                    self.backward_seqs.append(_peek_sequence_nr())
            if self._wants_graph():
                tensors = [t for t in tensors_in(roots) if t.grad_fn is not None]
                if tensors:
                    self.capture_graph(tensors, location)
        self._guard("a backward call", record)
        if steady is not None:
            steady.note(backward_key(roots, kind, retain))

    def after_backward(self) -> None:
        """Called just after a backward call returned (or raised): which gradients it wrote."""
        if self.steady is not None and self.steady.idle:
            return  # an idle backward (see steady): nothing to look at
        seen = len(self.gradients.seen)
        self._guard("a backward call", self.gradients.after_backward)
        light = self.light
        if light is not None and light.active and len(self.gradients.seen) > seen:
            # Parameters that never had a gradient got one: a module none of our hooks saw
            # ran (a model first called after the warm-up, while only known models are
            # hooked). The next forwards are recorded in full, which finds it.
            light.record_next()

    @ours
    def _on_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        steady = self.steady
        if steady is not None and steady.idle:
            if self.flush is not None and time.monotonic() - self._last_flush > FLUSH_SECONDS:
                self._wake()  # a report is due: written from the records, complete
            elif steady.step(optimizer):
                return
        here = sys._getframe()  # (the idle steps compare the user's line above it)

        def record() -> None:
            self.tracker.unmute()
            self.optimizer_steps += 1
            if _peek_sequence_nr is not None and len(self.step_seqs) < 100_000:
                self.step_seqs.append(_peek_sequence_nr())
            serial = self.optimizers.stepped(optimizer)
            location = user_location()
            self._event("step", index=self.optimizer_steps, optimizer=type(optimizer).__name__,
                        optimizer_id=serial, location=location)
            self.gradients.on_step(optimizer, self.optimizer_steps, serial, location)
            if self.light is not None:
                self.light.on_step(self.optimizer_steps, self._graph_has_model
                                   and self.nonfinite is None and not self.tracker.compiled
                                   and not self.tracker.direct.records)
                if self.light.active and self._trains_another(serial, optimizer):
                    # An optimizer's first step, over parameters of no model we know: a second
                    # model (a GAN's discriminator, a critic) first called after the warm-up,
                    # not handed to watch, whose forward no hook saw. Recorded in full from
                    # after this step, its next forward finds it (else the next 64th would).
                    self.light.record_next()
            if self.flush is not None and time.monotonic() - self._last_flush > FLUSH_SECONDS:
                self._last_flush = time.monotonic()
                self.flush(self)
            if steady is not None:
                steady.learn(optimizer, serial, here)
        self._guard("an optimizer step", record)

    def _trains_another(self, serial: int, optimizer: Any) -> bool:
        """Is this the first step of ``optimizer``, over tensors no optimizer seen before had
        (not one rebuilt every step), among them an ``nn.Parameter`` (a model's; not the
        plain tensors an optimizer built per batch trains, an input or latent) that is no
        parameter whose gradients we follow?"""
        rec = self.optimizers.records.get(serial)
        if rec is None or rec["steps"] != 1 or rec["same_as"] != serial:
            return False
        watching = self.gradients.watching
        return any((type(p) is _Parameter or isinstance(p, _Parameter)) and not watching(p)
                   for group in getattr(optimizer, "param_groups", ()) for p in group["params"])

    # -- snapshot ------------------------------------------------------------------------------
    def _take_snapshot(self) -> dict:
        self._wake()
        in_graph = set()
        if self.graph is not None:  # (from the columns: no Node rows made for this)
            params = self.graph.column("param")  # (names: a param leaf's is never "")
            in_graph = set(compress(zip(self.graph.column("model"), params), params))
        optimized = self.optimizers.optimized
        any_optimizer = self.optimizers.active
        models, parameters = [], []
        sizes: dict = {}    # id(parameter) -> numel, for the module table
        backward_ran = (self.backward_calls + self.grad_calls) > 0
        seen = self.gradients.seen
        for label, model in self.tracker.models.items():
            if model is None:
                continue
            unique, more = self.unique_parameters(model)  # more: tied weights' other names
            rows, total = _parameter_rows(
                label, unique, more, in_graph, optimized if any_optimizer else None,
                seen if backward_ran else None, self.grad_norms.get(label, {}), sizes)
            parameters += rows
            models.append({"label": label, "type": type(model).__name__, "parameters": total,
                           "training": model.training})
        attributes = scan_attributes(self.tracker.models, self.backward_seqs,
                                     self.named_modules)[0]
        for leaf in self.leaves:  # is the leaf trained after all, by an optimizer given it?
            ref, leaf_id = self._leaf_refs.get(leaf["node"], (None, None))
            tensor = ref() if ref is not None else None
            if tensor is not None:
                leaf_id = id(tensor)
            leaf["in_optimizer"] = (leaf_id in optimized) if (
                leaf_id is not None and any_optimizer) else None
        history = self.opwatch.history.records() if self.opwatch else {}
        return {"models": models, "parameters": parameters, "modules": self._module_table(sizes),
                "optimizers": list(self.optimizers.records.values()),
                "node_args": dict(self.node_args),
                "kept_graphs": self.keepalive.records(),
                "direct_calls": self.tracker.direct.records_list(),
                "cuts": history.get("cuts"), "grad_switches": history.get("switches"),
                "dropout_calls": history.get("dropouts"),
                "softmax_calls": history.get("softmaxes"),
                "attributes": attributes, "constructions": self.registrations.records(),
                "transfers": self.opwatch.transfer_records() if self.opwatch else None,
                "loss_sites": self.opwatch.loss_site_records() if self.opwatch else None,
                "broadcasts": self.opwatch.broadcast_records() if self.opwatch else None,
                "iterations": self.opwatch.iteration_records() if self.opwatch else None,
                "gradients": {**self.gradients.snapshot(),
                              "nonfinite_origin": self.nonfinite.found if self.nonfinite else None,
                              "nonfinite_search": self.nonfinite is not None}}

    def _module_table(self, sizes: dict) -> list:
        """One row per module. ``sizes``: ``id(parameter) -> numel`` of every parameter of
        the models (the parameter table's figures). A module's count is that of its own
        ``_parameters``, read from the module: a wrapper's listing may rename them
        (checkpoint_wrapper, FSDP)."""
        if self.light is not None:
            self.light.flush()  # forwards replayed since the last read
        rows = []
        records = self.tracker.records
        seen = set()
        typos: dict = {}  # per class: the misspelled __init__ is a property of the class
        shown: dict = {}  # torch.Size -> "(8, 10)": most shapes repeat
        size_of = sizes.get
        for label, model in self.tracker.models.items():
            if model is None:
                continue
            for name, sub in self.named_modules(model):
                key = (label, name)
                rec = records.get(key)
                seen.add(key)
                cls = type(sub)
                typo = typos[cls] if cls in typos else typos.setdefault(cls, init_typo(cls))
                count = 0
                for p in sub._parameters.values():  # (id(None) is no parameter's: 0)
                    count += size_of(id(p), 0)
                output = rec.output if rec else None
                if output.__class__ is torch.Size:
                    text = shown.get(output)
                    output = text if text is not None else shown.setdefault(
                        output, rec.output_text)
                rows.append({
                    "model": label, "name": name, "type": cls.__name__, "registered": True,
                    "calls": rec.calls if rec else 0, "output": output,
                    "parameters": count,
                    "location": None, "init_typo": typo,
                })
                if rec is not None and rec.batch_stats:
                    rows[-1]["batch_stats"] = _batch_rows(rec.batch_stats)
        for key, rec in records.items():
            if key not in seen:
                rows.append({"model": rec.model, "name": rec.name, "type": rec.type,
                             "registered": rec.registered, "calls": rec.calls,
                             "output": rec.output_text, "parameters": None,
                             "location": rec.location, "has_parameters": rec.has_parameters,
                             "rebuilt": rec.objects > 1})
        return rows

    def interim_snapshot(self) -> dict:
        """What the report would hold now, without closing (for periodic flushes)."""
        return self._take_snapshot()

    @property
    def snapshot(self) -> dict:
        if self._snapshot is None:
            raise SessionClosedError("the capture is still open; close it before asking for data")
        return self._snapshot
