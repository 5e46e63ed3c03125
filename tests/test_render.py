"""Renderers: DOT structure, escaping of user-controlled strings, collapsing, the size guard."""
import re
import xml.dom.minidom

import pytest
import torch
from torch import nn

import gradscope
from gradscope.render.dot import quote
from gradscope.render.view import choose_view, collapsed_view, op_view

from models import CNN, TransformerBlock

EVIL = '<script>alert("x")</script>\\N\nline2'


def _evil_model():
    Evil = type('Evil<img src=x onerror=alert(1)>"', (nn.Module,), {
        "forward": lambda self, x: getattr(self, EVIL)(x)})
    model = Evil()
    model.add_module(EVIL, nn.Linear(3, 2))
    return model


def test_quote_neutralises_dot_escapes():
    assert quote('a"b') == '"a\\"b"'
    assert quote("a\\Nb") == '"a\\\\Nb"'          # \N would be the node name in DOT
    assert quote("a\nb") == '"a\\nb"'


def test_user_strings_are_escaped_in_dot():
    report = gradscope.trace(_evil_model(), torch.randn(4, 3))
    dot = report.to_dot()
    assert 'label="<script>alert(\\"x\\")</script>\\\\N\\nline2: Linear"' in dot
    # no unescaped quote from a user string can end a DOT string early
    for line in dot.splitlines():
        body = line.replace('\\\\', '').replace('\\"', '')
        assert body.count('"') % 2 == 0, line


@pytest.mark.dot
def test_user_strings_are_escaped_in_svg(tmp_path):
    report = gradscope.trace(_evil_model(), torch.randn(4, 3))
    svg = report.to_svg()
    xml.dom.minidom.parseString(svg)  # well-formed: nothing broke out of the text nodes
    assert "<script" not in svg and "<img" not in svg
    assert "&lt;script&gt;" in svg
    path = tmp_path / "g.svg"
    report.save(str(path))
    assert path.read_text().startswith("<?xml")


def test_op_view_clusters_follow_modules():
    report = gradscope.trace(CNN(), torch.randn(2, 3, 16, 16))
    view = op_view(report.trace)
    clusters = {v.cluster for v in view.nodes}
    assert ("CNN", "features", "0") in clusters and ("CNN", "head") in clusters
    dot = report.to_dot()
    assert dot.count("subgraph cluster_") >= 9
    assert 'label="features: Sequential"' in dot
    assert 'label="weight\\n(8, 3, 3, 3)"' in dot   # parameter leaf: name and shape
    assert 'label="ConvolutionBackward0\\n(2, 8, 16, 16)' in dot  # op and output shape


def test_collapse_depths():
    report = gradscope.trace(TransformerBlock(), torch.randn(2, 3, 16))
    t = report.trace
    whole = collapsed_view(t, 0)
    assert [v.lines[0] for v in whole.nodes if v.kind.startswith("module")] == ["TransformerBlock"]
    d1 = collapsed_view(t, 1)
    titles = {v.lines[0] for v in d1.nodes if v.kind.startswith("module")}
    assert titles == {"ln1: LayerNorm", "attn: Attention", "ln2: LayerNorm", "mlp: Sequential"}
    # edges between collapsed modules carry the tensor shape
    assert all(label for a, b, label in d1.edges if a.startswith("g") and b.startswith("g"))
    assert any(label == "(2, 3, 16)" for _, _, label in d1.edges)
    # members partition the graph: every node drawn exactly once
    drawn = [m for v in d1.nodes for m in v.members]
    assert sorted(drawn) == sorted(n.id for n in t.graph.nodes)


def test_size_guard_picks_a_depth_that_fits():
    blocks = nn.Sequential(*[TransformerBlock() for _ in range(6)])
    report = gradscope.trace(blocks, torch.randn(2, 3, 16))
    n = len(report.graph.nodes)
    assert n > 200
    view = choose_view(report.trace, max_nodes=120)
    assert view.depth is not None and len(view.nodes) <= 120
    assert "drawing budget" in view.note and f"{n:,}" in view.note
    assert choose_view(report.trace, max_nodes=n).depth is None  # fits: op level
    assert "digraph" in report.to_dot()  # the DOT file itself stays complete
    assert report.to_dot().count(" -> ") >= len(report.graph.edges)


def test_size_guard_groups_ops_outside_models():
    x = torch.zeros(1, requires_grad=True)
    y = x
    for _ in range(500):
        y = y * 1.01
    r = gradscope.Report(gradscope.Trace(graph=gradscope.graph_of(y)))
    view = choose_view(r.trace, max_nodes=50)
    assert len(view.nodes) <= 50


def test_text_summary_lists_modules_and_findings_section():
    report = gradscope.trace(CNN(), torch.randn(2, 3, 16, 16))
    text = report.to_text()
    assert "CNN.features.0" in text and "Conv2d" in text
    assert re.search(r"graph.*nodes.*edges.*saved activations", text)
    assert "findings: none" in text
