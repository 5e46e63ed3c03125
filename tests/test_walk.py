"""The autograd walk: completeness against an independent walk, ids, leaves, saved tensors."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradscope
from gradscope.graph import LEAF_INPUT, LEAF_PARAMETER, LEAF_UNREGISTERED
from gradscope.tracing.walk import walk_autograd_graph

from conftest import independent_walk
from models import zoo


def _loss(out):
    if isinstance(out, torch.Tensor):
        return out.sum()
    if isinstance(out, dict):
        return sum(v.sum() for v in out.values())
    return sum(o.sum() for o in out)


@pytest.mark.parametrize("name,model,inputs", zoo(), ids=[z[0] for z in zoo()])
def test_node_and_edge_counts_match_an_independent_walk(name, model, inputs):
    loss = _loss(model(*inputs))
    graph = gradscope.graph_of(loss, params=dict(model.named_parameters()))
    nodes, edges = independent_walk(loss)
    assert len(graph.nodes) == nodes
    assert len(graph.edges) == edges
    # every trainable parameter that feeds the loss appears exactly once, by name
    names = sorted(n.param for n in graph.nodes if n.leaf == LEAF_PARAMETER)
    assert len(names) == len(set(names))
    used = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(names) == used


def test_ids_are_a_counter_in_walk_order_and_stable():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(2, 3)
    g1 = gradscope.graph_of(model(x).sum())
    g2 = gradscope.graph_of(model(x).sum())
    assert [n.id for n in g1.nodes] == [f"n{i}" for i in range(len(g1.nodes))]
    assert [(n.id, n.op) for n in g1.nodes] == [(n.id, n.op) for n in g2.nodes]
    assert g1.edges == g2.edges
    assert g1.roots == ["n0"] and g1.nodes[0].op == "SumBackward0"


def test_accumulate_grad_leaves_are_marked():
    w = nn.Parameter(torch.randn(3))
    stray = torch.randn(3, requires_grad=True)
    x = torch.randn(3, requires_grad=True)
    y = (w * stray * x).sum()
    g = walk_autograd_graph([y], params={id(w): ("m", "w")}, inputs={id(x)})
    leaves = {n.leaf: n for n in g.nodes if n.op == "AccumulateGrad"}
    assert set(leaves) == {LEAF_PARAMETER, LEAF_UNREGISTERED, LEAF_INPUT}
    assert leaves[LEAF_PARAMETER].param == "w" and leaves[LEAF_PARAMETER].model == "m"
    assert leaves[LEAF_UNREGISTERED].param is None
    assert leaves[LEAF_UNREGISTERED].shape == (3,)


def test_edges_run_from_producer_to_consumer():
    w = nn.Parameter(torch.randn(2, 2))
    y = (w @ w).relu().sum()
    g = gradscope.graph_of(y, params={"w": w})
    ops = {n.id: n.op for n in g.nodes}
    pairs = {(ops[e.src], ops[e.dst]) for e in g.edges}
    assert ("AccumulateGrad", "MmBackward0") in pairs
    assert ("MmBackward0", "ReluBackward0") in pairs
    assert ("ReluBackward0", "SumBackward0") in pairs


def test_shapes_dtypes_and_output_counts():
    x = torch.randn(4, 6, requires_grad=True)
    a, b = x.split(3, dim=1)
    y = (a.double() * 2).sum() + b.sum()
    g = gradscope.graph_of(y)
    by_op = {n.op: n for n in g.nodes}
    assert by_op["SplitBackward0"].outputs == 2
    assert by_op["SplitBackward0"].shape == (4, 3)
    assert by_op["MulBackward0"].dtype == "float64"
    assert by_op["MulBackward0"].device == "cpu"
    assert by_op["AccumulateGrad"].shape == (4, 6)


def test_saved_tensors_count_each_storage_once_and_skip_parameters():
    lin = nn.Linear(8, 8)
    x = torch.randn(16, 8)
    h = torch.relu(lin(x))       # relu saves its result
    y = (h * h).sum()            # mul saves h twice: the same storage as relu's result
    g = gradscope.graph_of(y, params=dict(lin.named_parameters()))
    relu = next(n for n in g.nodes if n.op == "ReluBackward0")
    mul = next(n for n in g.nodes if n.op == "MulBackward0")
    h_bytes = 16 * 8 * 4
    # BFS reaches mul first: it counts h once; relu's saved result is the same storage
    assert mul.saved_bytes == h_bytes
    assert relu.saved_bytes == 0 and relu.saved and relu.saved[0].counted is False
    addmm = next(n for n in g.nodes if n.op == "AddmmBackward0")
    names = {s.name for s in addmm.saved}
    assert "mat1" in names
    # the weight is a parameter: saved by addmm but not activation memory
    assert addmm.saved_bytes == 16 * 8 * 4
    assert g.saved_bytes == 2 * h_bytes


def test_a_node_saving_activations_and_then_a_parameter_counts_its_activations():
    # layer_norm saves input, mean and rstd (result1, result2: read first, by name), then the
    # weight itself, which sends the node to the general reader: the activations are still
    # counted, once
    w = nn.Parameter(torch.ones(8))
    x = torch.randn(4, 8, requires_grad=True)
    g = gradscope.graph_of(F.layer_norm(x, (8,), weight=w).sum(), params={"w": w})
    norm = next(n for n in g.nodes if n.op.startswith("NativeLayerNormBackward"))
    counted = {s.name: s.bytes for s in norm.saved if s.counted}
    assert counted == {"input": 4 * 8 * 4, "result1": 4 * 4, "result2": 4 * 4}
    assert [s.counted for s in norm.saved if s.name == "weight"] == [False]
    assert g.saved_bytes == 4 * 8 * 4 + 2 * 4 * 4


def test_a_node_read_partly_before_a_hooked_tensor_counts_its_plain_tensors_once():
    # mul saves other (plain, read first) and self, here held by a saved-tensor hook: the
    # node goes to the general reader, which must still count other (once, not as seen)
    a = torch.randn(4, 3, requires_grad=True) * 1.0
    b = torch.randn(4, 3, requires_grad=True) * 1.0
    y = a * b
    y.grad_fn._raw_saved_self.register_hooks(lambda t: t.clone(), lambda t: t)
    g = gradscope.graph_of(y.sum())
    node = g.nodes[1]
    assert node.op == "MulBackward0"
    assert [(s.name, s.counted) for s in node.saved] == [
        ("other", True), ("self (packed by a hook)", True)]
    assert node.saved_bytes == 2 * 4 * 3 * 4


def test_activations_on_the_meta_device_count_and_parameters_do_not():
    # Every meta storage has address 0: a (device, data_ptr) key took them all for one storage,
    # the weight's, and counted no activation. A storage is told by its own object now.
    lin = nn.Linear(3, 3, device="meta")
    x = torch.randn(2, 3, device="meta", requires_grad=True)
    g = gradscope.graph_of(torch.relu(lin(x)).sum(), params=dict(lin.named_parameters()))
    relu = next(n for n in g.nodes if n.op == "ReluBackward0")
    addmm = next(n for n in g.nodes if n.op == "AddmmBackward0")
    assert [(s.name, s.bytes, s.counted) for s in relu.saved] == [("result", 2 * 3 * 4, True)]
    assert {s.name: (s.bytes, s.counted) for s in addmm.saved} == {
        "mat1": (2 * 3 * 4, True), "mat2": (3 * 3 * 4, False)}  # the weight: never counted
    assert g.saved_bytes == 2 * (2 * 3 * 4)


def test_custom_autograd_function_saved_tensors():
    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 2 * x * grad

    x = torch.randn(5, requires_grad=True)
    g = gradscope.graph_of(Square.apply(x * 1.0).sum())
    node = next(n for n in g.nodes if n.op == "SquareBackward")
    assert node.saved and node.saved[0].shape == (5,)


def test_long_chain_walks_without_recursion():
    x = torch.zeros(1, requires_grad=True)
    y = x
    for _ in range(20_000):  # torchviz's recursive walk dies at a few thousand
        y = y + 1
    g = gradscope.graph_of(y)
    assert len(g.nodes) == 20_001
    assert len(g.edges) == 20_000


def test_multiple_roots_and_shared_subgraph():
    w = nn.Parameter(torch.randn(3))
    h = w * 2
    a, b = h.sum(), (h ** 2).sum()
    g = gradscope.graph_of(a, b, params={"w": w})
    assert len(g.roots) == 2
    assert sum(1 for n in g.nodes if n.op == "MulBackward0") == 1  # shared, walked once
    nodes, edges = independent_walk(a, b)
    assert len(g.nodes) == nodes and len(g.edges) == edges


def test_graph_of_rejects_what_has_no_graph():
    with pytest.raises(gradscope.InputError, match="no tensor given has a grad_fn"):
        gradscope.graph_of(torch.randn(3))
    with pytest.raises(gradscope.InputError, match="expects tensors"):
        gradscope.graph_of([1, 2])


def test_structure_only_walk_matches_the_full_one():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    y = model(torch.randn(2, 3)).sum()
    full = gradscope.graph_of(y, params=dict(model.named_parameters()))
    bare = gradscope.graph_of(y, params=dict(model.named_parameters()), shapes=False)
    assert [(n.id, n.op, n.param) for n in bare.nodes] == [(n.id, n.op, n.param) for n in full.nodes]
    assert bare.edges == full.edges
    assert all(n.saved == () for n in bare.nodes)
    assert all(n.shape is None for n in bare.nodes if n.leaf is None)


def _bfs_edges(*roots):
    """Node ops and edges in breadth-first order, ids from a counter: written apart from the
    walk (a dict keyed by id(), no fast paths) to check its set-and-lazy-index bookkeeping."""
    order, ids = [], {}
    for r in roots:
        if id(r.grad_fn) not in ids:
            ids[id(r.grad_fn)] = f"n{len(order)}"
            order.append(r.grad_fn)
    edges = []
    for fn in order:
        for nxt, _ in fn.next_functions:
            if nxt is None:
                continue
            if id(nxt) not in ids:
                ids[id(nxt)] = f"n{len(order)}"
                order.append(nxt)
            edges.append((ids[id(nxt)], ids[id(fn)]))
    return [type(fn).__name__ for fn in order], edges


def _shared_everywhere():
    # A weight reused at every step and a residual path: most edges reach a node seen before.
    w = nn.Parameter(torch.randn(3, 3))
    h = torch.randn(2, 3, requires_grad=True)
    skip = h
    for _ in range(40):
        h = torch.tanh(h @ w) + skip
        skip = h * 0.5
    return h.sum()


@pytest.mark.parametrize("name,model,inputs", zoo(), ids=[z[0] for z in zoo()])
def test_edges_and_ids_match_a_plain_breadth_first_walk(name, model, inputs):
    loss = _loss(model(*inputs))
    ops, edges = _bfs_edges(loss)
    for shapes in (True, False):
        g = gradscope.graph_of(loss, shapes=shapes)
        assert [n.op for n in g.nodes] == ops
        assert [tuple(e) for e in g.edges] == edges


def test_nodes_reached_many_times_keep_one_id():
    loss = _shared_everywhere()
    ops, edges = _bfs_edges(loss)
    g = gradscope.graph_of(loss)
    assert [n.op for n in g.nodes] == ops and [tuple(e) for e in g.edges] == edges
    assert len({n.id for n in g.nodes}) == len(g.nodes)


def test_roots_reached_from_other_roots_keep_their_positions():
    # Edges that only find new nodes (a tree) and edges that reach a root given later, or a
    # node of another root's graph, take different paths to their positions.
    x = torch.randn(3, requires_grad=True)
    y = x * 2
    z = y + 1
    w = torch.randn(3, requires_grad=True) * 3
    for roots in ((z, y), (y, z), (z, w), (w, z, y), (z.sum(), y.sum(), z)):
        ops, edges = _bfs_edges(*roots)
        g = gradscope.graph_of(*roots)
        assert [n.op for n in g.nodes] == ops and [tuple(e) for e in g.edges] == edges


def test_a_shape_the_fast_path_cannot_read_keeps_dtype_and_device():
    # A nested tensor's metadata has no single shape: the slow path keeps the rest.
    nt = torch.nested.nested_tensor([torch.randn(2, 3), torch.randn(4, 3)], requires_grad=True)
    y = nt * 2
    g = gradscope.graph_of(y)
    mul = g.nodes[0]
    assert mul.op == "MulBackward0" and mul.shape is None
    assert mul.dtype == "float32" and mul.device == "cpu" and mul.outputs == 1
