"""One report from the per-rank reports of a distributed run.

Each rank records its own trace (tagged with ``run.rank`` and ``run.world_size``) and writes it;
``merge_reports`` keeps rank 0's graph and tables, lists every rank's status and counts in
``trace.ranks``, carries over the findings of other ranks (tagged with the ranks that had them),
and runs the checks again, ``rank-divergence`` included, which compares the ranks.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Iterable, Optional

from .checks import run_checks, select_checks
from .report import Report
from .tracedata import Trace


def rank_files(paths: Iterable[str]) -> list:
    """Expand folders (``report/``: its ``rank-*/trace.json`` or ``*.json``) and globs."""
    files: list = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(path, "rank-*", "trace.json"))) or \
                sorted(p for p in glob.glob(os.path.join(path, "*.json"))
                       if os.path.basename(p) != "trace.json")
            files.extend(found)
        else:
            files.extend(sorted(glob.glob(path)) or [path])
    return files


def merge_reports(reports: list, only: Optional[list] = None,
                  disable: Optional[list] = None, expected_ranks: Optional[int] = None) -> Report:
    """Merge per-rank reports (any order) into one."""
    if not reports:
        raise ValueError("no per-rank reports to merge")
    traces = sorted((r.trace for r in reports), key=lambda t: t.run.get("rank", 0))
    base = traces[0]
    ranks = [_rank_summary(t) for t in traces]
    failed = [r for r in ranks if r["status"] not in ("ok", None)]
    world = max([t.run.get("world_size") or len(traces) for t in traces] + [expected_ranks or 0])
    notes = list(base.notes)
    missing = sorted(set(range(world)) - {r["rank"] for r in ranks})
    if missing:
        notes.append(f"No report from rank(s) {', '.join(map(str, missing))} of {world}: they "
                     "were killed before writing one.")
    for r in failed:
        notes.append(f"Rank {r['rank']} did not finish: {r['status']}"
                     + (f" ({r['error']})" if r.get("error") else "") + ".")
    run = dict(base.run)
    run.update(world_size=world, ranks_reported=[r["rank"] for r in ranks],
               failed_ranks=[r["rank"] for r in failed], missing_ranks=missing)
    if failed:
        run["status"] = failed[0]["status"]
        run["error"] = f"rank {failed[0]['rank']}: {failed[0].get('error') or failed[0]['status']}"
    # Everything else is rank 0's: every record field, so the checks run again on the same
    # data (device copies, cuts, kept graphs, ...), not only on the ones listed here once.
    merged = dataclasses.replace(base, run=run, notes=notes, ranks=ranks, findings=[])
    findings = run_checks(merged, select_checks(only, disable))
    seen = {(f.check, f.module) for f in findings}
    for t in traces[1:]:
        for f in t.findings:
            key = (f.check, f.module)
            if key not in seen:
                seen.add(key)
                f.data = {**f.data, "rank": t.run.get("rank")}
                findings.append(f)
    merged.findings = findings
    return Report(merged)


def _rank_summary(t: Trace) -> dict:
    return {"rank": t.run.get("rank", 0), "status": t.run.get("status", "ok"),
            "error": t.run.get("error"), "backward_calls": t.backward_calls,
            "optimizer_steps": t.optimizer_steps,
            "norm_steps": t.gradients.get("norm_steps", []),
            "grad_norms": t.gradients.get("grad_norms", {})}
