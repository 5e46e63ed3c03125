"""JSON round trip, byte-for-byte determinism, and golden DOT/JSON files.

Regenerate the golden files with ``GRADSCOPE_REGEN_GOLDEN=1 pytest tests/test_json_and_golden.py``
and review the diff.
"""
import json
import os
import subprocess
import sys

import networkx as nx
import pytest
import torch
from torch import nn

import gradscope
from gradscope import Report, Trace

from conftest import REPO
from models import zoo

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def _golden_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    return model, torch.randn(5, 4)


def _normalise(text):
    d = json.loads(text)
    d["gradscope"] = d["torch"] = None
    for p in d["parameters"]:
        p["grad_norm"] = None  # float digits may differ across BLAS builds; structure may not
    return d


def _check_golden(name, text):
    path = os.path.join(GOLDEN, name)
    if os.environ.get("GRADSCOPE_REGEN_GOLDEN"):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    with open(path, encoding="utf-8") as f:
        expected = f.read()
    if name.endswith(".json"):
        assert _normalise(text) == _normalise(expected)
    else:
        assert text == expected


def test_golden_json_and_dot():
    model, x = _golden_model()
    report = gradscope.trace(model, x)
    _check_golden("mlp_bn.json", report.to_json())
    _check_golden("mlp_bn.dot", report.to_dot())
    _check_golden("mlp_bn_depth0.dot", report.to_dot(depth=0))


@pytest.mark.parametrize("name,model,inputs", zoo(), ids=[z[0] for z in zoo()])
def test_json_round_trip_is_equal(name, model, inputs, tmp_path):
    report = gradscope.trace(model, *inputs)
    path = str(tmp_path / "trace.json")
    report.save(path)
    loaded = Report.load(path)
    assert loaded.trace.to_dict() == report.trace.to_dict()
    assert loaded.graph == report.graph
    assert loaded.to_dot() == report.to_dot()
    # the required schema keys are all there
    d = json.loads(open(path).read())
    assert {"gradscope", "graph", "findings", "modules", "parameters", "backward_calls",
            "optimizer_steps"} <= set(d)
    assert {"id", "op", "module", "shape", "dtype", "device", "param", "saved"} <= set(
        d["graph"]["nodes"][0])
    assert set(d["graph"]["edges"][0]) == {"src", "dst"}


def test_to_networkx_has_every_node_and_edge():
    model, x = _golden_model()
    report = gradscope.trace(model, x)
    G = report.graph.to_networkx()
    assert G.number_of_nodes() == len(report.graph.nodes)
    assert G.number_of_edges() == len(set(report.graph.edges))
    assert nx.is_directed_acyclic_graph(G)
    root = report.graph.roots[0]
    assert G.out_degree(root) == 0  # edges run toward the loss
    leaf = next(n.id for n in report.graph.nodes if n.param == "0.weight")
    assert G.nodes[leaf]["leaf"] == "parameter" and G.in_degree(leaf) == 0
    assert nx.has_path(G, leaf, root)


def test_same_program_same_bytes(tmp_path):
    outs = []
    for k in range(2):
        d = tmp_path / str(k)
        subprocess.run([sys.executable, "-m", "gradscope", "trace", "samples/clean_transformer.py",
                        "--json", str(d / "t.json"), "--dot", str(d / "g.dot"), "-q"],
                       cwd=REPO, check=True, capture_output=True)
        outs.append(((d / "t.json").read_bytes(), (d / "g.dot").read_bytes()))
    assert outs[0] == outs[1]
    assert b"0x" not in outs[0][1]  # no memory addresses anywhere


def test_from_dict_rejects_other_json():
    with pytest.raises(ValueError, match="not a gradscope trace"):
        Trace.from_dict({"nodes": []})


def test_fast_json_lines_equal_json_dumps():
    from gradscope.graph import Edge, Node, SavedTensor, edge_json_lines, node_json_lines

    nodes = [
        Node("n0", "AddBackward0", 'we"ird\\mod\n<x>', "model", (2, 3), "float32", "cpu"),
        Node("n1", "AccumulateGrad", "", "m", (3,), "bfloat16", "cuda:0", param="a.b",
             leaf="parameter"),
        Node("n2", None, None, None, None, None, None, leaf="unregistered",
             saved=[SavedTensor("self", (4, 4), "float32", 64, True),
                    SavedTensor("other", None, "float32", 64, False)]),
        Node("weird id", "X\u00e9", "\u6a21\u5757", "m", (), "int64", "meta", outputs=3),
    ]
    for n, line in zip(nodes, node_json_lines(nodes)):
        assert line == json.dumps(n.to_dict(), sort_keys=True)
    edges = [Edge("n0", "n1"), Edge("weird id", "n2")]
    for e, line in zip(edges, edge_json_lines(edges)):
        assert line == json.dumps({"src": e.src, "dst": e.dst}, sort_keys=True)


def test_saved_files_are_ordinary_files_and_replace_atomically(tmp_path):
    model, x = _golden_model()
    report = gradscope.trace(model, x)
    path = tmp_path / "trace.json"
    path.write_text("old")
    old_umask = os.umask(0o022)
    try:
        report.save(str(path))
    finally:
        os.umask(old_umask)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert json.loads(path.read_text())["gradscope"]
    assert [p.name for p in tmp_path.iterdir()] == ["trace.json"]  # no temp file left behind


def test_loading_fills_missing_node_keys_and_checks_every_id():
    from gradscope.graph import Edge, Graph

    # A hand-written file: the fast path (all keys present) does not apply to these nodes.
    g = Graph.from_dict({"roots": ["n0"], "nodes": [{"id": "n0", "op": "SumBackward0"},
                                                   {"id": "n1", "shape": [2], "saved": []}],
                         "edges": [{"src": "n1", "dst": "n0"}]})
    assert g.nodes[0].shape is None and g.nodes[0].outputs == 1 and g.nodes[0].saved == ()
    assert g.nodes[1].shape == (2,) and g.edges == [Edge("n1", "n0")]
    good = {"id": "n0", "op": None, "module": None, "model": None, "shape": None, "dtype": None,
            "device": None, "param": None, "leaf": None, "saved": [], "outputs": 1}
    for bad in ({"nodes": [dict(good, id='n0"];x[URL="j')]},
                {"nodes": [good], "edges": [{"src": "1n", "dst": "n0"}]},
                {"nodes": [good], "edges": [{"src": "n0", "dst": "n0\n"}]},
                {"nodes": [good], "roots": [3]}):
        with pytest.raises(ValueError, match="invalid node id"):
            Graph.from_dict(bad)


def test_fast_json_lines_with_mixed_ids_and_generators():
    from gradscope.graph import Edge, Node, edge_json_lines, node_json_lines

    nodes = [Node("n0", "A"), Node("caf\u00e9", "B"), Node("", "C")]
    lines = list(node_json_lines(iter(nodes)))
    assert lines == [json.dumps(n.to_dict(), sort_keys=True) for n in nodes]
    edges = [Edge("n0", "caf\u00e9"), Edge("n1", "")]
    assert list(edge_json_lines(iter(edges))) == [
        json.dumps({"src": e.src, "dst": e.dst}, sort_keys=True) for e in edges]
    assert list(edge_json_lines([Edge("n0", "n1")])) == ['{"dst": "n1", "src": "n0"}']
