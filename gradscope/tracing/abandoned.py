"""Forwards that ended without their post hooks: a KeyboardInterrupt (Ctrl-C) or SystemExit
raised inside a module's forward.

torch runs a forward hook registered with ``always_call=True`` when the forward raises an
``Exception`` only; a ``BaseException`` that is not one skips every post hook. A program that
catches the Ctrl-C and goes on (a notebook cell, a loop that stops one epoch early, Lightning's
graceful shutdown) would leave the running-module stack as the interrupted forward left it, and
every later forward would look nested in it: not counted as a forward of the model, its mode
never looked at. The outermost forward's call frame is kept while it runs (let go by its post
hook, inside the call); at the model's next call, a backward or a step, a kept frame whose call
has ended was unwound without its post hooks, and what that forward left is dropped. Until then
the frames the Ctrl-C unwound (and their locals) stay alive: one forward's worth, once.
"""
from __future__ import annotations

import os
from types import FrameType
from typing import Optional

from . import modulecall

# torch's Module._call_impl, or a trace's own (modulecall.py): every hook of a module call runs
# under its frame. (torch's told by its name and file only when gradscope came after the
# program replaced it, and its code object could not be taken from nn.Module.)
_TORCH = modulecall.TORCH_CODE
_CALL_CODES = modulecall.CALL_CODES + ((_TORCH,) if _TORCH is not None else ())
_DISABLE_FILE = os.path.join("torch", "_dynamo", "eval_frame.py")


def call_frame(frame: Optional[FrameType]) -> Optional[FrameType]:
    """The ``Module._call_impl`` frame of the module call a hook runs for: ``frame`` (the
    hook's caller) or one of the few above it; a trace's own ``_call_impl`` when torch's runs
    under it (a module with hooks of its own), so that all hooks of one call find one frame.
    None on a torch whose call path differs (no abandoned forward is told then)."""
    for _ in range(8):
        if frame is None:
            return None
        code = frame.f_code
        if code in _CALL_CODES or (_TORCH is None and modulecall.is_torch_call(code)):
            if modulecall.is_torch_call(code):
                # (ours right above, or above our helper and torch.compiler.disable's wrapper)
                above = frame.f_back
                while above is not None and (above.f_code is modulecall.EACH_CODE or
                                             above.f_code.co_filename.endswith(_DISABLE_FILE)):
                    above = above.f_back
                if above is not None and above.f_code in modulecall.CALL_CODES:
                    return above
            return frame
        frame = frame.f_back
    return None


def unwound(frame: FrameType) -> bool:
    """Has the call of ``frame`` ended (returned, or unwound by an exception)? One test, no
    walk of the stack: a frame still running refuses ``clear()``. An ended one is cleared,
    which lets go of its locals (the module call's arguments) at once; the caller drops the
    frame itself, and with it the frames of the callers the Ctrl-C unwound. (Frames are no
    weak-reference targets, and ids are no good: the next call from the same line reuses the
    freed frame's address.)"""
    try:
        frame.clear()
    except RuntimeError:  # "cannot clear an executing frame"
        return False
    return True
