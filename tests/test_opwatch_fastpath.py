"""The op watch's fast exit (one name lookup for calls it has nothing to do for) loses nothing."""
import torch
from torch.nn import functional as F

from gradscope.tracing import opwatch
from gradscope.tracing.modules import ModuleTracker


def test_every_name_of_interest_takes_the_full_path():
    for names in (opwatch._LAYER_FUNCS, opwatch._INPLACE_DUNDERS, opwatch._COPY_METHODS,
                  opwatch._HOST_READS, opwatch._FACTORIES, opwatch._LOSSES,
                  opwatch._SUBTRACTIONS, opwatch._SHAPE_LOSSES, opwatch._ITERATIONS,
                  opwatch._HISTORY_NAMES):
        for name in names:
            assert opwatch._WATCHED[name], name
    for name in ("add_", "relu_", "mul_", "zero_", "index_put_"):  # in-place by their name
        assert opwatch._WATCHED[name], name
    for name in ("relu", "add", "view", "matmul", "__add__", "size"):
        assert not opwatch._WATCHED[name], name


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
