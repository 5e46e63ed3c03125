"""One self-contained HTML report: no network (no CDN, fonts or scripts from outside).

User-controlled strings reach the page three ways, each safe by construction:
- inside the Graphviz SVG, which ``dot`` XML-escapes;
- in the static HTML we write, through :func:`html.escape`;
- in the embedded JSON data, which the page's script only ever puts into ``textContent``
  (never ``innerHTML``); the JSON is escaped so that no ``</script>`` can end the data block.
"""
from __future__ import annotations

import json
import re
from html import escape
from typing import Optional

from ..errors import GradscopeError
from ..tracedata import Trace
from .gradflow import render_gradflow_svg
from .text import render_text
from .view import human_bytes, human_count, saved_per_module

_SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("gs-data").textContent);
  var byId = {};
  data.nodes.forEach(function (n) { byId[n.id] = n; });
  var svg = document.querySelector("#gs-graph svg");
  var groups = {};
  if (svg) {
    svg.querySelectorAll("g.node").forEach(function (g) {
      var t = g.querySelector("title");
      if (t) { groups[t.textContent] = g; }
    });
  }
  function text(el, value) { el.textContent = value === null || value === undefined ? "" : String(value); }
  function clearHighlight() {
    document.querySelectorAll(".gs-hl").forEach(function (el) { el.classList.remove("gs-hl"); });
  }
  function highlight(ids) {
    clearHighlight();
    var first = null;
    ids.forEach(function (id) {
      var g = groups[id];
      if (g) { g.classList.add("gs-hl"); first = first || g; }
    });
    if (first) { centre(first); }
    return first !== null;
  }
  function showNode(id) {
    var n = byId[id];
    var box = document.getElementById("gs-details");
    box.replaceChildren();
    if (!n) { text(box, "This box groups several nodes; use the JSON for each one."); return; }
    var rows = [["node", n.id], ["op", n.op], ["model", n.model], ["module", n.module],
                ["parameter", n.param], ["leaf", n.leaf], ["shape", n.shape ? "(" + n.shape.join(", ") + ")" : ""],
                ["dtype", n.dtype], ["device", n.device], ["saved tensors", n.saved_text],
                ["saved bytes (counted once)", n.saved_bytes || ""],
                ["gradient norm", n.grad_norm]];
    var table = document.createElement("table");
    rows.forEach(function (r) {
      if (r[1] === null || r[1] === undefined || r[1] === "") { return; }
      var tr = document.createElement("tr");
      var th = document.createElement("th"); text(th, r[0]);
      var td = document.createElement("td"); text(td, r[1]);
      tr.appendChild(th); tr.appendChild(td); table.appendChild(tr);
    });
    box.appendChild(table);
  }
  Object.keys(groups).forEach(function (id) {
    groups[id].addEventListener("click", function (ev) {
      ev.stopPropagation(); highlight([id]); showNode(id);
    });
  });
  document.querySelectorAll("[data-finding]").forEach(function (li) {
    li.addEventListener("click", function () {
      var f = data.findings[Number(li.dataset.finding)];
      document.querySelectorAll(".gs-finding.active").forEach(function (x) { x.classList.remove("active"); });
      li.classList.add("active");
      var found = highlight(f.nodes);
      document.body.dataset.gsHighlighted = String(document.querySelectorAll(".gs-hl").length);
      if (!found) { text(document.getElementById("gs-details"), "This finding has no node in the drawing."); }
    });
  });
  // search: filter the tables and highlight nodes of matching modules / parameters
  var search = document.getElementById("gs-search");
  search.addEventListener("input", function () {
    var q = search.value.trim().toLowerCase();
    document.querySelectorAll("tr[data-name]").forEach(function (tr) {
      tr.style.display = !q || tr.dataset.name.toLowerCase().indexOf(q) >= 0 ? "" : "none";
    });
    if (!q) { clearHighlight(); return; }
    highlight(data.nodes.filter(function (n) {
      var path = (n.model || "") + "." + (n.module || "") + "." + (n.param || "");
      return path.toLowerCase().indexOf(q) >= 0;
    }).map(function (n) { return n.id; }));
  });
  // pan and zoom on the drawing (wheel zooms about the pointer, drag pans)
  var view = null;
  function setView(v) { view = v; svg.setAttribute("viewBox", v.join(" ")); }
  function centre(g) {
    if (!svg || !view) { return; }
    var b = g.getBBox();
    var inner = svg.querySelector("g.graph");
    var t = inner && inner.transform.baseVal.consolidate();
    var mx = t ? t.matrix : { a: 1, d: 1, e: 0, f: 0 };
    var cx = mx.a * (b.x + b.width / 2) + mx.e, cy = mx.d * (b.y + b.height / 2) + mx.f;
    setView([cx - view[2] / 2, cy - view[3] / 2, view[2], view[3]]);
  }
  if (svg) {
    var vb = svg.viewBox.baseVal;
    setView([vb.x, vb.y, vb.width, vb.height]);
    svg.removeAttribute("width"); svg.removeAttribute("height");
    var drag = null;
    svg.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      var k = ev.deltaY < 0 ? 0.85 : 1 / 0.85;
      var r = svg.getBoundingClientRect();
      var px = view[0] + (ev.clientX - r.left) / r.width * view[2];
      var py = view[1] + (ev.clientY - r.top) / r.height * view[3];
      setView([px - (px - view[0]) * k, py - (py - view[1]) * k, view[2] * k, view[3] * k]);
    }, { passive: false });
    svg.addEventListener("mousedown", function (ev) { drag = [ev.clientX, ev.clientY, view.slice()]; });
    window.addEventListener("mouseup", function () { drag = null; });
    window.addEventListener("mousemove", function (ev) {
      if (!drag) { return; }
      var r = svg.getBoundingClientRect();
      setView([drag[2][0] - (ev.clientX - drag[0]) / r.width * view[2],
               drag[2][1] - (ev.clientY - drag[1]) / r.height * view[3], view[2], view[3]]);
    });
    document.getElementById("gs-reset").addEventListener("click", function () {
      setView([vb.x, vb.y, vb.width, vb.height]); clearHighlight();
    });
    svg.style.cursor = "grab";
  }
  // #finding=N in the address selects a finding (links, and the browser test)
  var m = /finding=(\d+)/.exec(location.hash);
  if (m) {
    var li = document.querySelector('[data-finding="' + m[1] + '"]');
    if (li) { li.click(); }
  }
  document.body.dataset.gsReady = "1";
  // Shown in a notebook (Report._repr_html_), the page sits in a sandboxed iframe: tell the
  // host page it is ready (nothing else crosses; the host may ignore it).
  if (window.parent !== window) {
    window.parent.postMessage({ gradscope: "ready", title: document.title,
                                boxes: Object.keys(groups).filter(function (id) {
                                  return byId[id]; }).length,
                                findings: data.findings.length }, "*");
  }
})();
"""

_STYLE = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #222; background: #fafafa; }
header { background: #24292f; color: #fff; padding: 12px 20px; }
header h1 { font-size: 18px; margin: 0 0 4px; }
header .meta { color: #c9d1d9; font-size: 13px; }
main { display: grid; grid-template-columns: minmax(320px, 28%) 1fr; gap: 14px; padding: 14px; }
section { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px;
          margin-bottom: 14px; overflow: auto; }
h2 { font-size: 15px; margin: 4px 0 8px; }
.gs-finding { border-left: 4px solid #999; padding: 6px 10px; margin: 6px 0; cursor: pointer;
              background: #f6f8fa; border-radius: 3px; }
.gs-finding.error { border-color: #d32f2f; } .gs-finding.warning { border-color: #e69500; }
.gs-finding.info { border-color: #3b7dd8; } .gs-finding.active { background: #fff4e5; }
.gs-finding .id { font-weight: bold; } .gs-finding .where { color: #555; font-size: 12px; }
.gs-finding .hint { color: #1b5e20; }
#gs-graph { height: 70vh; border: 1px solid #ddd; background: #fff; }
#gs-graph svg { width: 100%; height: 100%; }
.gs-hl polygon, .gs-hl path, .gs-hl ellipse { stroke: #d32f2f !important; stroke-width: 4px !important; }
.gs-hl { filter: drop-shadow(0 0 4px #d32f2f); }
table { border-collapse: collapse; font-size: 12px; width: 100%; }
th, td { text-align: left; padding: 2px 8px 2px 0; border-bottom: 1px solid #eee; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
#gs-details th { width: 40%; color: #555; }
.bad { color: #d32f2f; font-weight: bold; }
input#gs-search { width: 100%; padding: 5px; box-sizing: border-box; margin-bottom: 6px; }
pre { font-size: 12px; white-space: pre-wrap; }
.note { color: #555; }
button { margin-left: 8px; }
"""


def _json_for_script(value: object) -> str:
    """JSON that cannot end the <script> element it sits in, whatever strings it holds."""
    text = json.dumps(value, sort_keys=True)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _strip_prolog(svg: str) -> str:
    svg = re.sub(r"<\?xml[^>]*\?>", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>", "", svg, flags=re.S)
    return re.sub(r"<!--.*?-->", "", svg, flags=re.S).strip()


def _node_data(trace: Trace) -> list:
    norms = {(p["model"], p["name"]): p.get("grad_norm") for p in trace.parameters}
    out = []
    for n in trace.graph.nodes:
        d = n.to_dict()
        d.pop("saved")
        d["saved_text"] = "; ".join(
            f"{t.name} {tuple(t.shape) if t.shape is not None else ''} {t.dtype} "
            f"{human_bytes(t.bytes)}{'' if t.counted else ' (counted elsewhere)'}"
            for t in n.saved) or None
        if n.param is not None:
            d["grad_norm"] = norms.get((n.model, n.param))
        out.append(d)
    return out


def _findings_html(trace: Trace) -> str:
    if not trace.findings:
        return '<p class="note">No findings.</p>'
    items = []
    for i, f in enumerate(trace.findings):
        where = " · ".join(escape(x) for x in (f.module, f.location) if x)
        items.append(
            f'<li class="gs-finding {escape(f.severity)}" data-finding="{i}">'
            f'<span class="id">{escape(f.severity.upper())} {escape(f.check)}</span>'
            f'{f" <span class=where>{where}</span>" if where else ""}'
            f"<div>{escape(f.message)}</div>"
            f'{f"<div class=hint>Fix: {escape(f.hint)}</div>" if f.hint else ""}</li>')
    return '<ul style="list-style:none;padding:0;margin:0">' + "".join(items) + "</ul>"


def _modules_html(trace: Trace) -> str:
    saved = saved_per_module(trace)
    rows = []
    for m in trace.modules:
        name = m["model"] + (f".{m['name']}" if m["name"] else "")
        params = "" if m["parameters"] is None else human_count(m["parameters"])
        flag = "" if m["registered"] else ' <span class="bad">unregistered</span>'
        own, total = saved.get((m["model"], m["name"]), (0, 0))
        rows.append(f'<tr data-name="{escape(name)}"><td>{escape(name)}{flag}</td>'
                    f'<td>{escape(m["type"])}</td><td class="num">{int(m["calls"])}</td>'
                    f'<td>{escape(m["output"] or "")}</td><td class="num">{params}</td>'
                    f'<td class="num">{human_bytes(own)}</td>'
                    f'<td class="num">{human_bytes(total)}</td></tr>')
    return ('<table><tr><th>module</th><th>type</th><th>calls</th><th>output</th>'
            '<th>params</th><th>saved by its own ops</th><th>saved with submodules</th></tr>'
            + "".join(rows) + '</table><p class="note">Saved activations: the bytes autograd '
            "keeps for backward, each storage counted once. <i>Own ops</i> counts the nodes "
            "the module created itself; <i>with submodules</i> adds every module inside it "
            "(built in forward or not) and is the figure on the module's box in the graph.</p>")


def _parameters_html(trace: Trace) -> str:
    rows = []
    for p in trace.parameters:
        name = f"{p['model']}.{p['name']}"
        norm = "" if p.get("grad_norm") is None else f"{p['grad_norm']:.3e}"
        opt = {True: "yes", False: '<span class="bad">no</span>', None: ""}[p.get("in_optimizer")]
        shape = "lazy" if p["shape"] is None else escape(str(tuple(p["shape"])))
        rows.append(f'<tr data-name="{escape(name)}"><td>{escape(name)}</td><td>{shape}</td>'
                    f'<td class="num">{human_count(p["numel"])}</td><td class="num">{norm}</td>'
                    f'<td>{opt}</td><td>{"yes" if p["in_graph"] else "no"}</td></tr>')
    return ('<table><tr><th>parameter</th><th>shape</th><th>#</th><th>grad norm</th>'
            '<th>in optimizer</th><th>in graph</th></tr>' + "".join(rows) + "</table>")


def _accumulation_html(trace: Trace) -> str:
    rows = []
    for s in trace.accumulation[:200]:
        carried = (f'<span class="bad">{len(s["carried"])} kept old gradients</span>'
                   if s["carried"] else "reset")
        rows.append(f'<tr><td class="num">{int(s["step"])}</td><td class="num">'
                    f'{int(s["backward_calls"])}'
                    f'</td><td>{escape("/".join(s["summed"]))}</td><td>{carried}</td>'
                    f'<td>{escape(s["location"] or "")}</td></tr>')
    more = (f'<p class="note">{len(trace.accumulation) - 200} more steps in trace.json.</p>'
            if len(trace.accumulation) > 200 else "")
    return ('<table><tr><th>step</th><th>backward calls</th><th>summed in .grad</th>'
            '<th>since last step</th><th>at</th></tr>' + "".join(rows) + "</table>" + more)


def render_notebook_html(trace: Trace, height: int = 720, **options: object) -> str:
    """The report for a notebook cell: the whole page in a sandboxed ``<iframe srcdoc>``.

    The iframe keeps the page's ids, styles and script apart from the notebook and from other
    reports in it (two reports in one notebook cannot clash), runs its script without access to
    the notebook (``sandbox="allow-scripts"``, no same-origin), and fetches nothing: the page is
    self-contained and its Content-Security-Policy forbids any fetch.
    """
    page = render_html(trace, **options)  # type: ignore[arg-type]
    title = escape(f"gradscope: {trace.run.get('target', 'report')}")
    return (f'<iframe sandbox="allow-scripts" title="{title}" '
            f'style="width:100%;height:{int(height)}px;border:1px solid #ddd" '
            f'srcdoc="{escape(page, quote=True)}"></iframe>')


def render_html(trace: Trace, depth: Optional[int] = None, max_nodes: Optional[int] = None,
                focus: Optional[str] = None, fold: bool = False) -> str:
    """The whole report as one HTML page."""
    from .svg import render_svg

    try:
        graph = _strip_prolog(render_svg(trace, depth, max_nodes, focus, fold)) \
            if trace.graph.nodes else \
            '<p class="note">No backward call was seen: there is no graph to draw.</p>'
    except GradscopeError as e:
        graph = f'<p class="note">{escape(str(e))}</p>'
    chart = render_gradflow_svg(trace)
    data = {"nodes": _node_data(trace), "findings": [f.to_dict() for f in trace.findings]}
    run = trace.run
    title = f"gradscope: {run.get('target', 'report')}"
    summary = escape(render_text(trace, max_module_rows=0).split("\nmodules\n")[0])
    sections = [
        f"<section><h2>Findings ({len(trace.findings)})</h2>{_findings_html(trace)}</section>",
        "<section><h2>Details</h2><div id=\"gs-details\" class=\"note\">Click a box in the "
        "graph, or a finding.</div></section>",
        f"<section><h2>Summary</h2><pre>{summary}</pre></section>",
    ]
    right = [
        "<section><h2>Autograd graph <button id=\"gs-reset\">reset view</button></h2>"
        "<input id=\"gs-search\" placeholder=\"search modules and parameters\" "
        f"autocomplete=\"off\"><div id=\"gs-graph\">{graph}</div></section>",
    ]
    if chart:
        right.append(f"<section><h2>Gradient flow</h2>{chart}</section>")
    if trace.accumulation:
        right.append(f"<section><h2>Gradient accumulation per optimizer step</h2>"
                     f"{_accumulation_html(trace)}</section>")
    right.append(f"<section><h2>Modules</h2>{_modules_html(trace)}</section>")
    right.append(f"<section><h2>Parameters</h2>{_parameters_html(trace)}</section>")
    meta = escape(f"{run.get('mode', '')} · torch {trace.torch_version} · "
                  f"{trace.backward_calls} backward call(s) · {trace.optimizer_steps} "
                  f"optimizer step(s) · status {run.get('status', 'ok')}")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{escape(title)}</h1><div class=\"meta\">{meta}</div></header>"
        f"<main><div>{''.join(sections)}</div><div>{''.join(right)}</div></main>"
        f"<script type=\"application/json\" id=\"gs-data\">{_json_for_script(data)}</script>"
        f"<script>{_SCRIPT}</script></body></html>\n")
