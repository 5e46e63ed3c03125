"""A :class:`~gradscope.diff.TraceDiff` as terminal text and as one static HTML page.

The page has no script at all and fetches nothing; every string from the traces (module and
parameter names, file names, messages) goes through :func:`html.escape`.
"""
from __future__ import annotations

import textwrap
from html import escape

from ..diff import TraceDiff
from .view import human_bytes

_PARAMETER_ROWS = (
    ("lost_gradient", "lost gradient", "trainable in both, but no gradient reaches them now"),
    ("gained_gradient", "gained gradient", "trainable in both, and now reached by the loss"),
    ("frozen", "frozen", "requires_grad changed to False"),
    ("unfrozen", "unfrozen", "requires_grad changed to True"),
)


def _names(items: list, limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _shape(shape: object) -> str:
    return "lazy" if shape is None else str(tuple(shape))  # type: ignore[arg-type]


def _signed(n: int) -> str:
    return f"+{n:,}" if n > 0 else f"{n:,}"


def _value(key: str, n: int) -> str:
    return human_bytes(n) if key in ("saved_bytes", "saved") else f"{n:,}"


def _parameter_lines(d: TraceDiff) -> list:
    p = d.parameters
    lines = []
    for key, label, why in _PARAMETER_ROWS:
        if p[key]:
            lines.append(f"  {label} ({len(p[key])}, {why}): {_names(p[key])}")
    for key in ("added", "removed"):
        if p[key]:
            items = [f"{x['parameter']} {_shape(x['shape'])}" for x in p[key]]
            lines.append(f"  {key} ({len(items)}): {_names(items)}")
    if p["shape_changed"]:
        items = [f"{x['parameter']} {_shape(x['a'])} -> {_shape(x['b'])}"
                 for x in p["shape_changed"]]
        lines.append(f"  shape changed ({len(items)}): {_names(items)}")
    return lines


def _module_lines(d: TraceDiff) -> list:
    m = d.modules
    lines = []
    for key in ("added", "removed"):
        if m[key]:
            items = [f"{x['module']} ({x['type']})" for x in m[key]]
            lines.append(f"  {key} ({len(items)}): {_names(items)}")
    if m["type_changed"]:
        items = [f"{x['module']} {x['a']} -> {x['b']}" for x in m["type_changed"]]
        lines.append(f"  type changed ({len(items)}): {_names(items)}")
    return lines


def _per_module_lines(rows: list, key: str, limit: int = 25) -> list:
    width = max([len(r["module"]) for r in rows[:limit]] + [6])
    lines = [f"  {'module':<{width}}  {'before':>10}  {'after':>10}  change"]
    for r in rows[:limit]:
        change = _signed(r["b"] - r["a"]) if key == "ops" else \
            ("+" if r["b"] >= r["a"] else "-") + human_bytes(abs(r["b"] - r["a"]))
        lines.append(f"  {r['module']:<{width}}  {_value(key, r['a']):>10}  "
                     f"{_value(key, r['b']):>10}  {change}")
    if len(rows) > limit:
        lines.append(f"  ... {len(rows) - limit} more modules in the JSON diff")
    return lines


def _finding_lines(d: TraceDiff) -> list:
    lines = []
    for tag, items in (("NEW", d.findings["new"]), ("FIXED", d.findings["fixed"])):
        for f in items:
            where = " ".join(x for x in (f["module"], f["location"] and f"at {f['location']}")
                             if x)
            lines.append(f"  {tag:<7} {f['severity'].upper():<7} {f['check']}  {where}".rstrip())
            lines += textwrap.wrap(f["message"], 92, initial_indent="          ",
                                   subsequent_indent="          ")
    for c in d.findings["changed"]:
        lines.append(f"  CHANGED {c['check']}  {c['module'] or ''}: {c['a']} -> {c['b']}")
    return lines


def render_diff_text(d: TraceDiff) -> str:
    """The diff for a terminal: one section per kind of change, nothing for what is equal."""
    lines = [f"gradscope diff {d.a['file']} -> {d.b['file']}"]
    for side, label in ((d.a, "before"), (d.b, "after")):
        lines.append(f"  {label}: {side['mode']} trace of {side['target']} "
                     f"({'; '.join(side['models']) or 'no model'}), status {side['status']}")
    if not d.same_program:
        lines.append("  note: these look like traces of different programs (other models or "
                     "mode); the diff compares them anyway.")
    if d.empty:
        lines.append("no changes: same modules, parameters, autograd ops, saved activations "
                     "and findings")
        return "\n".join(lines) + "\n"
    sections = [
        ("sizes", [f"  {k}: {_value(k, a)} -> {_value(k, b)}" for k, (a, b) in
                   d.summary.items()]),
        ("parameters", _parameter_lines(d)),
        ("modules", _module_lines(d)),
        ("autograd ops per module (created by the module itself)",
         _per_module_lines(d.nodes, "ops") if d.nodes else []),
        ("saved activations per module (of its own ops)",
         _per_module_lines(d.saved, "saved") if d.saved else []),
        ("findings", _finding_lines(d)),
    ]
    for title, body in sections:
        if body:
            lines += ["", title] + body
    return "\n".join(lines) + "\n"


# -- HTML ----------------------------------------------------------------------------------------
_STYLE = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 20px;
       color: #222; }
h1 { font-size: 18px; } h2 { font-size: 15px; margin-top: 22px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { text-align: left; padding: 2px 12px 2px 0; border-bottom: 1px solid #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.new { color: #b71c1c; } .fixed { color: #1b5e20; } .note { color: #555; }
.sev-error { font-weight: bold; color: #d32f2f; } .sev-warning { color: #e69500; }
"""


def _table(headers: list, rows: list) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _td(value: object, num: bool = False) -> str:
    return f'<td{" class=num" if num else ""}>{escape(str(value))}</td>'


def _html_sections(d: TraceDiff) -> list:
    out = []
    if d.summary:
        out.append(("Sizes", _table(["", "before", "after"], [
            [_td(k), _td(_value(k, a), True), _td(_value(k, b), True)]
            for k, (a, b) in d.summary.items()])))
    rows = []
    p = d.parameters
    for key, label, why in _PARAMETER_ROWS:
        rows += [[_td(label), _td(name), _td(why)] for name in p[key]]
    rows += [[_td(k), _td(x["parameter"]), _td(_shape(x["shape"]))]
             for k in ("added", "removed") for x in p[k]]
    rows += [[_td("shape changed"), _td(x["parameter"]),
              _td(f"{_shape(x['a'])} -> {_shape(x['b'])}")] for x in p["shape_changed"]]
    if rows:
        out.append(("Parameters", _table(["change", "parameter", "detail"], rows)))
    m = d.modules
    rows = [[_td(k), _td(x["module"]), _td(x["type"])] for k in ("added", "removed")
            for x in m[k]]
    rows += [[_td("type changed"), _td(x["module"]), _td(f"{x['a']} -> {x['b']}")]
             for x in m["type_changed"]]
    if rows:
        out.append(("Modules", _table(["change", "module", "type"], rows)))
    for title, items, key in (("Autograd ops per module (created by the module itself)",
                               d.nodes, "ops"),
                              ("Saved activations per module (of its own ops)", d.saved,
                               "saved")):
        if items:
            out.append((title, _table(["module", "before", "after"], [
                [_td(r["module"]), _td(_value(key, r["a"]), True), _td(_value(key, r["b"]), True)]
                for r in items])))
    rows = []
    for tag, items in (("new", d.findings["new"]), ("fixed", d.findings["fixed"])):
        rows += [[f'<td class="{tag}">{tag}</td>',
                  f'<td class="sev-{escape(f["severity"])}">{escape(f["severity"])}</td>',
                  _td(f["check"]), _td(f["module"] or ""), _td(f["location"] or ""),
                  _td(f["message"])] for f in items]
    rows += [[_td("changed"), _td(f"{c['a']} -> {c['b']}"), _td(c["check"]),
              _td(c["module"] or ""), _td(""), _td(c["message"])] for c in d.findings["changed"]]
    if rows:
        out.append(("Findings", _table(["", "severity", "check", "module", "at", "message"],
                                       rows)))
    return out


def render_diff_html(d: TraceDiff) -> str:
    """One static, self-contained page (no script, nothing fetched)."""
    title = f"gradscope diff {d.a['file']} -> {d.b['file']}"
    sides = "".join(
        f"<li>{label}: {escape(str(s['mode']))} trace of {escape(str(s['target']))} "
        f"({escape('; '.join(s['models']) or 'no model')}), status {escape(str(s['status']))}</li>"
        for s, label in ((d.a, "before"), (d.b, "after")))
    parts = [f"<h1>{escape(title)}</h1><ul>{sides}</ul>"]
    if not d.same_program:
        parts.append('<p class="note">These look like traces of different programs (other '
                     "models or mode); the diff compares them anyway.</p>")
    sections = _html_sections(d)
    if not sections:
        parts.append('<p class="note">No changes: same modules, parameters, autograd ops, '
                     "saved activations and findings.</p>")
    parts += [f"<h2>{escape(t)}</h2>{body}" for t, body in sections]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'\">"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
            + "".join(parts) + "</body></html>\n")
