"""The package as ComfyUI and pip see it: cheap entry point, no torch requirement, every
sub-package shipped, relative imports only."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
NOT_SHIPPED = {"tests", "benchmarks", "tools", "build", "dist", "output", "example_workflows"}


def _load_install_module():
    spec = importlib.util.spec_from_file_location("lcm_accel_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requirements_never_name_torch():
    install = _load_install_module()
    reqs = install.requirements(ROOT / "requirements.txt")
    assert reqs, "requirements.txt lists the runtime dependencies"
    assert not any(re.match(r"torch(vision|audio)?\b", r, re.I) for r in reqs)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(re.match(r"torch(vision|audio)?\b", d, re.I) for d in project["dependencies"])


@pytest.mark.parametrize("line", ["torch", "torch==2.4.0", "torchvision>=0.1", "TorchAudio"])
def test_install_refuses_torch(tmp_path, line):
    install = _load_install_module()
    req = tmp_path / "requirements.txt"
    req.write_text(f"safetensors\n{line}\n")
    with pytest.raises(SystemExit, match="torch"):
        install.requirements(req)


def test_every_subpackage_is_shipped():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"lcm_accel": "."}
    found = {"lcm_accel"}
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts and (rel.parts[0] in NOT_SHIPPED or rel.parts[0].startswith(".")):
            continue
        found.add(".".join(("lcm_accel", *rel.parts)))
    assert found == set(config["packages"])


def _pack_sources():
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in NOT_SHIPPED or rel.parts[0].startswith("."):
            continue
        yield rel, path.read_text()


def test_pack_uses_relative_imports_only():
    """ComfyUI imports the pack under a path-derived name: `lcm_accel` may not exist there."""
    offenders = [str(rel) for rel, text in _pack_sources() if re.search(r"^\s*(from|import)\s+lcm_accel\b", text, re.M)]
    assert offenders == []


def test_comfyui_style_import_is_cheap(tmp_path):
    """Import the root like ComfyUI does (its own module name, from the file path) and check
    that nothing heavy came with it."""
    code = f"""
import importlib.util, sys
root = {str(ROOT)!r}
# ComfyUI names the module after the folder (dots replaced), with no parent package.
spec = importlib.util.spec_from_file_location("lcm-accel_x_any-name", root + "/__init__.py",
                                              submodule_search_locations=[root])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
# V3: ComfyUI registers the pack through comfy_entrypoint; a NODE_CLASS_MAPPINGS would be taken first
assert callable(module.comfy_entrypoint) and not hasattr(module, "NODE_CLASS_MAPPINGS")
assert module.WEB_DIRECTORY == "./web"
heavy = sorted(m for m in ("diffusers", "transformers", "peft", "lcm_accel") if m in sys.modules)
print(heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
