"""Packaging: what `import gradscope` pulls in, the public API, the cli's import name."""
import subprocess
import sys

import gradscope


def test_import_is_light():
    code = ("import sys, gradscope; "
            "print(sorted(m for m in ('torch', 'graphviz', 'networkx', 'click') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # a saved report loads and renders without torch


HEAVY_EXTRAS = ("transformers", "accelerate", "lightning", "pytorch_lightning")


def _imported_after(statement, names):
    code = (f"import sys; {statement}; "
            f"print(sorted(m for m in {names!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_integrations_and_plugin_import_no_optional_library():
    # the pytest plugin is loaded in every pytest session where gradscope is installed, and
    # diffing two JSON files must work where torch is not installed
    statement = ("import gradscope, gradscope.integrations, gradscope.pytest_plugin, "
                 "gradscope.diff, gradscope.render.diff")
    assert _imported_after(statement, HEAVY_EXTRAS + ("torch",)) == "[]"


def test_public_api():
    for name in ("trace", "graph_of", "Report", "Finding", "Trace", "Graph", "GradscopeError",
                 "InputError", "LoadError", "TracedProgramError", "GraphvizNotFound"):
        assert name in gradscope.__all__ and getattr(gradscope, name) is not None
    assert callable(gradscope.trace) and callable(gradscope.graph_of)
    assert issubclass(gradscope.GradscopeError, RuntimeError)


def test_cli_is_not_installed_as_a_bare_cli_package():
    import importlib.util

    import gradscope_cli

    assert gradscope_cli.__name__ == "gradscope_cli"
    spec = importlib.util.find_spec("cli")
    assert spec is None or "gradscope" not in (spec.origin or "")
