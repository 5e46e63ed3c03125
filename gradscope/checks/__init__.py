"""Checks: small pure functions over a Trace, one bug per module, each with a stable id."""
from .registry import Check, all_checks, run_checks, select_checks

__all__ = ["Check", "all_checks", "run_checks", "select_checks"]
