"""Does a functional dropout call pass the module's mode? Read from the user's source.

``F.dropout(x, p)`` keeps dropping after ``model.eval()``; ``F.dropout(x, p, training=
self.training)`` does not. A run that never evaluates cannot show the difference, so the call's
source decides: a ``training=`` argument (or the third positional one), any argument that
mentions ``training`` (``p=self.p if self.training else 0``), a name assigned from such an
expression in the same function (``dropout_p = self.p if self.training else 0.0``), or an
enclosing ``if self.training:`` all pass the mode. ``training=True`` written out is deliberate
(Monte Carlo dropout): ``"always"``.
"""
from __future__ import annotations

import ast
import functools
from typing import Optional, Union

DROPOUTS = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
            "feature_alpha_dropout"}
SDPA = "scaled_dot_product_attention"


def passes_mode(path: str, line: int, fn: str) -> Union[bool, str, None]:
    """True, False or "always" for the call of ``fn`` on ``path:line``; None without source."""
    found = [ok for name, ok in _calls_in(path).get(line, ()) if name == fn]
    if not found:
        return None
    if "always" in found:
        return "always"
    return any(ok is True for ok in found)


def _mentions_training(node: Optional[ast.AST], names: dict) -> bool:
    if node is None:
        return False
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr == "training":
            return True
        if isinstance(sub, ast.Name) and (sub.id == "training" or names.get(sub.id)):
            return True
    return False


def _assigned_from_training(function: ast.AST) -> dict:
    """name -> True for names a function assigns from an expression that mentions training."""
    names: dict = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and _mentions_training(node.value, {}):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = True
    return names


def _judge(call: ast.Call, fn: str, guarded: bool, names: dict) -> Union[bool, str]:
    if fn == SDPA:
        value = next((k.value for k in call.keywords if k.arg == "dropout_p"),
                     call.args[4] if len(call.args) > 4 else None)
        return value is None or guarded or _mentions_training(value, names)
    training = next((k.value for k in call.keywords if k.arg == "training"), None)
    if isinstance(training, ast.Constant) and training.value is True:
        return "always"
    return training is not None or len(call.args) >= 3 or guarded or any(
        _mentions_training(a, names) for a in [*call.args, *(k.value for k in call.keywords)])


@functools.lru_cache(maxsize=64)
def _calls_in(path: str) -> dict:
    """line -> [(function name, verdict)] for every dropout call in a source file."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return {}
    out: dict = {}
    # (node, inside an `if ...training...:` body, names assigned from training in its function)
    todo = [(tree, False, {})]
    while todo:
        node, guarded, names = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = _assigned_from_training(node)
        if isinstance(node, ast.Call):
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else \
                node.func.id if isinstance(node.func, ast.Name) else None
            if fn in DROPOUTS or fn == SDPA:
                verdict = _judge(node, fn, guarded, names)
                for line in range(node.lineno, (node.end_lineno or node.lineno) + 1):
                    out.setdefault(line, []).append((fn, verdict))
        guards = isinstance(node, ast.If) and _mentions_training(node.test, {})
        for child in ast.iter_child_nodes(node):
            # the body of `if self.training:` is guarded, its else branch is not
            inside = guards and not any(child is other for other in node.orelse)
            todo.append((child, guarded or inside, names))
    return out
