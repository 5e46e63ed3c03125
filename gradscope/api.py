"""The library entry points: ``trace(model, *inputs)`` and ``graph_of(tensor)``."""
from __future__ import annotations

import contextlib
import dataclasses
import traceback
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from ._gc import collector_paused, collector_paused_during
from .checks import run_checks, select_checks
from .errors import GradscopeError, InputError, TracedProgramError
from .graph import Graph
from .report import Report
from .tracedata import Trace
from .tracing.capture import Capture, buffer_copies
from .tracing.gradnorms import norm_vector
from .tracing.handles import ours
from .tracing.modules import unwrap
from .tracing.walk import storage_key, walk_autograd_graph


@collector_paused_during  # no reference cycles to collect in one traced step (gradscope._gc)
def trace(model: nn.Module, *inputs: Any, loss_fn: Optional[Callable[[Any], Any]] = None,
          label: Optional[str] = None, only: Optional[list] = None,
          disable: Optional[list] = None, **kwargs: Any) -> Report:
    """Run ``model(*inputs, **kwargs)``, a loss and backward; return what autograd did.

    The loss is ``loss_fn(output)`` when given; otherwise the output itself when it is a scalar,
    a ``"loss"`` entry of a dict-like output when there is one, else the sum of every floating
    tensor in the output. The model is left as it was found: training mode, ``.grad``, buffers
    (BatchNorm running statistics) and the random number generators are restored.

    >>> report = gradscope.trace(model, torch.randn(8, 3, 32, 32))
    >>> report.save("graph.svg")
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"gradscope.trace expects an nn.Module as its first argument, got "
                         f"{type(model).__name__}; for any tensor use gradscope.graph_of(tensor).")
    checks = select_checks(only, disable)
    capture = Capture(mode="api")
    label = label or type(unwrap(model)).__name__  # Net, not OptimizedModule or DDP
    run = {"mode": "api", "target": label, "status": "ok"}
    with capture:  # a failure to install our hooks is ours and propagates as it is
        capture.add_model(model, label)
        try:
            run_model(capture, model, inputs, kwargs, loss_fn)
        except GradscopeError as e:
            run.update(status="error", error=str(e))
            e.report = build_report(capture, run, checks)  # type: ignore[attr-defined]
            raise
        except BaseException as e:
            interrupted = isinstance(e, KeyboardInterrupt)
            run.update(status="interrupted" if interrupted else "error",
                       error=describe_exception(e))
            capture.note_failure(e)
            report = build_report(capture, run, checks)
            if interrupted:
                raise
            raise TracedProgramError(
                f"the traced model raised {describe_exception(e)}; the error's .report holds "
                "what was captured before the failure", report) from e
    return build_report(capture, run, checks)


def run_model(capture: Capture, model: nn.Module, args: tuple, kwargs: dict,
              loss_fn: Optional[Callable[[Any], Any]] = None) -> None:
    """Forward, loss, graph walk and backward of ``model`` inside an open capture."""
    capture.gradient_watch = False  # every .grad is cleared first: gradient_norms() tells
    with preserved_state(model, capture):
        output = model(*args, **kwargs)
        loss = loss_of(output, loss_fn)
        capture.capture_graph([loss])
        capture.on_backward(loss, "backward")
        try:
            loss.backward()
        except RuntimeError as e:
            if not capture.intercept_backward:  # else the patched backward already saw it
                capture.on_backward_error([loss], e)
            raise
        finally:
            if not capture.intercept_backward:
                capture.after_backward()
        label, norms = gradient_norms(model, capture)
        capture.grad_norms.setdefault(label, {}).update(norms)


def loss_of(output: Any, loss_fn: Optional[Callable[[Any], Any]] = None) -> torch.Tensor:
    """The scalar to call backward on (see :func:`trace`); InputError when there is none."""
    if loss_fn is not None:
        loss = loss_fn(output)
        if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
            raise InputError(f"loss_fn returned {_describe(loss)}; it must return a one-element "
                             "tensor, e.g. lambda out: out.logits.mean()")
        return _scalar(loss)
    if isinstance(output, torch.Tensor) and output.numel() == 1 and output.requires_grad:
        return _scalar(output)
    if isinstance(output, dict):
        maybe = output.get("loss")
        if isinstance(maybe, torch.Tensor) and maybe.numel() == 1 and maybe.requires_grad:
            return _scalar(maybe)
    tensors = [t for t in _flat_tensors(output) if t.requires_grad and t.is_floating_point()]
    if not tensors:
        raise InputError(
            f"the model returned {_describe(output)}, which holds no floating-point tensor that "
            "requires grad, so there is nothing to call backward on. Return a tensor from "
            "forward(), pass loss_fn=... (library), or trace a script that computes the loss "
            "(gradscope trace train.py).")
    total = tensors[0].sum()
    for t in tensors[1:]:
        total = total + t.sum()
    return total


def _scalar(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 0 else t.reshape(())  # reshape of a 0-d tensor would add a node


def _flat_tensors(value: Any, depth: int = 0) -> list:
    if isinstance(value, torch.Tensor):
        return [value]
    if depth > 4:
        return []
    if isinstance(value, dict):
        items = list(value.values())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = [getattr(value, f.name, None) for f in dataclasses.fields(value)]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return []
    out: list = []
    for v in items:
        out.extend(_flat_tensors(v, depth + 1))
    return out


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} (requires_grad={value.requires_grad})"
    if value is None:
        return "None"
    return f"a {type(value).__name__}"


@contextlib.contextmanager
def preserved_state(model: nn.Module, capture: Optional[Capture] = None) -> Iterator[None]:
    """Restore training flags, ``.grad``, buffers and RNG state of ``model`` afterwards.
    ``capture``: an open capture, whose listings of the model's modules and parameters are
    shared (each is a pass over every module of a deep model)."""
    with torch._C.DisableTorchFunction():  # our bookkeeping, not the program's torch calls
        if capture is not None:
            modules = [m for _, m in capture.named_modules(model)]
            params = [p for _, p in capture.unique_parameters(model)[0]]
        else:
            modules, params = list(model.modules()), list(dict.fromkeys(model.parameters()))
        modes = [m.training for m in modules]
        grads = [p.grad for p in params]
        buffers = buffer_copies([model], capture.named_modules if capture is not None else None)
        # (no parameter can be on a GPU before CUDA was initialised: no read per parameter)
        devices = sorted({p.get_device() for p in params if p.is_cuda}) \
            if torch.cuda.is_initialized() else []
        for p, g in zip(params, grads):
            if g is not None:
                p.grad = None  # our backward starts from clean gradients; yours come back after
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad(), torch._C.DisableTorchFunction():
            for b, saved in buffers:
                if b.shape == saved.shape:
                    b.copy_(saved)
            for p, g in zip(params, grads):
                p.grad = g
        for m, mode in zip(modules, modes):
            if m.training is not mode:  # (a Module.__setattr__ per module otherwise)
                m.training = mode


@ours
def gradient_norms(model: nn.Module, capture: Capture) -> tuple:
    """``(the model's label, {parameter name: L2 norm of its gradient})``: one fused kernel
    and one transfer per device.
    Without the capture's gradient watch (run_model cleared every .grad before its backward)
    the parameters holding a gradient are the ones that backward reached: noted as seen."""
    names = capture.tracker.lookup(model)
    label = names[0] if names else type(model).__name__
    by_device: dict = {}
    strided = torch.strided
    reached = capture.gradients.seen if not capture.gradient_watch else set()
    for n, p in capture.unique_parameters(unwrap(model))[0]:  # the names the report uses
        g = p.grad
        if g is None:
            continue
        reached.add(id(p))
        # (get_device(): an int, -1 on the CPU; .device would build an object per gradient)
        if g.layout is strided and not g.is_meta:
            by_device.setdefault(g.get_device(), []).append((n, g))
    out = {}
    with torch.no_grad():  # (no .detach() per gradient: norms of a create_graph grad too)
        for items in by_device.values():
            values = norm_vector([g for _, g in items]).tolist()  # float32 norms
            out.update(zip([n for n, _ in items], values))
    return label, out


def build_report(capture: Capture, run: dict, checks: Optional[list] = None) -> Report:
    """Close ``capture`` (if still open) and turn what it recorded into a checked Report."""
    with collector_paused():  # the snapshot and the checks: plain data in bulk, no cycles
        capture.close()
        return report_from(capture, capture.snapshot, run, checks)


def report_from(capture: Capture, snap: dict, run: dict, checks: Optional[list] = None) -> Report:
    """A checked Report from a capture's snapshot (final, or taken mid-run for a rank's flush)."""
    gradients = dict(snap["gradients"])  # (the parameter rows hold their grad_norm already)
    notes = list(capture.notes)
    if capture.graph is None and capture.backward_calls + capture.grad_calls:
        calls = capture.backward_calls + capture.grad_calls
        notes.append(f"{calls} backward call(s) ran, but none started from a tensor with "
                     "autograd history (a loss computed without gradients, or a leaf with "
                     "requires_grad switched on), so there is no graph to draw: the report "
                     "shows the modules and output shapes of the forward passes.")
    elif capture.graph is None:
        notes.append("No backward() call was seen, so there is no autograd graph: the report "
                     "shows the modules and output shapes of the forward passes only.")
    if not snap["models"]:
        notes.append("No nn.Module forward ran under gradscope.")
    elif not snap["parameters"]:
        notes.append("The traced model has no parameters: there is nothing to train.")
    compiled = capture.tracker.compiled
    if compiled:
        run = {**run, "compiled": {k: list(v) for k, v in compiled.items()}}
    regions = capture.graph is not None and "CompiledFunctionBackward" in capture.graph.ops()
    if compiled and regions:
        parts = "; ".join(f"{label}" + (f" ({', '.join(v)})" if v != [""] else "")
                          for label, v in compiled.items())
        notes.append(
            f"Compiled with torch.compile: {parts}. A compiled region runs as one autograd node "
            "(CompiledFunctionBackward) with no module hooks inside, so the graph shows no "
            "modules, shapes or saved tensors within it, and the graph checks (layer-in-forward, "
            "double-softmax, builtin-sum, bias-before-norm, batchnorm-small-batch) and the "
            "trace-only device-copy and inplace-modified records are blind there. Gradient "
            "checks (zero_grad, accumulation, non-finite, vanishing/exploding, unused "
            "parameters) still see every parameter. Trace the model uncompiled for the full "
            "picture.")
    segments = capture.graph is not None and \
        capture.graph.column("op").count("CheckpointFunctionBackward")
    if segments:
        notes.append(
            f"{segments} reentrant checkpoint segment(s) (torch.utils.checkpoint with "
            "use_reentrant=True) appear as one CheckpointFunctionBackward node each: their ops, "
            "shapes, saved tensors and parameters are rebuilt only inside backward, out of this "
            "graph's sight, so the graph checks are blind there. Gradient checks still see every "
            "parameter; use_reentrant=False (the recommended mode) shows the segments.")
    if capture.gradients.captured_steps:
        notes.append(
            f"{capture.gradients.captured_steps} optimizer step(s) ran while a CUDA graph was "
            "being captured: gradscope recorded nothing there (a read would break the capture), "
            "and replays of a CUDA graph run no Python hooks, so the steps they replay are not "
            "seen either. Gradient checks cover only the steps that ran outside the graph.")
    if capture.opwatch is not None and capture.opwatch.errors:
        capture.internal_errors.extend(capture.opwatch.errors)
    if capture.internal_errors:
        notes.append("gradscope hit internal errors (the run itself was not affected): "
                     + "; ".join(capture.internal_errors[:3]))
    trace = Trace(graph=capture.graph or Graph(), models=snap["models"],
                  modules=snap["modules"], parameters=snap["parameters"],
                  backward_calls=capture.backward_calls, optimizer_steps=capture.optimizer_steps,
                  events=list(capture.events), run={**run, **rank_info()}, notes=notes,
                  attributes=snap["attributes"], constructions=snap["constructions"],
                  leaves=capture.leaves, accumulation=gradients.pop("accumulation"),
                  gradients=gradients, transfers=snap.get("transfers") or [],
                  loss_sites=snap.get("loss_sites") or [],
                  broadcasts=snap.get("broadcasts") or [],
                  iterations=snap.get("iterations") or [],
                  failure=capture.failure or {}, torch_version=torch.__version__,
                  optimizers=snap.get("optimizers") or [], cuts=snap.get("cuts") or [],
                  grad_switches=snap.get("grad_switches") or [],
                  dropout_calls=snap.get("dropout_calls") or [],
                  softmax_calls=snap.get("softmax_calls") or [],
                  kept_graphs=snap.get("kept_graphs") or [],
                  node_args=snap.get("node_args") or {},
                  direct_calls=snap.get("direct_calls") or [])
    if capture.graph_location:
        trace.run["graph_from"] = capture.graph_location
    trace.findings = run_checks(trace, checks)
    return Report(trace)


def rank_info() -> dict:
    """``{"rank", "world_size"}`` under torch.distributed (or torchrun's variables), else {}."""
    import os

    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return {"rank": dist.get_rank(), "world_size": dist.get_world_size()}
    except Exception:  # noqa: BLE001 - a broken process group still has the env variables
        pass
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1") and os.environ.get("RANK"):
        return {"rank": int(os.environ["RANK"]), "world_size": int(os.environ["WORLD_SIZE"])}
    return {}


def describe_exception(e: BaseException) -> str:
    """``ValueError: message`` on one line."""
    return "".join(traceback.format_exception_only(type(e), e)).strip()


def graph_of(*tensors: torch.Tensor, params: Optional[dict] = None,
             shapes: bool = True) -> Graph:
    """The autograd graph behind any tensor(s), like torchviz's ``make_dot(y)``.

    ``params`` maps names to tensors (``dict(model.named_parameters())``) so that leaves carry
    names; leaves not in it are marked ``unregistered``. ``shapes=False`` skips the per-node
    shapes, dtypes and saved tensors: about 3x faster on graphs of a million nodes.
    """
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise InputError(f"graph_of expects tensors, got {_describe(t)}")
    table = {}
    storages = set()
    for name, p in (params or {}).items():
        if isinstance(p, torch.Tensor) and id(p) not in table:
            table[id(p)] = (None, name)
            storages.add(storage_key(p)[0])
    if not any(t.grad_fn is not None for t in tensors):
        raise InputError("graph_of: no tensor given has a grad_fn (requires_grad=False, or it is "
                         "a leaf); compute it from tensors that require grad, outside no_grad().")
    return walk_autograd_graph(tensors, params=table, param_storage_keys=storages, shapes=shapes)
