"""The op watch's fast path (only calls of interest are wrapped; the rest run as torch's own)
loses nothing."""
import torch
from torch.nn import functional as F

from gradscope.tracing import opwatch, oppatches
from gradscope.tracing.modules import ModuleTracker


def test_names_of_no_interest_are_not_wrapped_and_inplace_ones_are():
    wrapped = {(owner, name) for owner, name, _ in oppatches.targets()}
    for name in ("add_", "relu_", "mul_", "zero_", "index_put_"):  # in-place by their name
        owners = [o for o in (torch.Tensor, torch) if callable(getattr(o, name, None))]
        assert owners and all((o, name) in wrapped for o in owners), name
    for name in ("relu", "add", "view", "matmul", "__add__", "size"):
        for owner in (torch.Tensor, torch):
            assert (owner, name) not in wrapped, name


def test_inplace_keyword_and_inplace_methods_are_still_recorded():
    watch = opwatch.OpWatch(ModuleTracker())
    x = torch.randn(4, requires_grad=True)
    with watch:
        y = x * 2
        F.relu(y, inplace=True)   # "relu" is not of interest by name: the keyword is
        y.add_(1)
        y + 1                     # nothing to record
    watch.stop()
    assert [r["op"] for r in watch.inplace_records()][:2] == ["relu", "add_"]


def test_every_name_of_interest_is_wrapped_where_the_program_can_call_it():
    """The op watch sees calls through wrappers (oppatches): each name it has something to do
    for is wrapped in every namespace that has it (Tensor methods, torch.*, F.*)."""
    wrapped = {(owner, name) for owner, name, _ in oppatches.targets()}
    reported = {oppatches._REPORTED_AS.get(name, name) for _, name in wrapped}
    interest = set().union(opwatch._LAYER_FUNCS, opwatch._COPY_METHODS, opwatch._HOST_READS,
                           opwatch._FACTORIES, opwatch._LOSSES, opwatch._SUBTRACTIONS,
                           opwatch._SHAPE_LOSSES, opwatch._HISTORY_NAMES,
                           {"unbind"}) - {"__get__", "__set__"}
    for name in interest:
        for owner in (torch.Tensor, torch, F):
            if name.startswith("__") and owner is not torch.Tensor:
                continue  # operators are the tensor's
            if hasattr(owner, name) and callable(getattr(owner, name)):
                assert (owner, name) in wrapped, (owner.__name__, name)
        assert name in reported or name in oppatches._REPORTED_AS \
            or not any(hasattr(o, name) for o in (torch.Tensor, torch, F)), name
    for name in ("add_", "mul_", "copy_", "zero_", "index_put_", "__setitem__", "__iadd__"):
        assert (torch.Tensor, name) in wrapped, name
    for name in ("relu_", "sigmoid_", "_foreach_add_"):
        assert (torch, name) in wrapped, name


def test_wrapped_calls_report_the_names_a_torch_function_mode_sees():
    watch = opwatch.OpWatch(ModuleTracker())
    x = torch.randn(4, requires_grad=True)
    y = torch.randn(4)
    with watch:
        z = (x * 1).clone()
        z += 1                    # a mode sees add_
        z[0] = 0.0                # __setitem__
        F.dropout(z, 0.5, True, True)  # inplace given by position
    watch.stop()
    assert [r["op"] for r in watch.inplace_records()] == ["add_", "__setitem__", "dropout"]
    assert not hasattr(torch.Tensor.add_, "__gradscope_wraps__")  # all put back
    assert y.sub is not None
