"""Forwards that ended without their post hooks: a KeyboardInterrupt (Ctrl-C) or SystemExit
raised inside a module's forward.

torch runs a forward hook registered with ``always_call=True`` when the forward raises an
``Exception`` only; a ``BaseException`` that is not one skips every post hook. A program that
catches the Ctrl-C and goes on (a notebook cell, a loop that stops one epoch early, Lightning's
graceful shutdown) would leave the running-module stack as the interrupted forward left it, and
every later forward would look nested in it: not counted as a forward of the model, its mode
never looked at. The outermost forward's call frame is kept; a forward whose frame is no longer
on the thread's stack has been unwound, and what it left is dropped.
"""
from __future__ import annotations

import sys
from types import FrameType
from typing import Optional

from torch import nn

# torch's Module._call_impl: every hook of a module call runs under its frame
_CALL_CODES = tuple(f.__code__ for f in (getattr(nn.Module, "_call_impl", None),)
                    if hasattr(f, "__code__"))


def call_frame(frame: Optional[FrameType]) -> Optional[FrameType]:
    """The ``Module._call_impl`` frame of the module call a hook runs for: ``frame`` (the
    hook's caller) or one of the few above it. None on a torch whose call path differs (no
    abandoned forward is told then)."""
    for _ in range(8):
        if frame is None or frame.f_code in _CALL_CODES:
            return frame
        frame = frame.f_back
    return None


def running(frame: FrameType) -> bool:
    """Is ``frame`` on the calling thread's stack (its call neither returned nor unwound)?"""
    f = sys._getframe(1)
    while f is not None:
        if f is frame:
            return True
        f = f.f_back
    return False
