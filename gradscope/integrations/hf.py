"""``GradscopeCallback`` for Hugging Face's ``transformers.Trainer``.

>>> from gradscope.integrations.hf import GradscopeCallback
>>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[GradscopeCallback()])
>>> trainer.train()   # report in args.output_dir/gradscope/: trace.json, report.html, summary.txt

The callback watches the Trainer's model and optimizer from ``on_train_begin`` to
``on_train_end``, like ``with gradscope.watch(model, optimizer):`` around the loop, then writes the
report and logs the findings' count through the Trainer (``trainer.log``: ``log_history``, the
``report_to`` integrations) and its logger (``transformers.trainer``).

The Trainer has no callback for "training raised". So that a crash or Ctrl-C inside
``trainer.train()`` still removes every hook and writes what was captured, the callback wraps
that Trainer's ``train`` method (on the instance, a pass-through while no run is watched) when
the Trainer is built with it in ``callbacks=[...]``. Added later with ``trainer.add_callback``,
it can only do so from the next ``train()`` call on, and logs a warning saying so.

This module imports transformers; ``import gradscope`` never imports this module.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Any, Optional

from transformers import TrainerCallback
from transformers.utils import logging as hf_logging

from ..tracing.locations import frame_locals
from ._run import CallbackRun, ReportAccess, counts, summary_line

logger = hf_logging.get_logger("transformers.trainer")  # the Trainer's own logger
_WRAPPED = "_gradscope_wrapped_train"


class GradscopeCallback(ReportAccess, TrainerCallback):
    """Watch a ``transformers.Trainer`` run with gradscope and write its report.

    ``out_dir``: where the report goes (default ``args.output_dir/gradscope``). ``only``,
    ``disable``, ``find_nonfinite``: as for :func:`gradscope.watch`. After the run,
    ``callback.report`` is the :class:`gradscope.Report` and ``callback.paths`` the files written.
    """

    def __init__(self, out_dir: Optional[str] = None, only: Optional[list] = None,
                 disable: Optional[list] = None, find_nonfinite: bool = False) -> None:
        self.out_dir = out_dir
        self._run = CallbackRun({"only": only, "disable": disable,
                                 "find_nonfinite": find_nonfinite})
        self._trainer: Any = None
        self._folder: Optional[str] = None

    # -- Trainer events ------------------------------------------------------------------------
    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._attach(_calling_trainer(self))

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if self._trainer is None:
            trainer = _calling_trainer(self)
            self._attach(trainer)
            if trainer is not None:
                logger.warning(
                    "gradscope: GradscopeCallback was added after the Trainer was built "
                    "(trainer.add_callback), so if this train() call raises, gradscope's hooks "
                    "stay until this Trainer's next train() call. Pass it as Trainer(callbacks="
                    "[GradscopeCallback()]) to be safe from the first call.")
        if self._run.active:  # a retry (auto_find_batch_size) restarts the loop
            self._run.finish(self._folder)
        self._folder = self.out_dir or os.path.join(args.output_dir or ".", "gradscope")
        self._run.start([model], [optimizer])

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._finish(None)

    # -- helpers -------------------------------------------------------------------------------
    def _finish(self, error: Optional[BaseException]) -> None:
        report = self._run.finish(self._folder, error)
        if report is None:
            return
        where = self._run.paths[1] if self._run.paths else None  # (its rank-R folder, in DDP)
        c = counts(report)
        text = summary_line(report, where)
        (logger.warning if c["error"] or c["warning"] else logger.info)(text)
        if self._trainer is not None and error is None:
            self._trainer.log({"gradscope/findings": float(c["findings"]),
                               "gradscope/errors": float(c["error"]),
                               "gradscope/warnings": float(c["warning"])})

    def _attach(self, trainer: Any) -> None:
        """Wrap ``trainer.train`` once, so that an exception out of it closes our session."""
        if trainer is None or self._trainer is trainer:
            return
        self._trainer = trainer
        if getattr(trainer, _WRAPPED, None) is not None:
            return
        original = trainer.train

        @functools.wraps(original)
        def train(*args: Any, **kwargs: Any) -> Any:
            try:
                return original(*args, **kwargs)
            except BaseException as e:
                for cb in trainer.callback_handler.callbacks:
                    if isinstance(cb, GradscopeCallback) and cb._run.active:
                        cb._finish(e)
                raise
        trainer.train = train
        setattr(trainer, _WRAPPED, original)


def _calling_trainer(callback: GradscopeCallback) -> Any:
    """The Trainer whose callback handler is calling ``callback`` now, found on the stack (the
    Trainer passes no reference to itself to its callbacks)."""
    frame = sys._getframe(2)
    while frame is not None:
        owner = frame_locals(frame).get("self") if frame.f_code.co_name != "<module>" else None
        handler = getattr(owner, "callback_handler", None)
        if handler is not None and any(cb is callback for cb in getattr(handler, "callbacks", [])):
            return owner
        frame = frame.f_back
    return None
