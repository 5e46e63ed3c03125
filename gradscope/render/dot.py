"""DOT text for a View, written in one linear pass; never needs the ``dot`` program.

Every user-controlled string (module, parameter and class names, paths, messages) goes through
:func:`quote`, which escapes what DOT would interpret; ``dot`` then XML-escapes it in SVG.
"""
from __future__ import annotations

from typing import Iterable, Optional

from ..tracedata import Trace
from .view import View, choose_view, collapsed_view, op_view

STYLE = {
    "op": 'shape=box style="rounded,filled" fillcolor="#f4f4f4" color="#a0a0a0"',
    "root": 'shape=box style="rounded,filled" fillcolor="#fff3c4" color="#b08800" peripheries=2',
    "parameter": 'shape=box style="filled" fillcolor="#d6eaff" color="#3b7dd8"',
    "input": 'shape=box style="filled" fillcolor="#e3f3dc" color="#4c9a2a"',
    "unregistered": 'shape=box style="filled,bold" fillcolor="#ffe2bf" color="#e06c00"',
    "module": 'shape=box3d style="filled" fillcolor="#ece6f7" color="#6f52b5"',
    "module-root": 'shape=box3d style="filled" fillcolor="#fff3c4" color="#b08800" peripheries=2',
    "context": 'shape=box style="rounded,dashed" color="#bdbdbd" fontcolor="#9e9e9e"',
}
for _category, _fill in (("compute", "#dce8fb"), ("norm", "#ece2f7"), ("activation", "#e0f2e3"),
                         ("loss", "#fde2dd"), ("other", "#f4f4f4")):
    STYLE[f"op-{_category}"] = f'shape=box style="rounded,filled" fillcolor="{_fill}" color="#a0a0a0"'
STYLE["op-shape"] = ('shape=box style="rounded,filled" fillcolor="#fafafa" color="#c8c8c8" '
                     'fontcolor="#606060" fontsize=9')
HIGHLIGHT = 'color="#d32f2f" penwidth=2.5'
LEGEND = (("parameter", "parameter (name, shape, count)"),
          ("op-compute", "matmul / conv / embedding"), ("op-norm", "normalisation"),
          ("op-activation", "activation / softmax"), ("op-loss", "loss"),
          ("op-shape", "view / reshape / copy"), ("op-other", "other op (output shape)"),
          ("root", "root: backward starts here"), ("unregistered", "leaf that is no parameter"),
          ("input", "input that requires grad"), ("module", "collapsed module"))


def quote(text: str) -> str:
    """A DOT double-quoted string showing ``text`` literally (backslash escapes neutralised)."""
    text = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text.replace("\r", "").replace("\n", "\\n") + '"'


class _Quoted(dict):
    """quote() with memory: op names, shapes and module names repeat thousands of times."""

    def __missing__(self, text: str) -> str:
        q = self[text] = quote(text)[1:-1]
        return q


def _label(lines: Iterable[str], cache: Optional[_Quoted] = None) -> str:
    # Lines are joined with DOT's \n escape *after* quoting each, so user text never adds escapes.
    q = cache if cache is not None else _Quoted()
    return '"' + "\\n".join(q[x] for x in lines) + '"'


def render_dot(trace: Trace, depth: Optional[int] = None, view: Optional[View] = None,
               highlight: Optional[set] = None, title: Optional[str] = None,
               focus: Optional[str] = None, fold: bool = False) -> str:
    """DOT text: op level by default (complete at any size: no size guard), or collapsed at
    ``depth``; ``focus`` and ``fold`` shape it as they shape the drawing."""
    if view is None:
        from .view import focus_view, fold_view

        view = op_view(trace) if depth is None else collapsed_view(trace, depth)
        if focus:
            view = focus_view(view, focus)
        if fold:
            view = fold_view(view)
    if highlight is None:  # info findings (tied weights, ...) are not problems: no red
        highlight = {nid for f in trace.findings if f.severity != "info" for nid in f.nodes}
    modules = {f.module for f in trace.findings if f.module and f.severity != "info"}
    return view_to_dot(view, highlight, title, modules)


def view_to_dot(view: View, highlight: set, title: Optional[str] = None,
                highlight_modules: Optional[set] = None) -> str:
    out = ["digraph gradscope {"]
    graph_attrs = ['rankdir=TB', 'fontname="Helvetica"', 'fontsize=11', 'compound=true',
                   'nodesep=0.25', 'ranksep=0.35']
    if len(view.nodes) > 1000:
        graph_attrs.append("nslimit=0.1")  # 2x faster ranking on big graphs, same picture
    if title or view.note:
        graph_attrs += ["labelloc=t", f"label={_label([x for x in (title, view.note) if x])}"]
    out.append("  graph [" + " ".join(graph_attrs) + "]")
    out.append('  node [fontname="Helvetica" fontsize=10 margin="0.08,0.04" height=0.3]')
    out.append('  edge [color="#707070" arrowsize=0.6 fontname="Helvetica" fontsize=9]')
    _emit_nodes(out, view, highlight, highlight_modules or set())
    for src, dst, label in view.edges:
        out.append(f"  {src} -> {dst}" + (f" [label={quote(label)}]" if label else ""))
    _emit_legend(out, view, highlight, highlight_modules or set())
    out.append("}")
    return "\n".join(out) + "\n"


def _node_line(node, highlight: set, indent: str, cache: _Quoted) -> str:
    line = f"{indent}{node.id} [label={_label(node.lines, cache)} {STYLE.get(node.kind, STYLE['op'])}"
    if node.tooltip:
        line += f" tooltip={quote(node.tooltip)}"
    if highlight and not highlight.isdisjoint(node.members):
        line += " " + HIGHLIGHT
    return line + "]"


def _emit_nodes(out: list, view: View, highlight: set, highlight_modules: set) -> None:
    # Clusters in order of first appearance; sorting by the tuple of prefix indices gives a
    # depth-first order, so clusters open and close with an explicit stack (no recursion).
    cache = _Quoted()
    order: dict = {}
    members: dict = {}
    for node in view.nodes:
        for k in range(1, len(node.cluster) + 1):
            order.setdefault(node.cluster[:k], len(order))
        members.setdefault(node.cluster, []).append(node)
    for node in members.pop((), []):
        out.append(_node_line(node, highlight, "  ", cache))
    paths = sorted(order, key=lambda p: tuple(order[p[:k]] for k in range(1, len(p) + 1)))
    open_stack: list = []
    for path in paths:
        while open_stack and open_stack[-1] != path[: len(open_stack[-1])]:
            open_stack.pop()
            out.append("  " * (len(open_stack) + 1) + "}")
        indent = "  " * (len(open_stack) + 1)
        label = view.cluster_labels.get(path, path[-1])
        style = 'style="rounded,bold" color="#5b5b5b" fontcolor=black' if len(path) == 1 else \
            'style="rounded" color="#b8b8b8" fontcolor=black'
        if ".".join(path) in highlight_modules:
            style = 'style="rounded,bold" color="#d32f2f" penwidth=2 fontcolor="#d32f2f"'
        out.append(f"{indent}subgraph cluster_{order[path]} {{")
        out.append(f"{indent}  label={quote(label)} fontsize=10 labeljust=l {style}")
        for node in members.get(path, []):
            out.append(_node_line(node, highlight, indent + "  ", cache))
        open_stack.append(path)
    while open_stack:
        open_stack.pop()
        out.append("  " * (len(open_stack) + 1) + "}")


def _emit_legend(out: list, view: View, highlight: set, highlight_modules: set) -> None:
    kinds = {n.kind.replace("module-root", "module") for n in view.nodes}
    entries = [(k, text) for k, text in LEGEND if k in kinds]
    if highlight or highlight_modules:
        entries.append(("finding", "implicated in a finding"))
    if len(entries) < 2:
        return
    out.append("  subgraph cluster_legend {")
    out.append('    label="legend" fontsize=9 style="rounded,dashed" color="#c0c0c0"')
    for i, (kind, text) in enumerate(entries):
        style = STYLE["op"] + " " + HIGHLIGHT if kind == "finding" else STYLE[kind]
        out.append(f"    legend_{i} [label={quote(text)} {style} fontsize=9]")
    for i in range(len(entries) - 1):
        out.append(f"    legend_{i} -> legend_{i + 1} [style=invis]")
    out.append("  }")


def render_dot_for_svg(trace: Trace, depth: Optional[int] = None,
                       max_nodes: Optional[int] = None, focus: Optional[str] = None,
                       fold: bool = False) -> str:
    """DOT for drawing: focus and fold first, then the size guard may collapse what is left
    (see ``choose_view``)."""
    return render_dot(trace, view=drawing_view(trace, depth, max_nodes, focus, fold),
                      title=drawing_title(trace))


def drawing_view(trace: Trace, depth: Optional[int] = None, max_nodes: Optional[int] = None,
                 focus: Optional[str] = None, fold: bool = False) -> View:
    from .view import DEFAULT_MAX_NODES, focus_view, fold_view

    budget = max_nodes or DEFAULT_MAX_NODES
    if not focus and not fold:
        return choose_view(trace, depth, budget)
    view = op_view(trace) if depth is None else collapsed_view(trace, depth)
    if focus:
        view = focus_view(view, focus)
    if fold:
        view = fold_view(view)
    if len(view.nodes) > budget and depth is None:
        return choose_view(trace, None, budget)  # still too big: the size guard decides
    return view


def drawing_title(trace: Trace) -> str:
    run = trace.run
    target = run.get("target") or "model"
    s = trace.summary()
    return (f"gradscope: {target} · {s['nodes']:,} autograd nodes · "
            f"{trace.backward_calls} backward call(s)")
