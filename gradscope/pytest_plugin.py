"""pytest plugin: gate model code in your own CI with gradscope.

Installed with gradscope (entry point ``pytest11``), so every test can ask for the ``gradscope``
fixture::

    def test_classifier_trains(gradscope):
        model = Classifier()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        gradscope.assert_trains(model, (x, y), nn.CrossEntropyLoss(), optimizer)

``assert_trains`` runs a few real training steps under :func:`gradscope.watch` and fails the
test with the findings' text when one is at or above the threshold: ``fail_on=`` in the call,
else ``pytest --gradscope-fail-on=error|warning|info|never``, else the ini option
``gradscope_fail_on``, else ``warning`` (a parameter that never gets a gradient fails a test).

Loading the plugin imports neither torch nor the rest of gradscope: pytest loads it in every
session of every project where gradscope is installed.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import pytest

THRESHOLDS = ("error", "warning", "info", "never")
DEFAULT_FAIL_ON = "warning"


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("gradscope")
    group.addoption("--gradscope-fail-on", choices=THRESHOLDS, default=None,
                    help="gradscope.assert_trains / gradscope.check fail a test on a finding "
                         f"at or above this severity (default: {DEFAULT_FAIL_ON}).")
    parser.addini("gradscope_fail_on", default=DEFAULT_FAIL_ON,
                  help="default for --gradscope-fail-on")


class GradscopeFixture:
    """What the ``gradscope`` fixture gives a test: ``assert_trains``, ``check``, ``watch``."""

    def __init__(self, fail_on: str) -> None:
        self.fail_on = fail_on

    def assert_trains(self, model: Any, batch: Any, loss_fn: Optional[Callable] = None,
                      optimizer: Any = None, steps: int = 3, fail_on: Optional[str] = None,
                      only: Optional[list] = None, disable: Optional[list] = None) -> Any:
        """Run ``steps`` training steps on ``batch``; fail on findings; return the Report.

        The model really trains (its parameters change): give it a fresh one. ``batch`` and
        ``loss_fn`` make the loss of one step:

        - ``(inputs, target)`` with a ``loss_fn``: ``loss_fn(model(inputs), target)``
          (``inputs`` a tuple: its items are the arguments);
        - a dict: ``loss_fn(model(**batch))``;
        - a tensor: ``loss_fn(model(batch))``; another tuple: ``loss_fn(model(*batch))``;
        - ``loss_fn=None``: the model's output is the loss (a scalar, or a ``"loss"`` entry of
          a dict output as Hugging Face models return with ``labels``).
        """
        if optimizer is None:
            pytest.fail("gradscope.assert_trains needs the optimizer that trains the model, e.g. "
                        "torch.optim.SGD(model.parameters(), lr=0.1)", pytrace=False)
        from .session import watch

        with watch(model, optimizer, only=only, disable=disable) as scope:
            for _ in range(steps):
                optimizer.zero_grad()
                _step_loss(model, batch, loss_fn).backward()
                optimizer.step()
        return self.check(scope.report(), fail_on, what=f"{steps} training step(s) of "
                                                        f"{type(model).__name__}")

    def check(self, report: Any, fail_on: Optional[str] = None, what: str = "the run") -> Any:
        """Fail the test when ``report`` has a finding at or above the threshold."""
        threshold = fail_on or self.fail_on
        if threshold not in THRESHOLDS:
            raise ValueError(f"fail_on={threshold!r}; use one of {', '.join(THRESHOLDS)}")
        bad = report.findings_at_or_above(threshold)
        if bad:
            from .render.text import findings_lines

            pytest.fail(f"gradscope found {len(bad)} finding(s) at or above {threshold!r} in "
                        f"{what}:\n" + "\n".join(findings_lines(bad)), pytrace=False)
        return report

    def watch(self, *objects: Any, **options: Any) -> Any:
        """:func:`gradscope.watch`, for a test's own training loop; then ``check(scope.report())``."""
        from .session import watch

        return watch(*objects, **options)


def _step_loss(model: Any, batch: Any, loss_fn: Optional[Callable]) -> Any:
    from .api import loss_of

    if isinstance(batch, dict):
        output = model(**batch)
        return loss_of(output, loss_fn)
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and loss_fn is not None:
        inputs, target = batch
        output = model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
        return loss_of(output, lambda out: loss_fn(out, target))
    output = model(*batch) if isinstance(batch, (tuple, list)) else model(batch)
    return loss_of(output, loss_fn)


@pytest.fixture
def gradscope(request: Any) -> GradscopeFixture:
    """gradscope for this test: ``gradscope.assert_trains(model, batch, loss_fn, optimizer)``."""
    config = request.config
    fail_on = config.getoption("gradscope_fail_on") or config.getini("gradscope_fail_on")
    if fail_on not in THRESHOLDS:
        raise pytest.UsageError(f"ini option gradscope_fail_on = {fail_on!r}; use one of "
                                f"{', '.join(THRESHOLDS)}")
    return GradscopeFixture(fail_on)
