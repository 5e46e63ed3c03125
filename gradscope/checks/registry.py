"""The list of checks. Adding a check: one new module in this package and one line below."""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Iterable, Optional

from ..errors import InputError
from ..findings import Finding, sort_findings

# One module per check; each defines CHECK = Check(...).
CHECK_MODULES = (
    "layer_in_forward",
    "unregistered_parameter",
    "plain_container",
    "unregistered_tensor",
    "attribute_keeps_graph",
    "graph_kept_alive",
    "unused_parameter",
    "graph_cut",
    "param_not_in_optimizer",
    "tied_weights",
    "missing_zero_grad",
    "zero_grad_before_step",
    "dead_training",
    "grad_accumulation",
    "clip_grad_order",
    "scheduler_before_step",
    "optimizer_recreated",
    "train_mode_eval",
    "eval_mode_train",
    "nonfinite_grad",
    "nonfinite_loss",
    "vanishing_grad",
    "exploding_grad",
    "rank_divergence",
    "double_softmax",
    "softmax_batch_dim",
    "dropout_ignores_eval",
    "loss_broadcast",
    "builtin_sum",
    "device_copy",
    "device_mismatch",
    "inplace_modified",
    "bias_before_norm",
    "batchnorm_small_batch",
    "forward_called_directly",
)


@dataclasses.dataclass(frozen=True)
class Check:
    """``id`` is public and stable; ``run`` is a pure function of a Trace."""

    id: str
    severity: str          # the most severe finding the check can give
    summary: str
    run: Callable


def all_checks() -> list:
    """Every registered check, in registry order."""
    return [importlib.import_module(f"{__package__}.{name}").CHECK for name in CHECK_MODULES]


def select_checks(only: Optional[Iterable[str]] = None,
                  disable: Optional[Iterable[str]] = None) -> list:
    """The checks to run; unknown ids raise an InputError that lists the known ones."""
    checks = all_checks()
    known = {c.id for c in checks}
    for option, ids in (("--only", only), ("--disable", disable)):
        unknown = sorted(set(ids or ()) - known)
        if unknown:
            raise InputError(
                f"{option}: unknown check id {', '.join(map(repr, unknown))}. Known checks: "
                f"{', '.join(sorted(known)) or '(none)'}; 'gradscope checks' lists them.")
    if only:
        checks = [c for c in checks if c.id in set(only)]
    if disable:
        checks = [c for c in checks if c.id not in set(disable)]
    return checks


def run_checks(trace, checks: Optional[list] = None) -> list:
    """Run ``checks`` (default: all) over a Trace; findings sorted most severe first."""
    findings: list = []
    for check in checks if checks is not None else all_checks():
        found = check.run(trace)
        for f in found:
            if not isinstance(f, Finding):
                raise TypeError(f"check {check.id} returned {type(f).__name__}, not a Finding")
        findings.extend(found)
    return sort_findings(findings)
