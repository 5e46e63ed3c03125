"""Modules and parameters created while a traced forward runs, and where.

The global parameter-registration hook fires from ``Module.__setattr__``/``register_parameter``,
so it sees ``nn.Conv2d(...)`` built inside ``forward()`` at the moment its weight is created. The
module-registration hook sees such a module being assigned onto a model. Only weak references
to user objects are kept: a layer rebuilt on every step must not be kept alive by us.
"""
from __future__ import annotations

import weakref
from typing import Any, Optional

from torch import nn

from .handles import HandleGroup, hook_of_ours
from .locations import code_location
from .modules import ModuleTracker


class RegistrationRecorder:
    """Records constructions of parameterised modules during traced forwards."""

    MAX_TRACKED = 100_000  # weak entries kept before dead ones are pruned

    def __init__(self, tracker: ModuleTracker) -> None:
        self.tracker = tracker
        # (type, location) -> {"type", "location", "parent", "count", "params", "assigned"}
        self.constructions: dict = {}
        self._module_key: dict = {}   # id(module) -> (weakref, key)
        self._param_owner: dict = {}  # id(param) -> (weakref, key, parameter name)
        self.generation = 0           # registrations seen: a model's parameters may have changed

    def install(self, handles: HandleGroup) -> None:
        reg = nn.modules.module
        handles.add(reg.register_module_parameter_registration_hook(self._on_parameter))
        handles.add(reg.register_module_module_registration_hook(self._on_module))

    # -- hooks ---------------------------------------------------------------------------------
    @hook_of_ours
    def _on_parameter(self, module: nn.Module, name: str, param: Any) -> None:
        self.generation += 1
        if param is None or not self.tracker.in_forward():
            return
        key = self._key_of(module)
        if key is None:
            parent = self.tracker.current()
            key = (type(module).__name__, code_location())
            rec = self.constructions.get(key)
            if rec is None:
                rec = self.constructions[key] = {
                    "type": type(module).__name__, "location": key[1], "parent": parent,
                    "count": 0, "params": {}, "assigned": None}
            rec["count"] += 1
            self._remember(self._module_key, id(module), (weakref.ref(module), key))
        shape = list(param.shape) if not isinstance(param, nn.parameter.UninitializedParameter) \
            else None
        self.constructions[key]["params"].setdefault(name, shape)
        self._remember(self._param_owner, id(param), (weakref.ref(param), key, name))

    @hook_of_ours
    def _on_module(self, parent: nn.Module, name: str, submodule: Any) -> None:
        self.generation += 1
        if submodule is None or not self.tracker.in_forward():
            return
        owner = self.tracker.lookup(parent)
        if owner is None:
            return  # a module built in forward getting its own children: not a model yet
        key = self._key_of(submodule)
        if key is not None:
            model, path = owner
            self.constructions[key]["assigned"] = f"{model}.{path}.{name}" if path else \
                f"{model}.{name}"
        self.tracker.invalidate_names()  # the model's module tree changed: name it again

    # -- lookups -------------------------------------------------------------------------------
    def _key_of(self, module: nn.Module) -> Optional[tuple]:
        hit = self._module_key.get(id(module))
        if hit is not None and hit[0]() is module:
            return hit[1]
        return None

    def owner_of(self, tensor: Any) -> Optional[tuple]:
        """``(construction index, parameter name)`` when ``tensor`` is a parameter of a module
        built during a forward, else None."""
        hit = self._param_owner.get(id(tensor))
        if hit is None or hit[0]() is not tensor:
            return None
        return list(self.constructions).index(hit[1]), hit[2]

    def _remember(self, table: dict, key: int, value: tuple) -> None:
        if len(table) >= self.MAX_TRACKED:
            for k in [k for k, v in table.items() if v[0]() is None]:
                del table[k]
        table[key] = value

    def records(self) -> list:
        """Plain-data copies of the constructions, in the order first seen."""
        out = []
        for rec in self.constructions.values():
            parent = rec["parent"]
            out.append({"type": rec["type"], "location": rec["location"],
                        "model": parent[0] if parent else None,
                        "module": parent[1] if parent else None,
                        "count": rec["count"], "params": dict(rec["params"]),
                        "assigned": rec["assigned"]})
        return out
