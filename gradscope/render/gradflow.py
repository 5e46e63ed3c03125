"""The gradient-flow chart: per module, mean and max gradient norm over the recorded steps, on a
log scale, in forward (parameter) order. Plain SVG written by hand: no Graphviz needed."""
from __future__ import annotations

import math
from html import escape
from typing import Optional

from ..graph import module_path
from ..tracedata import Trace

ROW, LABEL_W, BAR_W, PAD = 18, 300, 420, 12


def module_norms(trace: Trace) -> list:
    """[(module path, mean norm, max norm)]: per step, a module's norm is the L2 norm over its
    own parameters; then mean and max over the recorded steps."""
    norms = trace.gradients.get("grad_norms", {})
    order: dict = {}
    for p in trace.parameters:
        key = f"{p['model']}.{p['name']}"
        if key in norms:
            module = module_path(p["model"], p["module"])
            order.setdefault(module, []).append(norms[key])
    rows = []
    for module, series in order.items():
        steps = min(len(s) for s in series)
        per_step = [math.sqrt(sum(s[k] ** 2 for s in series)) for k in range(steps)]
        finite = [v for v in per_step if math.isfinite(v)]
        if finite:
            rows.append((module, sum(finite) / len(finite), max(finite)))
    return rows


def render_gradflow_svg(trace: Trace) -> Optional[str]:
    """The chart as SVG text, or None when no optimizer step recorded gradient norms."""
    rows = module_norms(trace)
    if not rows:
        return None
    positive = [v for _, mean, mx in rows for v in (mean, mx) if v > 0]
    lo = math.floor(math.log10(min(positive))) if positive else -8
    hi = math.ceil(math.log10(max(positive))) if positive else 0
    hi = max(hi, lo + 1)

    def x_of(v: float) -> float:
        if v <= 0:
            return LABEL_W
        return LABEL_W + BAR_W * (math.log10(v) - lo) / (hi - lo)

    height = PAD * 2 + ROW * (len(rows) + 3)
    width = LABEL_W + BAR_W + PAD * 2
    steps = len(trace.gradients.get("norm_steps", []))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="Helvetica, Arial, sans-serif" font-size="11">',
           f'<text x="{PAD}" y="{PAD + 4}" font-size="13" font-weight="bold">Gradient flow: '
           f'mean (bar) and max (tick) gradient norm per module over {steps} step(s), '
           f'log scale</text>']
    axis_y = PAD + ROW * (len(rows) + 1) + 6
    for e in range(lo, hi + 1):
        x = x_of(10.0 ** e)
        out.append(f'<line x1="{x:.1f}" y1="{PAD + ROW}" x2="{x:.1f}" y2="{axis_y}" '
                   'stroke="#e0e0e0"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_y + 12}" text-anchor="middle">1e{e}</text>')
    for i, (module, mean, mx) in enumerate(rows):
        y = PAD + ROW * (i + 1) + 4
        out.append(f'<text x="{LABEL_W - 6}" y="{y + 11}" text-anchor="end">'
                   f'{escape(module)}</text>')
        out.append(f'<rect x="{LABEL_W}" y="{y + 2}" width="{max(x_of(mean) - LABEL_W, 1):.1f}" '
                   f'height="{ROW - 6}" fill="#3b7dd8"><title>{escape(module)}: mean '
                   f'{mean:.3e}, max {mx:.3e}</title></rect>')
        out.append(f'<line x1="{x_of(mx):.1f}" y1="{y}" x2="{x_of(mx):.1f}" y2="{y + ROW - 2}" '
                   'stroke="#d32f2f" stroke-width="2"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
