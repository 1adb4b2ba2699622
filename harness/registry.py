"""Which node classes a workflow may use: ComfyUI's `NODE_CLASS_MAPPINGS` convention.

`default_registry()` holds the pack's own nodes (root `NODE_CLASS_MAPPINGS`) and, when the
standalone host is present, its implementations of ComfyUI's core nodes. `load_node_file`
adds the mappings of any Python file, like a ComfyUI custom node.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from .errors import NodeDefinitionError
from .node_spec import NodeSpec


def check_node_class(name: str, node_class: object) -> None:
    """Refuse a class that breaks ComfyUI's node convention, without calling INPUT_TYPES
    (which may list model files, so it runs only once the folders are known)."""
    if not isinstance(node_class, type):
        raise NodeDefinitionError(f"node {name!r}: NODE_CLASS_MAPPINGS must map names to classes, got {node_class!r}")
    if not callable(getattr(node_class, "INPUT_TYPES", None)):
        raise NodeDefinitionError(f"node class {name}: no INPUT_TYPES classmethod")
    if not isinstance(getattr(node_class, "RETURN_TYPES", None), (tuple, list)):
        raise NodeDefinitionError(f"node class {name}: RETURN_TYPES must be a tuple")
    function = getattr(node_class, "FUNCTION", None)
    if not isinstance(function, str) or not callable(getattr(node_class, function, None)):
        raise NodeDefinitionError(f"node class {name}: FUNCTION must name a method of the class, got {function!r}")


class NodeRegistry:
    """Node class name -> class, with display names and where each class came from."""

    def __init__(self) -> None:
        self._classes: dict[str, type] = {}
        self._display: dict[str, str] = {}
        self._source: dict[str, str] = {}
        self._aliases: dict[str, str] = {}

    def add_alias(self, old: str, new: str) -> None:
        """Let workflows name the registered node `new` by `old` (a node renamed since they were saved)."""
        if new not in self._classes:
            raise NodeDefinitionError(f"alias {old!r}: node {new!r} is not registered")
        if old in self._classes:
            raise NodeDefinitionError(f"alias {old!r} would hide the registered node of that name")
        self._aliases[old] = new

    def canonical(self, name: str) -> str:
        """The registered name that `name` stands for: itself when a class is registered under it (a node
        file may register an old name for its own node), else the node an old name was renamed to."""
        return name if name in self._classes else self._aliases.get(name, name)

    def aliases(self) -> dict[str, str]:
        """Old name -> registered name."""
        return dict(self._aliases)

    def register(self, name: str, node_class: type, display_name: str | None = None, source: str = "code") -> None:
        """Add one class under `name`; refuses a class breaking the node convention, and a
        second, different class under a name already taken."""
        check_node_class(name, node_class)
        old = self._classes.get(name)
        if old is not None and old is not node_class:
            raise NodeDefinitionError(
                f"node class name {name!r} from {source} is already registered from {self._source[name]}"
            )
        self._classes[name] = node_class
        self._source[name] = source
        if display_name:
            self._display[name] = display_name

    def update(
        self, mappings: Mapping[str, type], display_names: Mapping[str, str] | None = None, source: str = "code"
    ) -> None:
        """Register every entry of a `NODE_CLASS_MAPPINGS`-style dict."""
        for name, node_class in mappings.items():
            self.register(name, node_class, (display_names or {}).get(name), source)

    def get(self, name: str) -> type | None:
        """The class registered under `name` (or an old name of it), or None."""
        return self._classes.get(self.canonical(name))

    def spec(self, name: str) -> NodeSpec:
        """A fresh NodeSpec of `name` (INPUT_TYPES is called again: file lists may change)."""
        if name not in self:
            raise KeyError(name)
        return NodeSpec.from_class(name, self._classes[self.canonical(name)])

    def display_name(self, name: str) -> str:
        """The title the frontend shows (NODE_DISPLAY_NAME_MAPPINGS), else the class name."""
        name = self.canonical(name)
        return self._display.get(name, name)

    def source(self, name: str) -> str:
        """Where `name` was registered from."""
        return self._source[name]

    def names(self) -> list[str]:
        """All registered class names, sorted."""
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._classes)


def load_node_file(registry: NodeRegistry, path: str | Path) -> None:
    """Import the Python file `path` and register its NODE_CLASS_MAPPINGS (and display names)."""
    path = Path(path)
    if not path.is_file():
        raise NodeDefinitionError(f"node file {path} does not exist")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"lcm_accel_user_nodes_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise NodeDefinitionError(f"node file {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise NodeDefinitionError(f"node file {path} failed to import: {type(error).__name__}: {error}") from error
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if not isinstance(mappings, Mapping):
        raise NodeDefinitionError(f"node file {path} has no NODE_CLASS_MAPPINGS dict")
    registry.update(mappings, getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None), source=str(path))


def _standalone_host_module():
    """`..hosts.standalone` when it exists, else None; an import error INSIDE it propagates."""
    package = __package__.rpartition(".")[0]
    for name in (f"{package}.hosts", f"{package}.hosts.standalone"):
        if importlib.util.find_spec(name) is None:
            return None
    return importlib.import_module(f"{package}.hosts.standalone")


def default_registry() -> NodeRegistry:
    """The pack's nodes (and their old ids as aliases) plus, when present, the standalone host's
    core-node implementations."""
    pack = importlib.import_module(__package__.rpartition(".")[0] + ".nodes")
    registry = NodeRegistry()
    registry.update(pack.PACK_NODES, pack.DISPLAY_NAMES, source="pack")
    for old, new in pack.OLD_NODE_IDS.items():
        registry.add_alias(old, new)
    host = _standalone_host_module()
    if host is not None:
        registry.update(
            getattr(host, "NODE_CLASS_MAPPINGS", {}),
            getattr(host, "NODE_DISPLAY_NAME_MAPPINGS", {}),
            source="standalone host",
        )
    return registry
