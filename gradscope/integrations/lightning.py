"""``GradscopeCallback`` for PyTorch Lightning (``lightning.Trainer``).

>>> from gradscope.integrations.lightning import GradscopeCallback
>>> trainer = lightning.Trainer(max_steps=100, callbacks=[GradscopeCallback()])
>>> trainer.fit(model, loader)   # report in trainer.default_root_dir/gradscope/

The callback watches the LightningModule and the Trainer's optimizers from ``on_train_start``
(after the sanity check's validation batches) to ``on_train_end``, then writes ``trace.json``,
``report.html`` and ``summary.txt`` and logs the findings' count to every logger of the Trainer
(``gradscope/findings``) and to the ``lightning.pytorch`` log. ``on_exception`` (Lightning
calls it for any error and for Ctrl-C) and ``teardown`` close the session too, so a failed run
leaves no hook behind and still writes what was captured.

This module imports lightning; ``import gradscope`` never imports this module.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

from lightning.pytorch import Callback

from ._run import CallbackRun, ReportAccess, counts, summary_line

log = logging.getLogger("lightning.pytorch.gradscope")  # shown by Lightning's log handler


class GradscopeCallback(ReportAccess, Callback):
    """Watch a ``lightning.Trainer`` fit with gradscope and write its report.

    ``out_dir``: where the report goes (default ``trainer.default_root_dir/gradscope``).
    ``only``, ``disable``, ``find_nonfinite``: as for :func:`gradscope.watch`. After the run,
    ``callback.report`` is the :class:`gradscope.Report` and ``callback.paths`` the files written.
    """

    def __init__(self, out_dir: Optional[str] = None, only: Optional[list] = None,
                 disable: Optional[list] = None, find_nonfinite: bool = False) -> None:
        super().__init__()
        self.out_dir = out_dir
        self._run = CallbackRun({"only": only, "disable": disable,
                                 "find_nonfinite": find_nonfinite})
        self._folder: Optional[str] = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self._run.active:
            self._finish(trainer, None)
        self._folder = self.out_dir or os.path.join(trainer.default_root_dir, "gradscope")
        self._run.start([pl_module], list(trainer.optimizers))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._finish(trainer, None)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._finish(trainer, exception)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # A safety net: Lightning tears down after every fit, whatever happened before.
        self._finish(trainer, None)

    def _finish(self, trainer: Any, error: Optional[BaseException]) -> None:
        report = self._run.finish(self._folder, error)
        if report is None:
            return
        c = counts(report)
        where = self._run.paths[1] if self._run.paths else None  # (its rank-R folder, in DDP)
        (log.warning if c["error"] or c["warning"] else log.info)(summary_line(report, where))
        metrics = {"gradscope/findings": float(c["findings"]),
                   "gradscope/errors": float(c["error"]),
                   "gradscope/warnings": float(c["warning"])}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
