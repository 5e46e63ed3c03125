"""A model's ``named_modules()`` and ``named_parameters(remove_duplicate=False)`` from one walk.

torch yields each through nested generators (one per module, resumed per item), and a trace
needs both, for every model: about 4 ms a model of 2,000 modules here. One iterative walk of
``_modules`` gives every ``(prefix, module)`` in torch's pre-order; ``named_modules()`` is that
list with each module at its first place only (torch skips a module met again, and so its
submodules, which were all met under its first place), and the parameters are each listed
module's own ``_parameters`` under its prefix. A model with a module whose class lists its own
(FSDP renames parameters, say) is listed by torch.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

_NAMED_MODULES = nn.Module.named_modules
_NAMED_PARAMETERS = nn.Module.named_parameters


def walk(model: nn.Module) -> Optional[list]:
    """Every ``(prefix, module)`` of ``model`` in torch's pre-order, a module reached twice
    listed twice; None when a class defines its own listing."""
    out: list = []
    stack = [("", model)]
    pop, push, add = stack.pop, stack.extend, out.append
    while stack:
        prefix, module = pop()
        cls = type(module)
        if cls.named_modules is not _NAMED_MODULES \
                or cls.named_parameters is not _NAMED_PARAMETERS:
            return None
        add((prefix, module))
        children = module._modules
        if children:
            dot = prefix + "." if prefix else ""
            push(reversed([(dot + name, child) for name, child in children.items()
                           if child is not None]))
    return out


def listings(model: nn.Module) -> tuple:
    """``(list(model.named_modules()), list(model.named_parameters(remove_duplicate=False)))``."""
    every = walk(model)
    if every is None:
        return list(model.named_modules()), list(model.named_parameters(remove_duplicate=False))
    seen: set = set()
    modules = []
    params: list = []
    for prefix, module in every:
        if id(module) not in seen:
            seen.add(id(module))
            modules.append((prefix, module))
        own = module._parameters
        if own:
            dot = prefix + "." if prefix else ""
            for name, p in own.items():
                if p is not None:
                    params.append((dot + name, p))
    return modules, params
