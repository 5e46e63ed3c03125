"""The pytest plugin, run the way a user's CI runs it: pytest sessions on a test file of theirs."""
from importlib.metadata import entry_points

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, unused_head=False):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.out = nn.Linear(8, 2)
        if unused_head:
            self.aux = nn.Linear(8, 3)  # never reached by the loss

    def forward(self, x):
        return self.out(torch.relu(self.body(x)))


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, generator=g), torch.randint(0, 2, (6,), generator=g)


def test_clean_model_trains(gradscope):
    model = Net()
    report = gradscope.assert_trains(model, batch(), nn.CrossEntropyLoss(),
                                     torch.optim.SGD(model.parameters(), lr=0.1))
    assert report.trace.optimizer_steps == 3


def test_unused_head(gradscope):
    model = Net(unused_head=True)
    gradscope.assert_trains(model, batch(), nn.CrossEntropyLoss(),
                            torch.optim.SGD(model.parameters(), lr=0.1))
'''


@pytest.fixture(autouse=True, scope="module")
def _torch_imported_once():
    """In-process pytester runs drop the modules a run imported; torch registers operator
    libraries on import (once per process), so everything a training step imports is imported
    here first, and stays."""
    import torch

    import gradscope

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt):
        torch.nn.functional.cross_entropy(model(torch.randn(3, 2)), torch.tensor([0, 1, 0])) \
            .backward()
        opt.step()


def test_the_plugin_is_registered_through_the_pytest11_entry_point():
    found = [e for e in entry_points(group="pytest11") if e.name == "gradscope"]
    assert [e.value for e in found] == ["gradscope.pytest_plugin"]


def test_assert_trains_fails_the_test_with_the_findings_text(pytester, no_leaks):
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "gradscope found 1 finding(s) at or above 'warning' in 3 training step(s) of Net" in out
    assert "WARNING unused-parameter" in out and "aux.weight" in out
    assert "fix:" in out


def test_fail_on_option_and_ini(pytester, no_leaks):
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider",
                                          "--gradscope-fail-on", "error")
    result.assert_outcomes(passed=2)
    pytester.makeini("[pytest]\ngradscope_fail_on = error\n")
    pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider").assert_outcomes(passed=2)
    # the command line wins over the ini file
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider",
                                          "--gradscope-fail-on=warning")
    result.assert_outcomes(passed=1, failed=1)


def test_a_bad_threshold_is_a_usage_error(pytester):
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_inprocess("-q", "--gradscope-fail-on", "sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "invalid choice: 'sometimes'" in result.stderr.str()


def test_a_bad_ini_threshold_is_a_usage_error(pytester):
    pytester.makepyfile(test_user=USER_TESTS)
    pytester.makeini("[pytest]\ngradscope_fail_on = sometimes\n")
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    assert "ini option gradscope_fail_on = 'sometimes'; use one of error, warning" in \
        result.stdout.str() + result.stderr.str()
    result.assert_outcomes(errors=2)


def test_the_fixture_in_this_session(gradscope, no_leaks):
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(5, 3)
    report = gradscope.assert_trains(model, x, lambda out: out.pow(2).mean(), opt, steps=2)
    assert report.trace.backward_calls == 2 and not report.findings_at_or_above("warning")
    # a dict batch goes in as keyword arguments; with no loss_fn the output is the loss
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, x, y):
            return {"loss": (self.lin(x).squeeze(1) - y).pow(2).mean()}

    model = Keyword()
    gradscope.assert_trains(model, {"x": x, "y": torch.randn(5)}, None,
                            torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(pytest.fail.Exception, match="needs the optimizer"):
        gradscope.assert_trains(model, x)
