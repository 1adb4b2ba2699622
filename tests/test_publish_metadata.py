"""What the Comfy Registry and ComfyUI's node help panel read from the repository (issue 26).

- pyproject.toml: the [project] / [tool.comfy] fields `comfy node publish` reads, with the icon it names;
- .comfyignore: leaves tests and benchmarks out of the published archive and keeps the package code
  (checked with a small gitignore-style matcher over the git-tracked and not-ignored files);
- .github/workflows/publish_node.yml: the registry's publish action;
- web/docs/<node id>.md: a help page per node that names every input.

Fast: no model is built; the node declarations are read with an empty models folder.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "web" / "docs"
WORKFLOW = ROOT / ".github" / "workflows" / "publish_node.yml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# every node id of the pack -> the id workflows saved before the `LCMAccel_` prefix use (None: new node)
NODE_IDS = {
    "LCMAccel_LoraLoader": "LCMLoraLoader",
    "LCMAccel_AdapterMixer4": "LCMAdapterMixer",
    "LCMAccel_AdapterMixer": None,
    "LCMAccel_LoraRow": None,
    "LCMAccel_Scheduler": "LCMScheduler",
    "LCMAccel_Sampler": "LCMSampler",
    "LCMAccel_KSampler": "LCMKSampler",
    "LCMAccel_DeepCache": "DeepCache",
    "LCMAccel_FastMode": "LCMFastMode",
    "LCMAccel_QuantizeUNet": "LCMQuantizeUNet",
    "LCMAccel_AcceleratorLoader": "LCMAcceleratorLoader",
    "LCMAccel_AcceleratorScheduler": "LCMAcceleratorScheduler",
    "LCMAccel_AcceleratorSampler": "LCMAcceleratorSampler",
    "LCMAccel_AcceleratorKSampler": "LCMAcceleratorKSampler",
}
DOC_SECTIONS = ("## Inputs", "## Outputs", "## Recommended settings", "## Example", "## Pitfalls")
GROWING = "loras"  # the mixer's growing sockets: loras.lora0, loras.lora1, ...

# the registry's accepted accelerator classifiers (comfy-cli's registry/config_parser.py)
REGISTRY_ACCELERATORS = {
    "Environment :: GPU :: NVIDIA CUDA",
    "Environment :: GPU :: AMD ROCm",
    "Environment :: GPU :: Intel Arc",
    "Environment :: NPU :: Huawei Ascend",
    "Environment :: GPU :: Apple Metal",
}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


# --- pyproject.toml -------------------------------------------------------------------------------
def test_registry_project_fields():
    project = pyproject()["project"]
    # the registry's node id rules: < 100 characters, letters / digits / - _ ., no leading special
    # character or digit, no two special characters in a row
    assert re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9]))*", project["name"]), project["name"]
    assert len(project["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), "the registry wants a semantic X.Y.Z version"
    assert project["description"].strip()
    license = project["license"]  # comfy-cli reads {text = ...}, {file = ...} or an SPDX string
    assert license.get("text") or license.get("file") if isinstance(license, dict) else license.strip()
    classifiers = project["classifiers"]
    assert "Operating System :: OS Independent" in classifiers
    accelerators = {c for c in classifiers if c.startswith("Environment ::")}
    assert accelerators and accelerators <= REGISTRY_ACCELERATORS, accelerators
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in classifiers)
    assert project["keywords"] and all(isinstance(k, str) and k for k in project["keywords"])


def test_registry_urls():
    urls = pyproject()["project"]["urls"]
    for key in ("Repository", "Documentation", "Bug Tracker"):
        assert urls.get(key, "").startswith("https://"), key
    assert urls["Repository"].startswith("https://github.com/")


def test_tool_comfy_fields_and_icon():
    comfy = pyproject()["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert isinstance(comfy.get(key), str) and comfy[key].strip(), f"[tool.comfy] {key} is empty"
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"])
    # comfy-cli's check for a version range: [operator]X.Y.Z, comma-separated
    for part in comfy["requires-comfyui"].split(","):
        assert re.fullmatch(r"(==|>=|<=|!=|~=|>|<)?\s*\d+\.\d+\.\d+", part.strip()), comfy["requires-comfyui"]
    assert isinstance(comfy.get("includes"), list)

    icon_url = comfy["Icon"]
    assert icon_url.startswith("https://") and icon_url.endswith(".png"), icon_url
    # the URL is the raw file of web/icon.png on the Repository's main branch
    repository = pyproject()["project"]["urls"]["Repository"].removeprefix("https://github.com/").strip("/")
    assert icon_url == f"https://raw.githubusercontent.com/{repository}/main/web/icon.png"
    icon = (ROOT / "web" / "icon.png").read_bytes()
    assert icon[:8] == PNG_SIGNATURE
    assert icon[12:16] == b"IHDR"
    width, height = struct.unpack(">II", icon[16:24])
    assert width == height and 64 <= width <= 400, (width, height)  # square; the registry allows up to 800x400
    assert len(icon) < 20_000


# --- .comfyignore -------------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> str:
    """A gitignore glob as a regex over a whole slash-separated path (no leading/trailing slash)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def parse_ignore(text: str) -> list[tuple[re.Pattern, bool, bool]]:
    """(regex, negated, directory-only) per pattern line, in file order (comments and blanks dropped)."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line.removeprefix("!")
        directory_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = "/" in line  # a slash at the start or in the middle ties the pattern to the root
        body = _pattern_regex(line.lstrip("/"))
        rules.append((re.compile(body if anchored else "(?:.*/)?" + body), negated, directory_only))
    return rules


def ignored(rules: list[tuple[re.Pattern, bool, bool]], path: str) -> bool:
    """Whether `path` (a file, relative to the root) is left out: the last rule that matches the file
    or one of its parent folders decides, as in gitignore."""
    parts = path.split("/")
    folders = ["/".join(parts[:n]) for n in range(1, len(parts))]
    decision = False
    for regex, negated, directory_only in rules:
        candidates = folders if directory_only else [*folders, path]
        if any(regex.fullmatch(candidate) for candidate in candidates):
            decision = not negated
    return decision


def test_ignore_matcher_follows_gitignore_rules():
    rules = parse_ignore("# comment\n/tests/\n__pycache__/\n*.pyc\n/docs/*.png\n!/docs/keep.png\nbuild\n")
    assert ignored(rules, "tests/test_a.py") and ignored(rules, "tests/data/x.json")
    assert not ignored(rules, "nodes/tests.py") and not ignored(rules, "hosts/tests_x/a.py")
    assert ignored(rules, "nodes/__pycache__/a.cpython-311.pyc") and ignored(rules, "x/y.pyc")
    assert ignored(rules, "docs/a.png") and not ignored(rules, "docs/keep.png")
    assert not ignored(rules, "docs/sub/a.png")
    assert ignored(rules, "build") and ignored(rules, "a/build/x.py")


def repository_files() -> list[str]:
    """Git-tracked files plus untracked ones git does not ignore (new files not yet committed)."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(
        [git, "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted({line for line in listing.splitlines() if line and (ROOT / line).exists()})


def test_comfyignore_leaves_out_tests_and_benchmarks_only():
    rules = parse_ignore((ROOT / ".comfyignore").read_text(encoding="utf-8"))
    files = repository_files()
    dev_only = [path for path in files if path.split("/", 1)[0] in ("tests", "benchmarks")]
    assert dev_only, "expected tracked files under tests/ and benchmarks/"
    shipped = [path for path in dev_only if not ignored(rules, path)]
    assert not shipped, f".comfyignore lets these development files into the archive: {shipped[:10]}"

    dropped_code = [
        path
        for path in files
        if path.endswith(".py")
        and path.split("/", 1)[0] not in ("tests", "benchmarks", "tools", ".github")
        and ignored(rules, path)
    ]
    assert not dropped_code, f".comfyignore leaves package code out of the archive: {dropped_code[:10]}"


@pytest.mark.parametrize(
    "path",
    [
        "__init__.py",
        "pyproject.toml",
        "requirements.txt",
        "install.py",
        "README.md",
        "nodes/__init__.py",
        "nodes/lora_nodes.py",
        "hosts/comfyui/extension.py",
        "web/icon.png",
        "web/docs/LCMAccel_KSampler.md",
        "example_workflows/lcm_lora_txt2img.json",
        "embedded/files/embedded-lcm-lora.safetensors",
        "docs/contact_sheet.png",
    ],
)
def test_comfyignore_keeps_what_comfyui_loads(path):
    rules = parse_ignore((ROOT / ".comfyignore").read_text(encoding="utf-8"))
    assert not ignored(rules, path), f".comfyignore leaves {path} out of the archive"


# --- the publish workflow -------------------------------------------------------------------------
def test_publish_workflow_uses_the_registry_action():
    text = WORKFLOW.read_text(encoding="utf-8")
    assert re.search(r"uses:\s*Comfy-Org/publish-node-action@\S+", text)
    assert "secrets.REGISTRY_ACCESS_TOKEN" in text


def test_publish_workflow_is_valid_yaml():
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as True
    assert "workflow_dispatch" in triggers
    assert triggers["push"]["branches"] == ["main"] and "pyproject.toml" in triggers["push"]["paths"]
    (job,) = workflow["jobs"].values()
    assert "github.repository_owner == 'lcm-accel'" in job["if"]
    publish = [step for step in job["steps"] if str(step.get("uses", "")).startswith("Comfy-Org/publish-node-action@")]
    assert len(publish) == 1
    assert publish[0]["with"]["personal_access_token"] == "${{ secrets.REGISTRY_ACCESS_TOKEN }}"


# --- node help pages ------------------------------------------------------------------------------
@pytest.mark.parametrize("node_id", sorted(NODE_IDS))
def test_node_doc_has_its_sections(node_id):
    path = DOCS / f"{node_id}.md"
    assert path.is_file(), f"missing node help page {path.relative_to(ROOT)}"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# "), "a help page starts with the node's title"
    missing = [section for section in DOC_SECTIONS if f"\n{section}\n" not in text]
    assert not missing, f"{path.name} lacks {missing}"
    assert 40 <= len(text.splitlines()) <= 120, f"{path.name}: keep a help page to 40-120 lines"
    old = NODE_IDS[node_id]
    if old is not None:
        assert f"old id `{old}`" in text, f"{path.name} should say that workflows with `{old}` load as this node"
    if node_id == "LCMAccel_AdapterMixer4":
        assert "deprecated" in text.lower() and "`LCMAccel_AdapterMixer`" in text


@pytest.fixture(scope="module")
def pack_inputs(tmp_path_factory) -> dict[str, tuple[type, list[str]]]:
    """node id -> (class, required and optional input names) from `nodes.PACK_NODES`, declared with
    an empty models folder."""
    from lcm_accel import nodes as pack_nodes

    declared = getattr(pack_nodes, "PACK_NODES", None)
    if declared is None:
        pytest.skip("PACK_NODES not available yet")
    from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths

    models = tmp_path_factory.mktemp("models")
    (models / "loras").mkdir()
    found = {}
    with use_model_paths(ModelPaths(models)):
        for node_id, cls in declared.items():
            spec = cls.INPUT_TYPES()
            found[node_id] = (cls, [*spec.get("required", {}), *spec.get("optional", {})])
    return found


def test_listed_nodes_are_registered(pack_inputs):
    assert sorted(NODE_IDS) == sorted(pack_inputs)


def test_every_node_doc_names_every_input(pack_inputs):
    problems = []
    for node_id, (cls, inputs) in sorted(pack_inputs.items()):
        path = DOCS / f"{node_id}.md"
        if not path.is_file():
            problems.append(f"{node_id}: no {path.relative_to(ROOT)}")
            continue
        text = path.read_text(encoding="utf-8")
        names = {GROWING if name.startswith(GROWING + ".") else name for name in inputs}
        unnamed = sorted(name for name in names if f"`{name}`" not in text)
        if unnamed:
            problems.append(f"{node_id}: {path.name} does not name input(s) {unnamed}")
        title = getattr(cls, "DISPLAY_NAME", None)
        if title and text.splitlines()[0] != f"# {title}":
            problems.append(f"{node_id}: {path.name} should start with '# {title}' (the display name)")
    assert not problems, "\n".join(problems)
