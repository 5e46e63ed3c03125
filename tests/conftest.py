import importlib
import os
import shutil
import sys
import warnings

import pytest
import torch
from torch.overrides import _get_current_function_mode_stack

sys.path.insert(0, os.path.dirname(__file__))  # tests/models.py

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def independent_walk(*roots):
    """Count autograd nodes and edges reachable from roots, written separately from gradscope."""
    seen = {}
    edges = 0
    todo = [r.grad_fn for r in roots if r.grad_fn is not None]
    for fn in todo:
        seen[id(fn)] = fn
    while todo:
        fn = todo.pop()
        for nxt, _ in fn.next_functions:
            if nxt is None:
                continue
            edges += 1
            if id(nxt) not in seen:
                seen[id(nxt)] = nxt
                todo.append(nxt)
    return len(seen), edges


def graph_nodes(d):
    """The graph of a JSON report (a dict) as one dict per node, ``id`` and ``saved`` included."""
    from gradscope.graph import Graph

    return [n.to_dict() for n in Graph.from_dict(d["graph"]).nodes]


def op_watch_attributes():
    """Every attribute the op watch wraps while a trace runs, as it is now (by identity)."""
    from gradscope.tracing.oppatches import targets

    return [(owner, name, vars(owner).get(name), getattr(owner, name))
            for owner, name, _ in targets()] + [
        (torch.Tensor, name, vars(torch.Tensor).get(name), None)
        for name in ("data", "requires_grad")]


def global_hook_counts():
    """How many process-wide hooks torch currently holds (all must be back to 0 after us)."""
    import torch.nn.modules.module as m
    import torch.optim.optimizer as o

    return {
        "forward_pre": len(m._global_forward_pre_hooks),
        "forward": len(m._global_forward_hooks),
        "backward": len(m._global_backward_hooks),
        "backward_pre": len(m._global_backward_pre_hooks),
        "always_called": len(m._global_forward_hooks_always_called),
        "param_reg": len(m._global_parameter_registration_hooks),
        "module_reg": len(m._global_module_registration_hooks),
        "buffer_reg": len(m._global_buffer_registration_hooks),
        "opt_pre": len(o._global_optimizer_pre_hooks),
        "opt_post": len(o._global_optimizer_post_hooks),
    }


def _step_order_attributes():
    import torch.nn.utils as utils
    import torch.nn.utils.clip_grad as clip_grad
    from torch.optim import lr_scheduler
    return (utils.clip_grad_norm_, utils.clip_grad_value_, clip_grad.clip_grad_norm_,
            clip_grad.clip_grad_value_, lr_scheduler.LRScheduler.__dict__["step"],
            lr_scheduler.ReduceLROnPlateau.__dict__["step"],
            torch.optim.Optimizer.__dict__["__init__"], torch.amp.GradScaler.__dict__["step"],
            torch.amp.GradScaler.__dict__["scale"],
            torch.nn.Module.__dict__["load_state_dict"], vars(clip_grad).get("_clip_grads_with_norm_"),
            vars(clip_grad).get("_group_tensors_by_device_and_dtype"),
            vars(utils).get("clip_grads_with_norm_"))


def import_extra(name):
    """An optional library the integrations need (``make test`` installs them): skipped where it
    is missing, but a failure in CI, where a skip would hide a broken install step."""
    if os.environ.get("CI"):
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"{name} is not installed (make test installs it)")


@pytest.fixture
def no_leaks():
    """Asserts that the test leaves no global hook and no patched autograd function behind."""
    before = global_hook_counts()
    backward, grad = torch.autograd.backward, torch.autograd.grad
    zero = (torch.optim.Optimizer.__dict__["zero_grad"], torch.nn.Module.__dict__["zero_grad"])
    modes = list(_get_current_function_mode_stack())
    wrapped = op_watch_attributes()
    show = warnings._showwarnmsg
    patched = _step_order_attributes()
    call_impl = torch.nn.Module.__dict__["_call_impl"]
    yield
    assert torch.nn.Module.__dict__["_call_impl"] is call_impl  # a trace's module-call path
    assert _step_order_attributes() == patched  # clipping, schedulers, optimizers, GradScaler
    assert list(_get_current_function_mode_stack()) == modes
    now = op_watch_attributes()  # every torch function the op watch wrapped is back
    assert [w for w, b in zip(now, wrapped) if w[2] is not b[2] or w[3] is not b[3]] == []
    assert warnings._showwarnmsg is show  # and its warning relocation
    assert not [f for f in warnings.filters if "gradscope" in str(getattr(f[3], "pattern", f[3]))
                or "global hooks" in str(getattr(f[1], "pattern", f[1]))]
    assert global_hook_counts() == before
    assert torch.autograd.backward is backward
    assert torch.autograd.grad is grad
    assert (torch.optim.Optimizer.__dict__["zero_grad"],
            torch.nn.Module.__dict__["zero_grad"]) == zero


_TORCH_CALL_IMPL = torch.nn.Module.__dict__["_call_impl"]


@pytest.fixture(autouse=True)
def _torch_module_calls_after_each_test():
    """A trace puts its own Module._call_impl in while it is open: every test ends with
    torch's back."""
    yield
    assert torch.nn.Module.__dict__["_call_impl"] is _TORCH_CALL_IMPL


@pytest.fixture(autouse=True)
def _require_dot(request):
    if request.node.get_closest_marker("dot") and shutil.which("dot") is None:
        if os.environ.get("CI"):
            pytest.fail("Graphviz 'dot' is missing in CI: 'make test' should have installed it")
        pytest.skip("Graphviz 'dot' not installed (make test installs it)")


@pytest.fixture(autouse=True)
def _require_browser(request):
    if request.node.get_closest_marker("browser") and shutil.which("chromium") is None:
        if os.environ.get("CI") and not os.environ.get("GRADSCOPE_NO_BROWSER"):
            pytest.fail("chromium is missing in CI: 'make test' should have installed it")
        pytest.skip("chromium not installed (make test installs it)")


@pytest.fixture(autouse=True)
def _require_cuda(request):
    if request.node.get_closest_marker("cuda") and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")


def free_port() -> int:
    """A TCP port nobody listens on now (for a distributed run's rendezvous)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(tmp_path, command: list, env: dict = None):
    """Run a 2-rank training command; returns (per-rank traces, merged trace, its output)."""
    import json
    import subprocess

    from click.testing import CliRunner

    from cli.main import main

    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "run" / "gradscope"
    assert sorted(os.listdir(folder)) == ["rank-0", "rank-1"]
    traces = []
    for rank in (0, 1):
        assert sorted(os.listdir(folder / f"rank-{rank}")) == [
            "report.html", "summary.txt", "trace.json"]
        traces.append(json.load(open(folder / f"rank-{rank}" / "trace.json")))
    r = CliRunner().invoke(main, ["merge", str(folder), "--out", str(tmp_path / "merged"),
                                  "--fail-on", "warning"])
    merged = json.load(open(tmp_path / "merged" / "trace.json"))
    assert [x["rank"] for x in merged["ranks"]] == [0, 1]
    return traces, merged, r.exit_code, proc.stdout + proc.stderr
