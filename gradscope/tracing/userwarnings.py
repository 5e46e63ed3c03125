"""Warnings from the user's torch calls keep the user's ``file:line`` under the op watch.

The op watch (``opwatch.py``, through the wrappers of ``oppatches.py``) calls each torch
function it watches itself, so a warning that torch raises about the user's call ("Implicit dimension choice for softmax",
"Using a target size ... different to the input size") would name the op watch's line as its
location, and Python's once-per-location rule would then merge warnings from different user
lines into one. While the op watch runs, :class:`WarningRelocator` lets warnings located there
through (an ``always`` filter for that one module), finds the frame that made the call, and
issues the warning again from there, under the user's own filters and registry: the same text,
location and number of repeats as without gradscope, and ``-W error`` still raises at the call.
"""
from __future__ import annotations

import re
import sys
import warnings
from types import FrameType
from typing import Any, Optional

_OVERRIDES = "overrides.py"


class WarningRelocator:
    """Installed for the op watch's lifetime; ``site`` is the module whose frame calls torch."""

    def __init__(self, site_module: str, site_file: str) -> None:
        self.site_file = site_file
        self._filter = ("always", None, Warning, re.compile(re.escape(site_module) + r"\Z"), 0)
        self._original: Any = None
        self._bound: Any = None
        self._active = False

    def install(self) -> None:
        self._original = warnings._showwarnmsg
        self._bound = self._show  # one bound method, so that ``is`` can find it again
        warnings._showwarnmsg = self._bound
        warnings.filters.insert(0, self._filter)
        warnings._filters_mutated()
        self._active = True

    def remove(self) -> None:
        self._active = False
        if warnings._showwarnmsg is self._bound:
            original = self._original
            # Relocators closed out of order were left as pass-throughs: drop them now too.
            while isinstance(getattr(original, "__self__", None), WarningRelocator) \
                    and not original.__self__._active:
                original = original.__self__._original
            warnings._showwarnmsg = original
        # (If something wrapped ours meanwhile, ours stays in its chain as a pass-through.)
        try:
            warnings.filters.remove(self._filter)
        except ValueError:  # the program reset the filters itself
            pass
        warnings._filters_mutated()

    def _show(self, msg: Any) -> None:
        if self._active and msg.filename == self.site_file:
            frame = self._caller(msg.lineno)
            if frame is not None:
                g = frame.f_globals
                # Python sets this registry on the caller's module itself when it warns.
                registry = g.setdefault("__warningregistry__", {})
                warnings.warn_explicit(msg.message, msg.category, frame.f_code.co_filename,
                                       frame.f_lineno, module=g.get("__name__"),
                                       registry=registry, module_globals=g, source=msg.source)
                return
        self._original(msg)

    def _caller(self, lineno: int) -> Optional[FrameType]:
        """The frame that called the torch function the op watch was running."""
        frame: Optional[FrameType] = sys._getframe(2)
        while frame is not None and not (frame.f_code.co_filename == self.site_file
                                         and frame.f_lineno == lineno):
            frame = frame.f_back
        if frame is None:
            return None
        frame = frame.f_back
        while frame is not None and frame.f_code.co_filename == self.site_file:
            frame = frame.f_back  # our own helpers around the call: never the warning's site
        if frame is not None and frame.f_code.co_name == "handle_torch_function" \
                and frame.f_code.co_filename.endswith(_OVERRIDES):
            # A Python-level torch function (F.softmax, F.mse_loss) handed its call to the
            # mode through handle_torch_function: skip that and the function's outer frame.
            frame = frame.f_back
            frame = frame.f_back if frame is not None else None
        return frame


# torch warns on every call of a ``torch.compile(module)`` wrapper while any global module hook
# exists, that the hooks fire once more for the wrapper. gradscope's global hooks know that
# wrapper and count it once, so the warning is about gradscope, not about the user's program.
_COMPILE_HOOK_WARNING = re.compile(
    re.escape("Using `torch.compile(module)` when there are global hooks"), re.I)


class CompileHookWarningFilter:
    """Hides that one warning while gradscope's hooks are the only global module hooks; a
    program that has global hooks of its own keeps seeing it, as it would without gradscope."""

    def __init__(self) -> None:
        self._filter = ("ignore", _COMPILE_HOOK_WARNING, UserWarning, None, 0)
        self._installed = False

    def install(self) -> None:
        import torch.nn.modules.module as module_mod
        has_hooks = getattr(module_mod, "_has_any_global_hook", None)
        if has_hooks is None or has_hooks():
            return
        warnings.filters.insert(0, self._filter)
        warnings._filters_mutated()
        self._installed = True

    def remove(self) -> None:
        if not self._installed:
            return
        self._installed = False
        try:
            warnings.filters.remove(self._filter)
        except ValueError:
            pass
        warnings._filters_mutated()
