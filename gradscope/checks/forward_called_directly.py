"""forward-called-directly: ``model.forward(x)`` instead of ``model(x)``.

``Module.__call__`` runs the module's hooks around ``forward``; calling ``forward`` skips all of
them: pruning masks (``torch.nn.utils.prune``), the old ``weight_norm`` / ``spectral_norm``,
the user's own hooks, and the ones tools (gradscope among them) install. With hooks of its own
the module then computes something else (a warning); without, only attribution suffers
(gradscope still names its submodules and its own ops: info). Other methods (``model.encode
(x)``) are a module's business and stay silent.
"""
from __future__ import annotations

from ..findings import Finding
from ..graph import module_path
from ._common import names_list
from .registry import Check


FREED = (" That is also why backward() failed with 'Trying to backward through the graph a "
         "second time': such hooks recompute a weight (weight = weight_orig * mask) in every "
         "call, so without them the module kept using the tensor made at the last hooked call, "
         "with the graph the first backward freed (and without the optimizer's updates).")


def run(trace) -> list:
    out = []
    freed = (trace.failure or {}).get("kind") == "graph-freed"
    for c in trace.direct_calls:
        if c.get("method") != "forward":
            continue
        path = module_path(c.get("model"), c.get("module"))
        hooks = c.get("hooks") or []
        call = f"{path}.forward(...)"
        if hooks:
            effect = (f"its own hooks ({names_list(hooks, 3)}) did not run, so it computed "
                      "something other than what model(x) computes")
        else:
            effect = ("its forward hooks (yours, a library's, gradscope's) did not run; "
                      "gradscope attributes its submodules and ops anyway, but hooks added later "
                      "(pruning, weight norm, DDP's bookkeeping) would be skipped the same way")
        explains = freed and bool(hooks)
        out.append(Finding(
            "forward-called-directly",
            "error" if explains else "warning" if hooks else "info",
            f"{call} was called directly at {c.get('location')} ({c.get('calls', 1)} "
            f"call(s)), bypassing Module.__call__: {effect}." + (FREED if explains else ""),
            hint=f"Call the module itself: {path}(x) runs forward() with its hooks.",
            module=path, location=c.get("location"),
            data={"hooks": hooks, "calls": c.get("calls", 1), "explains_failure": explains}))
    return out


CHECK = Check("forward-called-directly", "error",
              "module.forward(x) called instead of module(x): the module's hooks are skipped",
              run)
