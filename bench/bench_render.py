"""Drawing at scale, in one run: gradscope vs torchviz vs torchview.

    PYTHONPATH=bench/.deps python bench/bench_render.py [--out bench/RESULTS-render.md]

For each model: seconds from a model and an input to an SVG on disk, and how many nodes the
drawing has. Then a 48-layer GPT-like model (module-level SVG; op-level DOT and JSON), and a
1,000,000-node chain (JSON and DOT written, SVG drawn collapsed).
"""
from __future__ import annotations

import argparse
import io
import re
import sys
import time

import torch

import gradscope

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from models import GPT, ResNet18  # noqa: E402

try:
    from torchviz import make_dot
except ImportError:
    make_dot = None
try:
    from torchview import draw_graph
except ImportError:
    draw_graph = None


def count_nodes(dot_source: str) -> int:
    return len(re.findall(r"^\s*\"?[\w:.]+\"?\s*\[", dot_source, flags=re.M))


def timed(fn):
    t0 = time.perf_counter()
    try:
        out = fn()
    except RecursionError:
        return "RecursionError", None
    except Exception as e:  # noqa: BLE001 - a peer failing is a result
        return f"{type(e).__name__}", None
    return time.perf_counter() - t0, out


def gradscope_svg(model, x):
    report = gradscope.trace(model, x, loss_fn=lambda o: o.float().mean())
    svg = report.to_svg()
    return svg.count('class="node"')


def torchviz_svg(model, x):
    dot = make_dot(model(x).float().mean(), params=dict(model.named_parameters()))
    dot.pipe(format="svg")
    return count_nodes(dot.source)


def torchview_svg(model, x):
    g = draw_graph(model, input_data=x, device="cpu", depth=3)
    g.visual_graph.pipe(format="svg")
    return count_nodes(g.visual_graph.source)


def fmt(t, n):
    return t if isinstance(t, str) else f"{t:.2f} s, {n:,} nodes"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.manual_seed(0)
    lines = ["| model | gradscope (trace + auto view) | torchviz make_dot | torchview (depth 3) |",
             "|---|---|---|---|"]
    configs = [("ResNet-18-like, batch 1, 3x224x224", ResNet18(), torch.randn(1, 3, 224, 224)),
               ("GPT-2-small-like 12 layers, seq 64", GPT(), torch.randint(0, 50257, (1, 64))),
               ("GPT-like 48 layers d=256, seq 64", GPT(d=256, heads=4, layers=48),
                torch.randint(0, 50257, (1, 64)))]
    for name, model, x in configs:
        cells = [fmt(*timed(lambda: gradscope_svg(model, x)))]
        cells.append(fmt(*timed(lambda: torchviz_svg(model, x))) if make_dot else "not installed")
        cells.append(fmt(*timed(lambda: torchview_svg(model, x))) if draw_graph else
                     "not installed")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)

    model, x = configs[2][1], configs[2][2]
    report = gradscope.trace(model, x, loss_fn=lambda o: o.float().mean())
    t_json, _ = timed(lambda: report.trace.write_json(io.StringIO()))
    t_dot, _ = timed(lambda: report.to_dot())
    t_svg2, n2 = timed(lambda: report.to_svg(depth=2).count('class="node"'))
    lines += ["", f"48-layer GPT-like ({len(report.graph.nodes):,} autograd nodes): op-level JSON "
              f"{t_json:.2f} s, op-level DOT {t_dot:.2f} s, module-level SVG (`--depth 2`, "
              f"{n2} boxes) {t_svg2:.2f} s."]
    print(lines[-1], flush=True)

    y = torch.zeros(1, requires_grad=True)
    z = y
    for _ in range(1_000_000):
        z = z + 1
    t_walk, graph = timed(lambda: gradscope.graph_of(z))
    chain = gradscope.Report(gradscope.Trace(graph=graph))
    t_json, _ = timed(lambda: chain.trace.write_json(io.StringIO()))
    t_dot, _ = timed(lambda: chain.to_dot())
    t_svg, n = timed(lambda: chain.to_svg().count('class="node"'))
    lines.append(f"1,000,000-node chain: walk {t_walk:.2f} s, JSON {t_json:.2f} s, DOT "
                 f"{t_dot:.2f} s, SVG {fmt(t_svg, n)} (collapsed by the size guard).")
    print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
