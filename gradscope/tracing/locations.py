"""Find the user's own ``file:line`` on the stack, skipping frames inside torch and gradscope."""
from __future__ import annotations

import inspect
import os
import sys
from types import FrameType
from typing import Optional

import torch

_SKIP_DIRS = tuple(
    os.path.dirname(os.path.abspath(m.__file__)) + os.sep
    for m in (torch, sys.modules[__name__.split(".")[0]])
) + ("<frozen ", "<string>")
_SKIP_FILES = ("runpy.py", "contextlib.py", "functools.py")


# Looked up on every recorded event (each backward, step and zero_grad of a watched loop):
# both answers are cached, per file name and per (working directory, path).
_LIBRARY: dict = {}
_DISPLAY: dict = {}


def is_library_file(filename: str) -> bool:
    known = _LIBRARY.get(filename)
    if known is None:
        if len(_LIBRARY) > 10_000:
            _LIBRARY.clear()
        known = _LIBRARY[filename] = (filename.startswith(_SKIP_DIRS)
                                      or os.path.basename(filename) in _SKIP_FILES)
    return known


def user_frame(start: Optional[FrameType] = None) -> Optional[FrameType]:
    """The innermost frame that belongs to the user's code, or None."""
    frame = start if start is not None else sys._getframe(1)
    while frame is not None:
        if not is_library_file(frame.f_code.co_filename):
            return frame
        frame = frame.f_back
    return None


def user_location(start: Optional[FrameType] = None) -> Optional[str]:
    """``path:line`` of the innermost user frame (path relative to the cwd when inside it)."""
    frame = user_frame(start if start is not None else sys._getframe(1))
    if frame is None:
        return None
    return f"{display_path(frame.f_code.co_filename)}:{frame.f_lineno}"


def display_path(path: str) -> str:
    try:
        key = (os.getcwd(), path)  # a quarter of a microsecond; relpath alone takes 3.6
    except OSError:  # the working directory was removed
        return path
    shown = _DISPLAY.get(key)
    if shown is None:
        if len(_DISPLAY) > 10_000:
            _DISPLAY.clear()
        try:
            rel = os.path.relpath(path)
        except ValueError:
            rel = ".."
        shown = _DISPLAY[key] = path if rel.startswith("..") else rel
    return shown


def user_variable_name(obj: object) -> Optional[str]:
    """The user's variable holding ``obj`` in the innermost user frame (``model``,
    ``logit_scale``, ``self.encoder``), else None."""
    frame = user_frame()
    if frame is None:
        return None
    local_vars = frame_locals(frame)
    for scope in (local_vars, frame.f_globals):
        for var, value in list(scope.items()):
            if value is obj and not var.startswith("_"):
                return var
    owner = local_vars.get("self")
    if owner is not None and not isinstance(owner, torch.nn.Module):  # a trainer object
        for attr, value in list(getattr(owner, "__dict__", {}).items()):
            if value is obj:
                return f"self.{attr}"
    return None


def frame_locals(frame: FrameType) -> dict:
    """A copy of a frame's local variables that leaves no reference behind.

    Before Python 3.13, reading ``frame.f_locals`` of a function frame fills a dict cached on
    the frame, which keeps every local alive until the frame ends, even after the user's own
    ``del``: a leak we would cause. So the cache is emptied again after the copy (the next
    reader, a debugger say, refills it from the real locals first). Module frames share their
    dict with the globals and are never touched; from 3.13 on ``f_locals`` is a live view.
    """
    live = frame.f_locals
    copy = dict(live)
    if sys.version_info < (3, 13) and frame.f_code.co_flags & inspect.CO_OPTIMIZED \
            and isinstance(live, dict) and live is not frame.f_globals:
        live.clear()
    return copy
