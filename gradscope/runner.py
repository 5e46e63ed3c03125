"""Run user code under a Capture and always come back with a report.

``trace_script`` runs ``train.py`` as ``__main__``; ``trace_target`` builds ``model.py:NAME`` and
runs one forward/backward. Both return a :class:`RunOutcome`: the report (everything captured,
also when the program failed) and the exception the user's program raised, if any. Loading
problems (missing file, syntax error, unknown NAME, bad --input) raise ``LoadError`` or
``InputError`` before anything runs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from .api import build_report, describe_exception, report_from, run_model
from .checks import select_checks
from .errors import InputError, LoadError
from .report import Report
from .tracing.capture import Capture
from .tracing.modules import unwrap
from .usercode import (build_target, check_device, load_module, make_inputs, parse_input_spec, read_source,
                       resolve_name, run_script, split_target)


@dataclasses.dataclass
class RunOutcome:
    report: Report
    error: Optional[BaseException] = None   # what the user's program raised (SystemExit too)


def _finish(capture: Capture, run: dict, checks: list, error: Optional[BaseException]) -> RunOutcome:
    if error is None or (isinstance(error, SystemExit) and error.code in (None, 0)):
        run["status"] = "ok"
        error = None
    elif isinstance(error, KeyboardInterrupt):
        run.update(status="interrupted", error="KeyboardInterrupt")
    elif isinstance(error, SystemExit):
        run.update(status="exited", error=f"SystemExit({error.code!r})")
    else:
        run.update(status="error", error=describe_exception(error))
        capture.note_failure(error)
    return RunOutcome(build_report(capture, run, checks), error)


def trace_script(path: str, args: tuple = (), only: Optional[list] = None,
                 disable: Optional[list] = None, find_nonfinite: bool = False,
                 flush_to: Optional[str] = None) -> RunOutcome:
    """Run a training script unchanged, watching every module, backward call and optimizer."""
    checks = select_checks(only, disable)
    run = {"mode": "script", "target": path, "args": list(args)}
    _, code = read_source(path)  # a missing file or syntax error is a LoadError, before running
    capture = Capture(mode="script", intercept_backward=True, find_nonfinite=find_nonfinite)
    if flush_to is not None:
        # A distributed rank: write what we have every few seconds, so that a rank killed
        # because another one crashed still leaves its record.
        def flush(cap: Capture) -> None:
            report_from(cap, cap.interim_snapshot(), {**run, "status": "running"}, checks)\
                .save(flush_to, format="json")
        capture.flush = flush
    error: Optional[BaseException] = None
    with capture:
        try:
            run_script(path, tuple(args), code)
        except BaseException as e:  # noqa: BLE001 - the user's exception is the result
            error = e
    return _finish(capture, run, checks, error)


def trace_target(target: str, inputs: tuple = (), device: Optional[str] = None,
                 only: Optional[list] = None, disable: Optional[list] = None,
                 loss_fn: Any = None) -> RunOutcome:
    """``model.py:NAME``: build the model, make inputs, one forward + backward."""
    path, name = split_target(target)
    assert name is not None, "trace_target needs FILE.py:NAME"
    checks = select_checks(only, disable)
    specs = [parse_input_spec(s) for s in inputs]
    if device:
        check_device(device)
    module = load_module(path)
    obj = resolve_name(module, name, path)
    run = {"mode": "model", "target": target, "inputs": list(inputs), "device": device}
    capture = Capture(mode="model")
    error: Optional[BaseException] = None
    started = False  # the traced forward began (a factory may run forwards of its own)
    with capture:
        try:
            built = build_target(obj, name, path)
            model = built.model.to(device) if device else built.model
            args, kwargs = built.args, built.kwargs
            if specs:
                args, kwargs = make_inputs(specs, model, device), {}
            elif not args and not kwargs:
                raise InputError(
                    f"{target}: no example inputs. Pass --input with the input shape, e.g. "
                    f"'--input 8,3,32,32' (floats) or '--input 4,128:long' (token ids), one "
                    f"--input per forward() argument; or let a factory return (model, inputs).")
            elif device:
                args = tuple(a.to(device) if hasattr(a, "to") else a for a in args)
                kwargs = {k: v.to(device) if hasattr(v, "to") else v for k, v in kwargs.items()}
            capture.add_model(model, type(unwrap(model)).__name__)
            started = True
            run_model(capture, model, args, kwargs, loss_fn)
        except BaseException as e:  # noqa: BLE001 - reported with the partial report
            error = e
    if isinstance(error, (InputError, LoadError)) and not started:
        # Our own usage error (a constructor that needs arguments, no example inputs) before
        # the model ran: nothing was captured, so no report; one clear error, exit 2.
        raise error
    return _finish(capture, run, checks, error)
