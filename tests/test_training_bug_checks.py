"""The training-bug checks as pure functions of hand-built Traces (no torch): each fires on the
records of the bug and stays silent on the records of the correct code that looks like it."""
from gradscope.checks import run_checks, select_checks
from gradscope.graph import Edge, Graph, Node
from gradscope.tracedata import Trace


def run(check_id, trace):
    return run_checks(trace, select_checks(only=[check_id]))


def step(n, **kw):
    row = {"step": n, "optimizer": "SGD", "optimizer_id": 1, "location": "t.py:9",
           "parameters": 2, "backward_calls": 1, "summed": {"1": 2}, "carried": [],
           "trainable": 2, "received": 2, "assigned": 0}
    row.update(kw)
    return row


def events(*kinds):
    out, b, s = [], 0, 0
    for kind in kinds:
        if kind == "forward-nograd":
            out.append({"kind": "forward", "model": "m", "training": True, "grad": False,
                        "location": "t.py:5"})
        elif kind == "backward-leaf":
            b += 1
            out.append({"kind": "backward", "index": b, "location": "t.py:7", "root": None,
                        "leaf_root": True})
        elif kind == "backward":
            b += 1
            out.append({"kind": "backward", "index": b, "location": "t.py:7",
                        "root": "NllLossBackward0"})
        elif kind == "step":
            s += 1
            out.append({"kind": "step", "index": s, "optimizer": "SGD", "optimizer_id": 1,
                        "location": "t.py:9"})
        else:
            out.append({"kind": kind, "location": f"t.py:{len(out) + 20}", "fn": "clip_grad_norm_",
                        "optimizer_ids": [1], "scheduler": "StepLR", "optimizer_id": 1,
                        "lr": 0.1, "optimizer": "SGD"})
    return out


PARAMS = [{"model": "m", "name": n, "module": n.rpartition(".")[0], "shape": [4, 4],
           "numel": 16, "requires_grad": True, "in_graph": True, "in_optimizer": True,
           "grad_seen": True, "aliases": []} for n in ("enc.weight", "head.weight")]


# -- dead-training --------------------------------------------------------------------------------
def test_dead_training_on_steps_that_received_nothing():
    t = Trace(parameters=PARAMS, accumulation=[step(k, received=0) for k in (1, 2, 3)],
              events=events(*["forward-nograd", "backward-leaf", "step"] * 3),
              models=[{"label": "m", "type": "Net", "parameters": 32, "training": True}])
    [f] = run("dead-training", t)
    assert f.severity == "error" and f.location == "t.py:5" and "torch.no_grad()" in f.message
    assert f.data["dead_steps"] == [1, 2, 3]


def test_idle_optimizers_of_other_heads_are_not_dead_training():
    # two heads, one optimizer each, both stepped every iteration, the tasks alternating
    acc = []
    evs = []
    for k in range(1, 9):
        evs += events("backward")
        evs[-1]["index"] = k
        for serial in (1, 2):
            evs.append({"kind": "step", "index": 2 * k - 2 + serial, "optimizer": "Adam",
                        "optimizer_id": serial, "location": "t.py:9"})
            acc.append(step(2 * k - 2 + serial, optimizer_id=serial,
                            received=2 if (k + serial) % 2 else 0))
    assert run("dead-training", Trace(accumulation=acc, events=evs)) == []


def test_dead_training_is_silent_on_live_steps_and_one_early_step():
    live = Trace(accumulation=[step(k) for k in range(1, 5)], events=events("backward", "step"))
    assert run("dead-training", live) == []
    early = Trace(accumulation=[step(1, received=0)] + [step(k) for k in range(2, 12)])
    assert run("dead-training", early) == []  # one step before training started
    frozen = Trace(accumulation=[step(k, trainable=0, received=0) for k in (1, 2)])
    assert run("dead-training", frozen) == []  # nothing trainable: frozen on purpose
    cleared = Trace(accumulation=[step(k, received=2, cleared=2) for k in (1, 2)])
    assert run("dead-training", cleared) == []  # zero-grad-before-step's business


def test_dead_training_names_the_cut_before_the_switch():
    t = Trace(accumulation=[step(1, received=0), step(2, received=0)],
              events=events("backward-leaf", "step", "backward-leaf", "step"),
              cuts=[{"op": "argmax", "location": "t.py:6", "in_forward": False, "order": 3,
                     "backwards": [0, 1], "upstream_modules": ["m.head"],
                     "upstream_parameters": 1}],
              grad_switches=[{"op": "requires_grad_()", "location": "t.py:7", "order": 4,
                              "backwards": [0, 1]}])
    [f] = run("dead-training", t)
    assert f.location == "t.py:6" and "`argmax`" in f.message and "t.py:7" in f.message


# -- graph-cut ------------------------------------------------------------------------------------
def test_graph_cut_takes_the_parameters_from_unused_parameter():
    params = [dict(PARAMS[0], grad_seen=False), PARAMS[1]]
    cut = {"op": "detach", "location": "t.py:12", "in_forward": True, "model": "m",
           "module": "", "upstream_modules": ["m.enc"], "order": 1, "backwards": [0]}
    t = Trace(parameters=params, backward_calls=2, cuts=[cut])
    [f] = run("graph-cut", t)
    assert f.module == "m.enc" and f.location == "t.py:12" and "`.detach()`" in f.message
    assert run("unused-parameter", t) == []
    t.cuts = [dict(cut, upstream_modules=["m.head"])]  # a cut that is not about m.enc
    assert run("graph-cut", t) == [] and len(run("unused-parameter", t)) == 1


# -- graph-kept-alive -----------------------------------------------------------------------------
def kept(**kw):
    row = {"kind": "chain", "name": "total", "scope": "global", "function": None,
           "location": "t.py:14", "source": "total += loss", "op": "AddBackward0",
           "looks": 3, "crossed_backwards": 2,
           "measures": [{"forwards": 3, "backward_calls": 2, "optimizer_steps": 2,
                         "nodes": 20, "saved_bytes": 0, "capped": False},
                        {"forwards": 9, "backward_calls": 8, "optimizer_steps": 8,
                         "nodes": 68, "saved_bytes": 0, "capped": False}]}
    row.update(kw)
    return row


def test_graph_kept_alive_reports_growth_per_step():
    [f] = run("graph-kept-alive", Trace(backward_calls=8, kept_graphs=[kept()]))
    assert f.data["nodes_per_step"] == 8.0 and "total += loss.item()" in f.hint


def test_graph_kept_alive_is_silent_within_one_step_and_without_growth():
    assert run("graph-kept-alive", Trace(backward_calls=8,
                                         kept_graphs=[kept(crossed_backwards=0)])) == []
    flat = kept(measures=[kept()["measures"][0], dict(kept()["measures"][0],
                                                      optimizer_steps=9)])
    assert run("graph-kept-alive", Trace(backward_calls=8, kept_graphs=[flat])) == []
    carried = {"kind": "carried", "model": "D", "arg": 0, "name": "fake", "made_by": "G",
               "location": "t.py:30", "backwards": [1], "count": 3}
    assert run("graph-kept-alive", Trace(backward_calls=4, kept_graphs=[carried])) == []


def test_a_freed_graph_with_a_carried_state_is_explained():
    carried = {"kind": "carried", "model": "lm", "arg": 1, "name": "state", "made_by": "lm",
               "location": "t.py:30", "backwards": [1], "count": 1, "op": "StackBackward0"}
    t = Trace(backward_calls=2, kept_graphs=[carried], events=events("backward", "backward"),
              failure={"kind": "graph-freed", "location": "t.py:7"})
    [f] = run("graph-kept-alive", t)
    assert f.severity == "error" and f.data["explains_failure"] and "`state`" in f.message


# -- step order -----------------------------------------------------------------------------------
def test_clip_after_step_and_before_backward():
    after = Trace(events=events("zero_grad", "backward", "step", "clip"))
    assert run("clip-grad-order", after)[0].data["why"] == "after-step"
    before = Trace(events=events("zero_grad", "clip", "backward", "step"))
    assert run("clip-grad-order", before)[0].data["why"] == "before-backward"
    right = Trace(events=events("zero_grad", "backward", "clip", "step") * 2)
    assert run("clip-grad-order", right) == []
    micro = Trace(events=events("backward", "clip", "backward", "clip", "step"))
    assert run("clip-grad-order", micro) == []


def test_scheduler_before_the_first_step_unless_gradscaler_skipped_it():
    early = Trace(events=events("zero_grad", "backward", "scheduler_step", "step"))
    [f] = run("scheduler-before-step", early)
    assert f.data["initial_lr"] == 0.1
    skipped = Trace(events=events("backward", "scaler_skip", "scheduler_step", "backward",
                                  "step", "scheduler_step"))
    assert run("scheduler-before-step", skipped) == []
    right = Trace(events=events("backward", "step", "scheduler_step"))
    assert run("scheduler-before-step", right) == []


def test_optimizer_recreated_needs_state_and_short_lives():
    def opt(k, steps=1, stateful=True):
        return {"id": k, "type": "Adam", "location": "t.py:4", "steps": steps,
                "stateful": stateful, "params": 4, "same_as": 1}
    assert len(run("optimizer-recreated", Trace(optimizers=[opt(k) for k in (1, 2, 3)]))) == 1
    stateless = [opt(k, stateful=False) for k in (1, 2, 3)]
    assert run("optimizer-recreated", Trace(optimizers=stateless)) == []
    stages = [opt(1, steps=50), opt(2, steps=50), opt(3, steps=50)]
    assert run("optimizer-recreated", Trace(optimizers=stages)) == []


# -- ops ------------------------------------------------------------------------------------------
def softmax_graph(dim, layer_after=False):
    nodes = [Node("n0", "NllLossBackward0", model="m"),
             Node("n1", "LogSoftmaxBackward0", shape=(8, 5)),
             Node("n2", "AddmmBackward0", model="m", module="out", shape=(8, 5))]
    edges = [Edge("n2", "n1"), Edge("n1", "n0")]
    if layer_after:  # softmax -> matmul -> loss: an attention softmax, not the class output
        nodes.append(Node("n3", "MmBackward0", shape=(8, 5)))
        edges = [Edge("n2", "n1"), Edge("n1", "n3"), Edge("n3", "n0")]
    return Trace(graph=Graph(nodes, edges, ["n0"]), node_args={"n1": {"dim": dim}})


def test_softmax_over_the_batch_dimension_feeding_the_loss():
    [f] = run("softmax-batch-dim", softmax_graph(0))
    assert f.module == "m.out" and "8 entries of dim 0, the batch" in f.message
    assert run("softmax-batch-dim", softmax_graph(1)) == []
    assert run("softmax-batch-dim", softmax_graph(-2)) != []  # dim -2 of (8, 5) is dim 0
    assert run("softmax-batch-dim", softmax_graph(0, layer_after=True)) == []


def test_dropout_ignores_eval_from_records():
    rec = {"fn": "dropout", "location": "t.py:3", "model": "m", "module": "", "p": 0.5,
           "count": 4, "eval_calls": 1, "passes_mode": False}
    assert len(run("dropout-ignores-eval", Trace(dropout_calls=[rec]))) == 1
    never_evaluated = dict(rec, eval_calls=0)
    assert len(run("dropout-ignores-eval", Trace(dropout_calls=[never_evaluated]))) == 1
    with_mode = dict(rec, eval_calls=0, passes_mode=True)
    assert run("dropout-ignores-eval", Trace(dropout_calls=[with_mode])) == []


def test_forward_called_directly_severity_follows_the_hooks_skipped():
    call = {"model": "m", "module": "", "type": "Net", "method": "forward",
            "location": "t.py:8", "calls": 3, "hooks": []}
    assert run("forward-called-directly", Trace(direct_calls=[call]))[0].severity == "info"
    hooked = dict(call, hooks=["torch.nn.utils.prune.L1Unstructured"])
    assert run("forward-called-directly", Trace(direct_calls=[hooked]))[0].severity == \
        "warning"
    method = dict(call, method="encode")
    assert run("forward-called-directly", Trace(direct_calls=[method])) == []


def test_merging_ranks_keeps_rank_0s_records_and_their_findings():
    from gradscope.merge import merge_reports
    from gradscope.report import Report
    params = [dict(PARAMS[0], grad_seen=False), PARAMS[1]]
    cut = {"op": "detach", "location": "t.py:12", "in_forward": True, "model": "m",
           "module": "", "upstream_modules": ["m.enc"], "order": 1, "backwards": [0]}
    ranks = [Trace(parameters=params, backward_calls=2, cuts=[cut],
                   run={"rank": r, "world_size": 2, "status": "ok"}) for r in (0, 1)]
    merged = merge_reports([Report(t) for t in ranks]).trace
    assert merged.cuts == [cut] and [f.check for f in merged.findings] == ["graph-cut"]
    assert "rank" not in merged.findings[0].data  # found on rank 0's own records
