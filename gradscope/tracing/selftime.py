"""Opt-in accounting of the time gradscope spends in its own hooks and step code.

Off by default, and then each entry point of ours pays one module-attribute read. The watch
benchmark (``bench/bench_watch.py``) turns it on to show gradscope's own cost per training step
directly: on a shared machine the difference of two step-time medians moves by more than the
few percent it is meant to show.

Entry points are the wrappers every hook of ours already goes through (:func:`..handles.ours`,
:func:`..handles.hook_of_ours`); only the outermost one of nested calls is timed, so nothing
is counted twice. What this cannot see is torch's side of calling a Python hook (a few
hundred nanoseconds each): the benchmark's CPU-time comparison of whole steps includes it.
Not thread-safe by design: the benchmark runs single-threaded loops.
"""
from __future__ import annotations

import time
from typing import Any, Callable

enabled = False
_clock = time.perf_counter_ns  # ~30 ns a read; a thread CPU clock costs ten times that
_depth = 0
_ns = 0
_calls = 0


def reset() -> None:
    """Start counting from zero (and switch counting on)."""
    global enabled, _ns, _calls, _depth
    enabled, _ns, _calls, _depth = True, 0, 0, 0


def stop() -> None:
    global enabled
    enabled = False


def totals() -> tuple:
    """(nanoseconds inside gradscope, timed entries) since :func:`reset`."""
    return _ns, _calls


def call(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """Run ``fn`` and, when it is the outermost entry into gradscope, add its duration."""
    global _depth, _ns, _calls
    if _depth:
        return fn(*args, **kwargs)
    _depth = 1
    t0 = _clock()
    try:
        return fn(*args, **kwargs)
    finally:
        _ns += _clock() - t0
        _calls += 1
        _depth = 0
