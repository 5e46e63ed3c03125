"""dropout-ignores-eval: ``F.dropout(x, p)`` in a forward without ``training=self.training``.

``torch.nn.functional.dropout`` defaults to ``training=True``: unlike an ``nn.Dropout``
submodule, it keeps dropping after ``model.eval()``, so validation and inference are randomly
degraded (and differ run to run). The same holds for ``scaled_dot_product_attention``'s
``dropout_p``, which has no mode at all. Seen by ``gradscope trace``: a call made while its
module was in eval mode, or, when the run never evaluated, a call whose source passes no mode.
``F.dropout(x, p, training=self.training)``, a call under ``if self.training:``, a ``p``
computed from ``self.training``, ``training=True`` written out (Monte Carlo dropout) and
``nn.Dropout`` stay silent.
"""
from __future__ import annotations

from ..findings import Finding
from ..graph import module_path
from .registry import Check


def _hint(fn: str) -> str:
    if fn == "scaled_dot_product_attention":
        return ("Turn the attention dropout off outside training: dropout_p=self.p if "
                "self.training else 0.0.")
    return (f"Pass the module's mode: F.{fn}(x, p, training=self.training), or use an "
            "nn.Dropout(p) submodule, which model.eval() switches off.")


def run(trace) -> list:
    out = []
    evaluated = {e.get("model") for e in trace.events
                 if e.get("kind") == "forward" and e.get("training") is False}
    for c in trace.dropout_calls:
        if c.get("passes_mode") == "always":
            continue  # training=True written out: Monte Carlo dropout, on purpose
        seen_in_eval = c.get("eval_calls", 0) > 0
        if not seen_in_eval and (c.get("model") in evaluated or c.get("passes_mode") is not False):
            continue  # the run evaluated and it did not drop, or its source passes the mode
        fn = c.get("fn", "dropout")
        where = module_path(c.get("model"), c.get("module")) or "a forward"
        call = f"{fn}(dropout_p={c.get('p')})" if fn == "scaled_dot_product_attention" \
            else f"F.{fn}(x, p={c.get('p')})"
        if seen_in_eval:
            what = (f"kept dropping in {c['eval_calls']} call(s) while {where} was in eval "
                    "mode")
        else:
            what = "passes no training flag, so it will keep dropping after model.eval()"
        out.append(Finding(
            "dropout-ignores-eval", "warning",
            f"{call} at {c.get('location')} in {where}'s forward {what}: functional dropout "
            "does not follow model.eval(), so evaluation and inference use a randomly thinned "
            "network and their results change from run to run.",
            hint=_hint(fn), module=module_path(c.get("model"), c.get("module")),
            location=c.get("location"),
            data={"fn": fn, "p": c.get("p"), "eval_calls": c.get("eval_calls", 0),
                  "calls": c.get("count", 0)}))
    return out


CHECK = Check("dropout-ignores-eval", "warning",
              "F.dropout without training=self.training: still drops after model.eval()", run)
