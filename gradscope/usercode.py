"""Loading and running the user's code: ``train.py`` as ``__main__``, or ``model.py:NAME``.

Running a script with gradscope runs the user's own code, exactly as ``python train.py`` would:
only trace files you would run yourself.

Errors say which input was wrong and how to fix it. Problems finding or compiling the file are
``LoadError`` (exit 2); exceptions raised by the user's code propagate unchanged, so the caller
can tell "could not load" from "the program raised".
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import re
import sys
import types
from typing import Any, Optional

import torch
from torch import nn

from .errors import InputError, LoadError

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def check_device(device: str) -> str:
    """Validate a ``--device`` value before any user code runs: a typo, a CPU-only torch or a
    missing GPU is the user's input to fix, not a failure of their program."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        raise InputError(
            f"--device {device!r} is not a device torch knows. Use 'cpu', 'cuda', 'cuda:1', "
            f"'mps' or another torch device string; leave --device out to trace on the "
            f"CPU.") from None
    if dev.type in ("cpu", "meta"):
        return device
    if dev.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise InputError(
                f"--device {device}: this torch ({torch.__version__}) was built without CUDA, so "
                f"it cannot use a GPU. Install a CUDA build of torch (pytorch.org lists the "
                f"install command for your CUDA version), or leave --device out to trace on "
                f"the CPU.")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(
                f"--device {device}: torch was built with CUDA but sees no GPU "
                f"(torch.cuda.is_available() is False: no NVIDIA driver, or CUDA_VISIBLE_DEVICES "
                f"hides the GPUs). Check 'nvidia-smi', or leave --device out to trace on the CPU.")
        if dev.index is not None and dev.index >= count:
            raise InputError(
                f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}. Use one of those.")
        return device
    try:  # mps, xpu, ...: can torch place a tensor there?
        torch.empty(0, device=dev)
    except Exception as e:  # noqa: BLE001 - the message is passed on to the user
        raise InputError(
            f"--device {device}: this torch ({torch.__version__}) cannot place a tensor there "
            f"({_first_sentence(e)}). Leave --device out to trace on the CPU.") from None
    return device


def _first_sentence(e: BaseException, limit: int = 120) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = text.split(". ")[0].rstrip(".")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def split_target(target: str) -> tuple:
    """``model.py:Net`` -> (``model.py``, ``Net``); ``train.py`` -> (``train.py``, None)."""
    path, sep, name = target.rpartition(":")
    if sep and path and _IDENT.match(name):
        return path, name
    return target, None


def read_source(path: str) -> tuple:
    """Check that ``path`` is a readable Python file; returns (absolute path, compiled code)."""
    if not os.path.exists(path):
        near = _near_files(path)
        raise LoadError(f"no such file: {path!r}. Check the path (relative to "
                        f"{os.getcwd()!r}).{near}")
    if os.path.isdir(path):
        main = os.path.join(path, "__main__.py")
        hint = f" Did you mean {main!r}?" if os.path.exists(main) else ""
        raise LoadError(f"{path!r} is a directory; gradscope traces a Python file, e.g. "
                        f"'gradscope trace {os.path.join(path, 'train.py')}'.{hint}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise LoadError(f"cannot read {path!r}: {e.strerror}. Check its permissions.") from None
    if b"\x00" in raw[:8192]:
        raise LoadError(f"{path!r} is a binary file, not Python source. Pass the .py file that "
                        "builds or trains your model.")
    try:
        code = compile(raw, os.path.abspath(path), "exec", dont_inherit=True)
    except SyntaxError as e:
        where = f"{path}:{e.lineno}" if e.lineno else path
        text = f"\n    {e.text.rstrip()}" if e.text else ""
        raise LoadError(f"{where}: syntax error: {e.msg}.{text}\nFix the file; gradscope "
                        "runs it as Python would.") from None
    except ValueError as e:  # e.g. source that is not valid UTF-8
        raise LoadError(f"{path!r} is not Python source ({e}). Pass a .py file.") from None
    return os.path.abspath(path), code


def _near_files(path: str) -> str:
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        return ""
    stem = os.path.splitext(os.path.basename(path))[0].lower()
    near = sorted(f for f in os.listdir(folder) if f.endswith(".py")
                  and (stem[:3] in f.lower() or f.lower()[:3] in stem))[:5]
    return f" Python files there that look close: {', '.join(near)}." if near else ""


class _UserModule:
    """Temporarily makes a fresh module the given name in sys.modules and the script's folder
    the first entry of sys.path, as ``python file.py`` does; restores both afterwards."""

    def __init__(self, path: str, name: str) -> None:
        self.path, self.name = path, name
        self.module = types.ModuleType(name)
        self.module.__file__ = path
        self.module.__builtins__ = __builtins__  # type: ignore[attr-defined]

    def __enter__(self) -> types.ModuleType:
        self._old_module = sys.modules.get(self.name)
        self._old_path = list(sys.path)
        sys.modules[self.name] = self.module
        sys.path.insert(0, os.path.dirname(self.path))
        return self.module

    def __exit__(self, *exc: Any) -> None:
        sys.path[:] = self._old_path
        if self._old_module is not None:
            sys.modules[self.name] = self._old_module
        elif self.name == "__main__":
            sys.modules.pop(self.name, None)


def run_script(path: str, args: tuple = (), code: Any = None) -> None:
    """Run ``path`` as ``__main__`` with ``sys.argv = [path, *args]``, like ``python``."""
    abspath = os.path.abspath(path)
    if code is None:
        abspath, code = read_source(path)
    old_argv = sys.argv
    sys.argv = [path, *args]
    try:
        with _UserModule(abspath, "__main__") as module:
            exec(code, module.__dict__)
    finally:
        sys.argv = old_argv


def load_module(path: str) -> types.ModuleType:
    """Import ``path`` as a module (its ``if __name__ == "__main__"`` block does not run)."""
    abspath, code = read_source(path)
    name = os.path.splitext(os.path.basename(path))[0]
    name = name if name.isidentifier() else "gradscope_user_module"
    user = _UserModule(abspath, name)
    with user as module:  # stays in sys.modules: pickling and `import model` keep working
        exec(code, module.__dict__)
    return module


def resolve_name(module: types.ModuleType, name: str, path: str) -> Any:
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            defined = sorted(k for k, v in vars(module).items()
                             if not k.startswith("_") and not isinstance(v, types.ModuleType)
                             and getattr(v, "__module__", module.__name__) == module.__name__)
            listing = ", ".join(defined) if defined else "nothing (the file defines no names)"
            raise LoadError(f"{path!r} has no {name!r}. It defines: {listing}. Use "
                            f"'{path}:NAME' with one of those.")
        obj = getattr(obj, part)
    return obj


@dataclasses.dataclass
class Target:
    model: nn.Module
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)


def build_target(obj: Any, name: str, path: str) -> Target:
    """An nn.Module subclass (built with no arguments), a module instance, or a zero-argument
    factory returning a module or ``(module, example_inputs)``."""
    if isinstance(obj, nn.Module):
        return Target(obj)
    if inspect.isclass(obj) and issubclass(obj, nn.Module):
        _require_no_args(obj, name, path, "its constructor")
        return Target(obj())
    if callable(obj) and not inspect.isclass(obj):
        _require_no_args(obj, name, path, "the factory")
        made = obj()
        if isinstance(made, nn.Module):
            return Target(made)
        if isinstance(made, (tuple, list)) and len(made) == 2 and isinstance(made[0], nn.Module):
            return Target(made[0], *_example_inputs(made[1], name))
        raise LoadError(f"{path}:{name}() returned {type(made).__name__}; a factory must return "
                        "an nn.Module or (module, example_inputs).")
    raise LoadError(f"{path}:{name} is a {type(obj).__name__}, not an nn.Module, an nn.Module "
                    "subclass or a zero-argument factory. Point NAME at the model class or at a "
                    "function that builds it.")


def _require_no_args(fn: Any, name: str, path: str, what: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    required = [p.name for p in sig.parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                       p.KEYWORD_ONLY)]
    if required:
        raise LoadError(f"{path}:{name}: {what} needs arguments ({', '.join(required)}). Write a "
                        f"zero-argument factory, e.g. 'def build(): return {name}(...)', and "
                        f"trace '{path}:build'.")


def _example_inputs(value: Any, name: str) -> tuple:
    if isinstance(value, torch.Tensor):
        return (value,), {}
    if isinstance(value, dict):
        return (), dict(value)
    if isinstance(value, (tuple, list)):
        return tuple(value), {}
    raise LoadError(f"{name}() returned example inputs of type {type(value).__name__}; use a "
                    "tensor, a tuple of tensors, or a dict of keyword arguments.")


# -- --input specs -----------------------------------------------------------------------------
_DTYPES = {
    "float": torch.float32, "float32": torch.float32, "float16": torch.float16,
    "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "double": torch.float64, "long": torch.int64, "int64": torch.int64,
    "int": torch.int32, "int32": torch.int32, "bool": torch.bool,
}


@dataclasses.dataclass
class InputSpec:
    shape: tuple
    dtype: torch.dtype = torch.float32
    high: Optional[int] = None  # integer inputs: values drawn from [0, high)


def parse_input_spec(spec: str) -> InputSpec:
    """``8,3,32,32`` (float), ``4,128:long`` (token ids), ``4,128:long:50257`` (ids < 50257)."""
    usage = ("write the shape as comma-separated sizes with an optional dtype, e.g. "
             "'8,3,32,32' or '4,128:long' (integer token ids) or '4,128:long:1000' (ids < 1000)")
    parts = spec.strip().split(":")
    if not parts[0] or len(parts) > 3:
        raise InputError(f"--input {spec!r}: {usage}.")
    try:
        shape = tuple(int(s) for s in parts[0].replace("x", ",").split(","))
    except ValueError:
        raise InputError(f"--input {spec!r}: sizes must be whole numbers; {usage}.") from None
    if any(s < 0 for s in shape):
        raise InputError(f"--input {spec!r}: sizes cannot be negative; {usage}.")
    dtype = torch.float32
    if len(parts) >= 2:
        dtype = _DTYPES.get(parts[1].lower())
        if dtype is None:
            raise InputError(f"--input {spec!r}: unknown dtype {parts[1]!r}; use one of "
                             f"{', '.join(sorted(_DTYPES))}.")
    high = None
    if len(parts) == 3:
        if dtype.is_floating_point or dtype == torch.bool or not parts[2].isdigit() \
                or int(parts[2]) < 1:
            raise InputError(f"--input {spec!r}: an upper bound goes with an integer dtype and "
                             f"must be a positive whole number; {usage}.")
        high = int(parts[2])
    return InputSpec(shape, dtype, high)


def make_inputs(specs: list, model: nn.Module, device: Optional[str] = None) -> tuple:
    """Random tensors for the specs, on ``device``, else on the device of the model's weights
    (a factory may return ``Net().cuda()``). Integer inputs stay below the smallest
    ``nn.Embedding`` size of the model (so token ids are always valid), else below 2."""
    if not device:
        device = _weights_device(model)
    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)]
    safe_high = min(sizes) if sizes else 2
    gen = torch.Generator().manual_seed(0)  # our own generator: the user's RNG stream is untouched
    out = []
    for s in specs:
        if s.dtype.is_floating_point:
            t = torch.randn(s.shape, generator=gen).to(s.dtype)
        elif s.dtype == torch.bool:
            t = torch.randint(0, 2, s.shape, generator=gen).bool()
        else:
            t = torch.randint(0, s.high or safe_high, s.shape, generator=gen).to(s.dtype)
        out.append(t.to(device) if device else t)
    return tuple(out)


def _weights_device(model: nn.Module) -> Optional[torch.device]:
    """The device of the model's first parameter or buffer, when it is not the CPU."""
    for tensors in (model.parameters(), model.buffers()):
        for t in tensors:
            return None if t.device.type == "cpu" else t.device
    return None
