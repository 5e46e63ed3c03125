"""The cyclic garbage collector paused while gradscope builds plain data in bulk.

Recording a run makes many small containers and no reference cycles (a state per parameter, a
node per autograd node, dicts per module and finding). The collector, triggered every few
hundred new containers and walking ever more of them, only slows that down: on a 3000-layer MLP
it was a third of ``gradscope.trace`` (793 ms -> 568 ms without it). Paused, never disabled
for good: the caller's setting comes back on exit, also on an exception.
"""
from __future__ import annotations

import contextlib
import functools
import gc
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def collector_paused_during(fn: Callable) -> Callable:
    """``fn`` with the collector paused for its duration (``gradscope.trace``: one forward and
    backward of the user's model, and everything gradscope records of it)."""
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with collector_paused():
            return fn(*args, **kwargs)
    return call
