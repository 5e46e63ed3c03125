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
    # the required schema keys are all there, and the file is what to_dict() says
    d = json.loads(open(path).read())
    assert {"gradscope", "graph", "findings", "modules", "parameters", "backward_calls",
            "optimizer_steps"} <= set(d)
    g = d["graph"]
    assert g["nodes"] == len(report.graph) and "id" not in g  # ids are n0, n1, ...
    for key in ("op", "module", "model", "shape", "dtype", "device", "param", "leaf",
                "outputs"):
        assert len(g[key]) == g["nodes"], key
    assert set(g["edges"]) == {"src", "dst"} and len(g["edges"]["src"]) == len(report.graph.edges)
    assert g == report.graph.to_dict()


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


def test_saved_tables_in_any_row_order_read_back_and_total_once_per_storage():
    """The writer puts saved rows in node order (read back grouped in bulk); a file from
    elsewhere may not: both give the same graph. Equal rows become one shared record, and the
    total counts each counted row once per use."""
    from gradscope.graph import Graph

    base = {"nodes": 4, "roots": [0], "op": ["A", "B", "C", "D"],
            "edges": {"src": [1, 2, 3], "dst": [0, 0, 1]}}
    rows = [(0, "self", [2, 2], "float32", 16, True), (0, "other", None, "float32", 8, False),
            (2, "result", [2, 2], "float32", 16, True), (3, "self", [2, 2], "float32", 16, True),
            (3, "self", [2, 2], "float32", 16, True)]

    def table(order):
        picked = [rows[k] for k in order]
        return dict(base, saved={key: [r[j] for r in picked] for j, key in enumerate(
            ("node", "name", "shape", "dtype", "bytes", "counted"))})

    in_order = Graph.from_dict(table([0, 1, 2, 3, 4]))
    shuffled = Graph.from_dict(table([3, 0, 2, 4, 1]))  # node 0's rows keep their order
    assert in_order == shuffled
    assert [[s.name for s in saved] for saved in in_order.column("saved")] == \
        [["self", "other"], [], ["result"], ["self", "self"]]
    a, b = in_order.column("saved")[3]
    assert a is b and a.shape == (2, 2)
    assert in_order.saved_bytes == 16 * 4 and in_order.node("n1").saved_bytes == 0
    d = in_order.to_dict()
    assert d["saved"]["node"] == [0, 0, 2, 3, 3] and d["saved"]["shape"][1] is None
    assert d["saved"]["shape"][0] == [2, 2] and Graph.from_dict(d) == in_order
    assert d["saved"]["shape"][0] is not d["saved"]["shape"][2]  # (plain data: one list each)


def test_hand_built_saved_records_write_as_they_are():
    """What the bulk writer must not merge or refuse: a list for a shape, equal shapes of other
    types, None for "nothing saved" in a column."""
    from gradscope.graph import Graph, Node, SavedTensor

    g = Graph([Node("a", "X", saved=[SavedTensor("s", [2, 3], "f", 24, True),
                                     SavedTensor("t", (2.0, 3), "f", 24, True),
                                     SavedTensor("u", (2, 3), "f", 24, False)])], [], ["a"])
    assert g.saved_bytes == 48
    table = json.loads(Trace(graph=g).to_json())["graph"]["saved"]
    assert table["shape"] == [[2, 3], [2.0, 3], [2, 3]]
    assert [type(v) for v in table["shape"][1]] == [float, int]
    g = Graph.from_columns(2, {"op": ["a", "b"], "saved": [
        None, (SavedTensor("s", (2,), "f", 8, True),)]}, [], [], [0])
    assert g.saved_bytes == 8 and g.to_dict()["saved"]["node"] == [1]


def test_columns_round_trip_hand_built_graphs_with_any_ids():
    from gradscope.graph import Edge, Graph, Node, SavedTensor

    nodes = [
        Node("n0", "AddBackward0", 'we"ird\\mod\n<x>', "model", (2, 3), "float32", "cpu"),
        Node("p1", "AccumulateGrad", "", "m", (3,), "bfloat16", "cuda:0", param="a.b",
             leaf="parameter"),
        Node("n2", None, None, None, None, None, None, leaf="unregistered",
             saved=[SavedTensor("self", (4, 4), "float32", 64, True),
                    SavedTensor("other", None, "float32", 64, False)]),
        Node("x", "X\u00e9", "\u6a21\u5757", "m", (), "int64", "meta", outputs=3),
    ]
    g = Graph(nodes, [Edge("p1", "n0"), ("n2", "n0"), ("x", "n2")], ["n0"])
    d = json.loads(json.dumps(g.to_dict()))
    assert d["id"] == ["n0", "p1", "n2", "x"] and d["edges"] == {"src": [1, 2, 3],
                                                                 "dst": [0, 0, 2]}
    back = Graph.from_dict(d)
    assert back == g and back.nodes == nodes and back.edges == g.edges
    assert back.node("n2").saved_bytes == 64 and back.saved_bytes == 64
    assert back.nodes[2].saved[1].shape is None and back.roots == ["n0"]
    # the file writer's lines hold the same object
    from gradscope.graph import graph_json_lines
    assert json.loads("{" + ",".join(graph_json_lines(g)) + "}") == d


def test_graph_rows_are_made_from_the_columns():
    from gradscope.graph import Edge, Graph, Node

    with pytest.raises(ValueError, match="names node 'n9'"):
        Graph([Node("n0", "A")], [("n9", "n0")], ["n0"])
    g = Graph.from_columns(3, {"op": ["A", "B", "C"]}, [1, 2], [0, 0], [0])
    assert g.nodes == [Node("n0", "A"), Node("n1", "B"), Node("n2", "C")]
    assert g.edges == [Edge("n1", "n0"), Edge("n2", "n0")] and g.roots == ["n0"]
    assert g.index_of("n2") == 2 and g.node("n1").op == "B"
    for missing in ("n3", "n01", "x", "n-1"):
        with pytest.raises(KeyError):
            g.index_of(missing)
    assert g.column("outputs") == [1, 1, 1] and g.column("saved") == [(), (), ()]
    assert g.leaf_count() == 0 and g.saved_bytes == 0 and g.op_counts() == {"A": 1, "B": 1,
                                                                              "C": 1}


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


def test_loading_schema_1_fills_missing_node_keys_and_checks_every_id():
    from gradscope.graph import Edge, Graph

    # Schema 1 (an object per node), hand-written: missing keys take their defaults.
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


def test_loading_columns_checks_every_value():
    from gradscope.graph import Graph

    good = {"nodes": 2, "roots": [0], "op": ["SumBackward0", "AccumulateGrad"],
            "shape": [[], [2]], "outputs": [1, 1],
            "edges": {"src": [1], "dst": [0]}}
    g = Graph.from_dict(good)
    assert g.nodes[1].shape == (2,) and g.nodes[0].module is None and g.roots == ["n0"]
    bad_cases = [
        (dict(good, nodes=-1), "number of nodes"),
        ({"nodes": 10 ** 9}, "'op' must be a list"),  # a 20-byte file claiming a huge graph
        (dict(good, op=["A"]), "list of 2 values"),
        (dict(good, op=["A", 3]), "strings or nulls"),
        (dict(good, shape=[[], ["2"]]), "lists of integers"),
        # (shapes are made tuples in bulk and their values checked once per distinct shape:
        # nothing but a list of ints or a null gets through)
        (dict(good, shape=[[], [[2]]]), "lists of integers"),
        (dict(good, shape=[[], [2.0]]), "lists of integers"),
        (dict(good, shape=[[], [True]]), "lists of integers"),
        (dict(good, shape=[[], "2"]), "lists of integers"),
        (dict(good, shape=[[], {}]), "lists of integers"),
        (dict(good, shape=[None, 2]), "lists of integers"),
        (dict(good, shape=[[2], [2.0]]), "lists of integers"),  # equal to an earlier shape
        (dict(good, shape=[[1], [True]]), "lists of integers"),
        (dict(good, outputs=[1, "1"]), "integers"),
        (dict(good, edges={"src": [2], "dst": [0]}), "positions from 0 to 1"),
        (dict(good, edges={"src": [1], "dst": [-1]}), "positions from 0 to 1"),
        (dict(good, edges={"src": [1, 0], "dst": [0]}), "different lengths"),
        (dict(good, roots=[True]), "positions"),
        (dict(good, id=["n0", 'n1"];x[URL="j']), "invalid node id"),
        (dict(good, id=["a", "a"]), "same id twice"),
        (dict(good, saved={"node": [0], "name": ["x"], "shape": [[1]], "dtype": ["float32"],
                           "bytes": ["4"], "counted": [True]}), "bytes integers"),
    ]
    for bad, message in bad_cases:
        with pytest.raises(ValueError, match=message):
            Graph.from_dict(bad)


def test_a_schema_1_file_still_loads_renders_and_diffs(tmp_path):
    """trace.json files written before schema 2 (one object per graph node) stay readable:
    the same graph as the schema 2 file of the same run, rendered and diffed alike."""
    from click.testing import CliRunner

    from cli.main import main

    old = Report.load(os.path.join(GOLDEN, "mlp_bn_schema1.json"))
    new = Report.load(os.path.join(GOLDEN, "mlp_bn.json"))
    assert old.graph == new.graph and old.graph.nodes == new.graph.nodes
    assert old.to_dot() == new.to_dot()
    result = CliRunner().invoke(main, ["diff", os.path.join(GOLDEN, "mlp_bn_schema1.json"),
                                       os.path.join(GOLDEN, "mlp_bn.json")])
    assert result.exit_code == 0 and "no changes" in result.output, result.output
