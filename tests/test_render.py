"""Renderers: DOT structure, escaping of user-controlled strings, collapsing, the size guard."""
import os
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
    assert 'label="<script>alert(\\"x\\")</script>\\\\N\\nline2: Linear  ·  saved' in dot
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
    assert 'label="features: Sequential  ·  saved ' in dot  # module total of saved bytes
    assert 'label="weight\\n(8, 3, 3, 3)\\n216 params"' in dot  # parameter: name, shape, count
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
    # this CNN's convs keep a bias that batch norm cancels: true, and only worth an info line
    assert "findings (1 info)" in text and "bias-before-norm" in text
    clean = gradscope.trace(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()),
                            torch.randn(2, 4))
    assert "findings: none" in clean.to_text()


def test_text_summary_folds_weightless_models_of_one_type():
    """``nn.CrossEntropyLoss()(out, y)`` in a loop makes a new object (a "model") per step."""
    from gradscope.render.text import render_text
    from gradscope.tracedata import Trace
    models = [{"label": "net", "type": "Net", "parameters": 10}] + [
        {"label": "CrossEntropyLoss" + (f"#{i}" if i > 1 else ""), "type": "CrossEntropyLoss",
         "parameters": 0} for i in range(1, 31)] + [{"label": "mse", "type": "MSELoss",
                                                    "parameters": 0}]
    text = render_text(Trace(models=models))
    model_lines = [line for line in text.splitlines() if line.startswith("  model")]
    assert model_lines == [
        "  model net: Net, 10 parameters",
        "  models CrossEntropyLoss ... CrossEntropyLoss#30: 30 CrossEntropyLoss objects without "
        "parameters",
        "  model mse: MSELoss, 0 parameters"]


def _gpt(layers=6):
    import sys

    from conftest import REPO
    sys.path.insert(0, REPO + "/samples")
    from clean_transformer import TinyGPT

    torch.manual_seed(0)
    return gradscope.trace(TinyGPT(layers=layers), torch.randint(0, 100, (2, 16)))


def test_fold_draws_repeated_blocks_once():
    from gradscope.render.dot import drawing_view

    report = _gpt(6)
    full, folded = drawing_view(report.trace), drawing_view(report.trace, fold=True)
    boxes = [v for v in folded.nodes if v.id.startswith("fold")]
    assert [b.lines for b in boxes] == [["blocks.1–5  x5", "same as blocks.0"]]
    assert len(folded.nodes) < len(full.nodes) / 3
    # every node is drawn once: in full, or inside the fold box
    drawn = {m for v in folded.nodes for m in v.members}
    assert drawn == {n.id for n in report.graph.nodes}
    assert any(v.cluster[:3] == ("TinyGPT", "blocks", "0") for v in folded.nodes)
    assert not any(v.cluster[:3] == ("TinyGPT", "blocks", "3") for v in folded.nodes)


def test_focus_draws_one_module_and_its_neighbours():
    from gradscope.render.dot import drawing_view

    report = _gpt(2)
    view = drawing_view(report.trace, focus="blocks.1.attn")
    inside = [v for v in view.nodes if v.kind != "context"]
    assert inside and all(v.cluster[:4] == ("TinyGPT", "blocks", "1", "attn") for v in inside)
    assert 1 <= sum(v.kind == "context" for v in view.nodes) <= 4
    assert drawing_view(report.trace, focus="TinyGPT.blocks.1.attn").nodes == view.nodes
    with pytest.raises(gradscope.InputError, match="blocks.1"):
        drawing_view(report.trace, focus="blocks.9")


@pytest.mark.dot
def test_cli_focus_and_fold(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from conftest import REPO
    from gradscope_cli.main import main

    monkeypatch.chdir(tmp_path)
    target = REPO + "/samples/clean_transformer.py:TinyGPT"
    r = CliRunner().invoke(main, ["trace", target, "--input", "2,8:long", "--fold", "--svg",
                                  "f.svg", "-q"])
    assert r.exit_code == 0 and "x1" in open("f.svg").read()
    r = CliRunner().invoke(main, ["trace", target, "--input", "2,8:long", "--focus", "nope",
                                  "--svg", "g.svg", "--json", "t.json", "-q"])
    assert r.exit_code == 2 and "--focus 'nope'" in r.output and os.path.exists("t.json")


def test_dot_honours_fold_and_focus_and_render_exits_2_on_an_unknown_module(tmp_path,
                                                                              monkeypatch):
    from click.testing import CliRunner

    from conftest import REPO
    from gradscope_cli.main import main

    monkeypatch.chdir(tmp_path)
    target = REPO + "/samples/clean_transformer.py:TinyGPT"
    r = CliRunner().invoke(main, ["trace", target, "--input", "2,8:long", "--json", "t.json",
                                  "--dot", "full.dot", "-q"])
    assert r.exit_code == 0, r.output
    full = open("full.dot").read()
    for flags, name in ((["--fold"], "fold.dot"), (["--focus", "blocks.1.attn"], "focus.dot")):
        r = CliRunner().invoke(main, ["render", "t.json", "--dot", name, *flags])
        assert r.exit_code == 0, r.output
        assert full.count(" -> ") > open(name).read().count(" -> ")  # a smaller drawing
    assert "x1" in open("fold.dot").read()
    r = CliRunner().invoke(main, ["render", "t.json", "--dot", "bad.dot", "--focus", "nope"])
    assert r.exit_code == 2 and "--focus 'nope'" in r.output
    assert open("bad.dot").read() == full  # still written, whole


def test_modules_tables_and_clusters_agree_on_saved_activations(tmp_path):
    """samples/layers_in_forward.py: every byte is saved by layers built inside the model's
    forward, so its own ops save nothing while its box in the graph says 1.2 MB. The tables
    show both figures, and the 'with submodules' one is the box's."""
    from click.testing import CliRunner

    from gradscope.render.view import human_bytes, saved_per_module
    from gradscope_cli.main import main

    from conftest import REPO

    out = tmp_path / "rep"
    r = CliRunner().invoke(main, ["trace", os.path.join(REPO, "samples", "layers_in_forward.py"),
                                  "--json", str(out / "trace.json"), "--dot",
                                  str(out / "graph.dot"), "--html", str(out / "report.html"),
                                  "--fail-on", "never"])
    assert r.exit_code == 0, r.output
    report = gradscope.Report.load(str(out / "trace.json"))
    saved = saved_per_module(report.trace)
    own, total = saved[("model", "")]
    loss = saved[("criterion", "")][0]
    assert own == 0 and total > 1_000_000
    assert total == report.trace.summary()["saved_bytes"] - loss  # everything but the loss's
    assert total == sum(saved[("model", name)][0] for name in ("<Conv2d#0>", "<Linear#1>"))
    dot = (out / "graph.dot").read_text()
    assert f'label="model: MyModel  ·  saved {human_bytes(total)}"' in dot
    html = (out / "report.html").read_text()
    assert (f'<td>model</td><td>MyModel</td><td class="num">3</td><td>(4, 10)</td>'
            f'<td class="num">0</td><td class="num">0 B</td>'
            f'<td class="num">{human_bytes(total)}</td>') in html
    assert "<th>saved by its own ops</th><th>saved with submodules</th>" in html
    text = report.to_text()
    row = [line for line in text.splitlines() if line.startswith("  model  ")][0]
    assert row.split()[-1] == "MB" and human_bytes(total) in row
    assert "saved (own ops)  saved (with submodules)" in text
