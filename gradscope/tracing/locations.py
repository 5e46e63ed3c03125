"""Find the user's own ``file:line`` on the stack, skipping frames of torch, gradscope and the
other installed libraries the user's code calls into.

Two questions, two answers:

- :func:`user_location` — where the *user's* code is: a backward call made by Hugging Face's
  Trainer or Lightning on the user's behalf happened, as far as the user can act on it, at the
  line that called ``trainer.train()``. So frames in any ``site-packages``/``dist-packages``
  folder (accelerate, transformers, lightning, ...) are skipped, as are torch's and
  gradscope's own. The user's project stays visible even when it is installed in editable mode:
  an editable install runs the files from the source tree, not from ``site-packages``.
- :func:`code_location` — which code *did* something (built a layer inside ``forward``): the
  innermost frame outside torch and gradscope, which may be a library's. A check then decides
  whether that code is the user's to fix (a ``CrossEntropyLoss()`` that transformers builds in
  every forward is not).
"""
from __future__ import annotations

import functools
import inspect
import os
import sys
from time import monotonic
from types import FrameType
from typing import Optional

import torch

_SKIP_DIRS = tuple(
    os.path.dirname(os.path.abspath(m.__file__)) + os.sep
    for m in (torch, sys.modules[__name__.split(".")[0]])
) + ("<frozen ", "<string>")
_SKIP_FILES = ("runpy.py", "contextlib.py", "functools.py")
_INSTALLED = (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep)


# Looked up on every recorded event (each backward, step and zero_grad of a watched loop):
# a display path is cached per (working directory, path).
_DISPLAY: dict = {}


@functools.lru_cache(maxsize=4096)
def is_library_file(filename: str) -> bool:
    """True for files of torch, gradscope and the standard library's plumbing (runpy, ...)."""
    return filename.startswith(_SKIP_DIRS) or os.path.basename(filename) in _SKIP_FILES


@functools.lru_cache(maxsize=4096)
def is_installed_file(filename: str) -> bool:
    """True for :func:`is_library_file` files and any file of an installed package (a path with
    a ``site-packages`` or ``dist-packages`` folder): code the user calls but does not edit."""
    return is_library_file(filename) or any(part in filename for part in _INSTALLED)


# Per file name: is it installed code? Asked for every frame of every recorded event; a plain
# dict is several times cheaper than calling the lru_cache of is_installed_file. (Keyed by the
# name, not the code object: code objects of the same source in two files compare equal.)
_INSTALLED_FILE: dict = {}


def _installed(filename: str) -> bool:
    if len(_INSTALLED_FILE) > 50_000:
        _INSTALLED_FILE.clear()
    answer = _INSTALLED_FILE[filename] = is_installed_file(filename)
    return answer


def user_frame(start: Optional[FrameType] = None) -> Optional[FrameType]:
    """The innermost frame that belongs to the user's code (not torch, gradscope or another
    installed library), or None."""
    frame = start if start is not None else sys._getframe(1)
    known = _INSTALLED_FILE.get
    while frame is not None:
        filename = frame.f_code.co_filename
        installed = known(filename)
        if installed is None:
            installed = _installed(filename)
        if not installed:
            return frame
        frame = frame.f_back
    return None


def user_site(start: Optional[FrameType] = None) -> Optional[tuple]:
    """``(code, line)`` of the innermost user frame: where :func:`user_location` points,
    without formatting a path (idle steps compare it at every call)."""
    frame = user_frame(start if start is not None else sys._getframe(1))
    return None if frame is None else (frame.f_code, frame.f_lineno)


def user_location(start: Optional[FrameType] = None) -> Optional[str]:
    """``path:line`` of the innermost user frame (path relative to the cwd when inside it)."""
    frame = user_frame(start if start is not None else sys._getframe(1))
    if frame is None:
        return None
    return f"{display_path(frame.f_code.co_filename)}:{frame.f_lineno}"


def code_location(start: Optional[FrameType] = None) -> Optional[str]:
    """``path:line`` of the innermost frame outside torch and gradscope, library or not."""
    frame = start if start is not None else sys._getframe(1)
    while frame is not None and is_library_file(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return None
    return f"{display_path(frame.f_code.co_filename)}:{frame.f_lineno}"


# os.getcwd() is a system call (about 5 us right after torch work on a busy core, five times a
# step in a watched loop): it is asked again when CWD_SECONDS have passed since the last time.
# A path shown within that time after an os.chdir() is relative to the directory before it
# (each capture asks afresh when it opens and when it closes).
CWD_SECONDS = 0.25
_CWD: list = [None, -1.0]


def refresh_cwd() -> None:
    """Ask for the working directory at the next display path (a session starts or ends)."""
    _CWD[1] = -1.0


def _cwd() -> str:
    now = monotonic()
    if now - _CWD[1] > CWD_SECONDS:
        _CWD[0], _CWD[1] = os.getcwd(), now
    return _CWD[0]


def display_path(path: str) -> str:
    try:
        key = (_cwd(), path)  # relpath alone takes 3.6 us
    except OSError:  # the working directory was removed
        return path
    shown = _DISPLAY.get(key)
    if shown is None:
        if len(_DISPLAY) > 10_000:
            _DISPLAY.clear()
        try:  # relative to the directory the key names (the cached one), not a later one
            rel = os.path.relpath(path, key[0])
        except (ValueError, OSError):
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
    reader, a debugger say, refills it from the real locals first). But that dict is also what
    the user's own ``locals()`` returned (``hparams = locals()``): when anyone besides the frame
    holds it, it is theirs and is left as it is (refreshed, as their next ``locals()`` would).
    Module frames share their dict with the globals and are never touched; from 3.13 on
    ``f_locals`` is a live view.
    """
    live = frame.f_locals
    copy = dict(live)
    if sys.version_info < (3, 13) and frame.f_code.co_flags & inspect.CO_OPTIMIZED \
            and isinstance(live, dict) and live is not frame.f_globals \
            and sys.getrefcount(live) <= _FRAME_ONLY:
        live.clear()
    return copy


def _frame_only_refs() -> int:
    """References to a frame's f_locals dict when only the frame holds it, as counted inside
    frame_locals (the frame's slot, the local name, getrefcount's argument)."""
    def probe() -> int:
        frame = sys._getframe()
        live = frame.f_locals
        return sys.getrefcount(live)
    return probe()


_FRAME_ONLY = _frame_only_refs()
