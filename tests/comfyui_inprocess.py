"""What the ComfyUI-side check scripts share: start ComfyUI in-process, report checks as JSON lines.

The scripts (tests/comfyui_*_checks.py) run in ComfyUI's interpreter, import ComfyUI from its
checkout with the given base directory, load the custom nodes there as ComfyUI does, and print one
line "CHECK {json}" per check; `comfyui_server.run_checks` runs them and reads those lines back.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from collections.abc import Callable


def report(name: str, **values) -> None:
    """Print one check's results for the pytest side."""
    print("CHECK " + json.dumps({"name": name, **values}), flush=True)


def run_check(name: str, fn: Callable[[], None]) -> None:
    """Run one check; an exception becomes that check's `error` (the other checks still run)."""
    try:
        fn()
    except Exception:
        report(name, error=traceback.format_exc())


def start_comfyui(comfyui: str, base: str, extra_args: tuple[str, ...] = ()) -> dict:
    """Import ComfyUI (CPU, fp32) with `base` as its base directory, load its and the custom nodes;
    returns an instance of every registered node class by name. `extra_args`: more of ComfyUI's
    command-line options (e.g. --use-pytorch-cross-attention: the attention kernel the standalone
    host uses, instead of ComfyUI's CPU default, sub-quadratic chunks: the same maths, other rounding)."""
    sys.argv = ["main.py", "--cpu", "--force-fp32", "--base-directory", base, *extra_args]
    sys.path.insert(0, comfyui)
    os.chdir(comfyui)
    import comfy.options

    comfy.options.enable_args_parsing()
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True))
    return {name: callable_node(cls) for name, cls in nodes.NODE_CLASS_MAPPINGS.items()}


class V3Caller:
    """A V3 node (`io.ComfyNode`) called the V1 way, `node.any_method(*args, **kwargs)`: positional
    arguments are given the node's input names in schema order; returns the output tuple."""

    def __init__(self, cls):
        self.cls = cls

    def __getattr__(self, method: str):
        if method.startswith("__"):
            raise AttributeError(method)
        if hasattr(self.cls, method):  # CATEGORY, execute, ... of the class itself
            return getattr(self.cls, method)
        input_types = self.cls.INPUT_TYPES()
        names = [name for section in ("required", "optional") for name in input_types.get(section, {})]

        def call(*args, **kwargs):
            kwargs.update(zip(names, args))
            return self.cls.execute(**kwargs).args

        return call


def callable_node(cls):
    """An instance of a V1 node class, or a `V3Caller` of a V3 one."""
    return V3Caller(cls) if hasattr(cls, "define_schema") else cls()


def call_node(node: dict, name: str, **kwargs):
    """Call node `name` of `start_comfyui`'s dict by keyword, V1 or V3; returns its outputs."""
    instance = node[name]
    if isinstance(instance, V3Caller):
        return instance.cls.execute(**kwargs).result
    return getattr(instance, type(instance).FUNCTION)(**kwargs)
