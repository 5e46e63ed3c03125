"""The terminal summary: what ran, the graph's size, the modules, the findings."""
from __future__ import annotations

import textwrap

from ..findings import severity_rank
from ..tracedata import Trace
from .view import human_bytes, human_count, saved_per_module

MAX_MODULE_ROWS = 25


def _table(rows: list, headers: list) -> list:
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*(str(c) for c in r)) for r in rows]
    return ["  " + line.rstrip() for line in lines]


def _module_rows(trace: Trace) -> list:
    ops: dict = {}
    for n in trace.graph.nodes:
        if n.model is None or n.leaf is not None:
            continue
        key = (n.model, n.module)
        ops[key] = ops.get(key, 0) + 1
    saved = saved_per_module(trace)
    rows = []
    for m in trace.modules:
        if not m["calls"]:
            continue
        key = (m["model"], m["name"])
        name = m["model"] + ("." + m["name"] if m["name"] else "")
        params = m["parameters"]
        own, total = saved.get(key, (0, 0))
        rows.append([name, m["type"] + ("" if m["registered"] else " (unregistered)"), m["calls"],
                     m["output"] or "", "-" if params is None else human_count(params),
                     ops.get(key, 0), human_bytes(own) if own else "",
                     human_bytes(total) if total else ""])
    return rows


MAX_STEP_ROWS = 8


def _accumulation_table(trace: Trace) -> list:
    """Per optimizer step: backward calls since the last step, calls summed into .grad."""
    steps = trace.accumulation
    if not steps:
        return []
    rows = []
    for s in steps[:MAX_STEP_ROWS]:
        summed = "/".join(s["summed"])
        carried = f"{len(s['carried'])} params kept old gradients" if s["carried"] else "reset"
        rows.append([s["step"], s["backward_calls"], summed, carried, s["location"] or ""])
    lines = ["", "gradient accumulation per optimizer step"]
    lines += _table(rows, ["step", "backward calls", "summed in .grad", "since last step",
                           "at"])
    if len(steps) > MAX_STEP_ROWS:
        lines.append(f"  ... {len(steps) - MAX_STEP_ROWS} more steps in the JSON report")
    return lines


def _model_lines(models: list) -> list:
    """One line per model; weightless ones of one type (``nn.CrossEntropyLoss()(out, y)``, a
    new object every step) share a line."""
    weightless: dict = {}
    for m in models:
        if not m.get("parameters"):
            weightless.setdefault(m["type"], []).append(m["label"])
    lines = []
    for m in models:
        group = weightless.get(m["type"], []) if not m.get("parameters") else []
        if len(group) > 1:
            if m["label"] == group[0]:
                lines.append(f"  models {group[0]} ... {group[-1]}: {len(group)} {m['type']} "
                             "objects without parameters")
            continue
        lines.append(f"  model {m['label']}: {m['type']}, {human_count(m['parameters'])} parameters")
    return lines


def findings_lines(findings: list) -> list:
    """``findings (1 error, 2 info)`` and each finding: severity, check, where, message, fix."""
    if not findings:
        return ["findings: none"]
    counts: dict = {}
    for f in findings:
        counts[f.severity] = counts.get(f.severity, 0) + 1
    summary = ", ".join(f"{counts[k]} {k}" for k in sorted(counts, key=severity_rank,
                                                           reverse=True))
    lines = [f"findings ({summary})"]
    for f in findings:
        where = " ".join(x for x in (f.module, f.location and f"at {f.location}") if x)
        lines.append(f"  {f.severity.upper():<7} {f.check}" + (f"  {where}" if where else ""))
        for part in (f.message, f.hint and f"fix: {f.hint}"):
            if part:
                lines += textwrap.wrap(part, 96, initial_indent="          ",
                                       subsequent_indent="          ")
    return lines


def render_text(trace: Trace, max_module_rows: int = MAX_MODULE_ROWS) -> str:
    run = trace.run
    s = trace.summary()
    lines = [f"gradscope {run.get('mode', '')} trace of {run.get('target', '?')} "
             f"(torch {trace.torch_version})"]
    if s["nodes"]:
        where = f" (backward at {run['graph_from']})" if run.get("graph_from") else ""
        lines.append(f"  graph{where}: {s['nodes']:,} nodes ({s['ops']:,} ops, {s['leaves']:,} "
                     f"leaves), {s['edges']:,} edges, saved activations "
                     f"{human_bytes(s['saved_bytes'])}")
    lines.append(f"  backward calls: {trace.backward_calls}   optimizer steps: "
                 f"{trace.optimizer_steps}")
    lines += _model_lines(trace.models)
    rows = _module_rows(trace)
    if rows:
        lines.append("")
        lines.append("modules")
        shown = rows[:max_module_rows]
        lines += _table(shown, ["module", "type", "calls", "output", "params", "ops",
                                "saved (own ops)", "saved (with submodules)"])
        if len(rows) > len(shown):
            lines.append(f"  ... {len(rows) - len(shown)} more modules in the JSON report")
    lines += _accumulation_table(trace)
    lines.append("")
    lines += findings_lines(trace.findings)
    for note in trace.notes:
        lines += textwrap.wrap(f"note: {note}", 100, subsequent_indent="      ")
    if run.get("status") not in (None, "ok"):
        error = run.get("error", "")
        if len(error) > 300:  # some of torch's messages run to a page; the JSON keeps it all
            error = error[:297] + "..."
        lines.append(f"the traced program failed: {error}")
    return "\n".join(lines) + "\n"
