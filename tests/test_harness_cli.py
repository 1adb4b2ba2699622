"""`python -m lcm_accel run / validate / nodes` in a subprocess: exit codes, one-line errors,
--set, --api-out, PNG workflows and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "harness"
STUBS = DATA / "comfy_stub_nodes.py"

TOY_NODES = """
import os, time
from lcm_accel.runtime.progress import ProgressBar

class Number:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": 0, "max": 100})}}
    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"
    CATEGORY = "toy"
    def run(self, value):
        if value == 13:
            raise RuntimeError("thirteen is unlucky")
        return (value,)

class Wait:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("NUMBER",), "marker": ("STRING", {})}}
    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"
    def run(self, a, marker):
        bar = ProgressBar(1000)
        open(marker, "w").close()
        for _ in range(1000):
            time.sleep(0.01)
            bar.update(1)
        return (a,)

class Print:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("NUMBER",)}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    def run(self, a):
        print("value", a)
        return {}

NODE_CLASS_MAPPINGS = {"Number": Number, "Wait": Wait, "Print": Print}
NODE_DISPLAY_NAME_MAPPINGS = {"Number": "A Number"}
"""


def _cli(*args, cwd, extra_env=None, nodes=None):
    command = [sys.executable, "-m", "lcm_accel", *args]
    for path in nodes or []:
        command += ["--nodes", str(path)]
    if nodes:
        command.append("--no-builtin-nodes")
    return subprocess.run(
        command, capture_output=True, text=True, cwd=cwd, timeout=60, env={**os.environ, **(extra_env or {})}
    )


def _error_line(out):
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


@pytest.fixture
def toy(tmp_path):
    (tmp_path / "toy_nodes.py").write_text(TOY_NODES)
    prompt = {
        "1": {"class_type": "Number", "inputs": {"value": 5}},
        "2": {"class_type": "Print", "inputs": {"a": ["1", 0]}},
        "3": {"class_type": "Print", "inputs": {"a": ["1", 0]}},
    }
    (tmp_path / "toy.json").write_text(json.dumps(prompt))
    return tmp_path


@pytest.fixture
def models(tmp_path):
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "v1-5-pruned-emaonly.ckpt").write_bytes(b"")
    (tmp_path / "models" / "loras").mkdir()
    (tmp_path / "models" / "loras" / "lcm-lora-sdv1-5.safetensors").write_bytes(b"")
    return tmp_path


def test_nodes_lists_registered_nodes(toy):
    out = _cli("nodes", cwd=toy, nodes=[toy / "toy_nodes.py"])
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert [r[:3] for r in rows] == [["Number", "A Number", "toy"], ["Print", "Print", ""], ["Wait", "Wait", ""]]


def test_run_and_validate_toy_workflow_with_set(toy):
    out = _cli("run", "toy.json", "--set", "1.value=42", cwd=toy, nodes=[toy / "toy_nodes.py"])
    assert out.returncode == 0, out.stderr
    assert "value 42" in out.stdout
    out = _cli("validate", "toy.json", cwd=toy, nodes=[toy / "toy_nodes.py"])
    assert out.returncode == 0 and out.stdout.startswith("ok: 3 node(s)")


@pytest.mark.parametrize(
    "args, status, fragments",
    [
        (["run", "missing.json"], 2, ["workflow file missing.json does not exist"]),
        (
            ["run", "toy.json", "--set", "1.value=500", "--set", "2.a=7"],
            2,
            [
                "node 1 (Number), input 'value': value 500 is bigger than the maximum 100",
                "node 2 (Print), input 'a': expects a link",
            ],
        ),
        (["validate", "toy.json", "--set", "9.value=1"], 2, ["no node 9 in the workflow"]),
        (["run", "toy.json", "--set", "1value=1"], 2, ["expected NODE.INPUT=VALUE"]),
        (["run", "toy.json", "--set", "1.value=13"], 1, ["node 1 (Number) failed: RuntimeError: thirteen is unlucky"]),
    ],
)
def test_errors_are_one_line_with_a_status(toy, args, status, fragments):
    out = _cli(*args, cwd=toy, nodes=[toy / "toy_nodes.py"])
    assert out.returncode == status
    line = _error_line(out)
    for fragment in fragments:
        assert fragment in line


def test_debug_shows_the_traceback(toy):
    out = _cli("run", "toy.json", "--set", "1.value=13", "--debug", cwd=toy, nodes=[toy / "toy_nodes.py"])
    assert out.returncode != 0 and "Traceback" in out.stderr and "thirteen is unlucky" in out.stderr


def test_unknown_class_without_node_file(toy):
    out = _cli("validate", "toy.json", cwd=toy, nodes=[])
    line = _error_line(out)
    assert out.returncode == 2 and "node 1 (Number): unknown node class 'Number'" in line


def test_ctrl_c_stops_cleanly_with_status_130(toy):
    prompt = {
        "1": {"class_type": "Number", "inputs": {"value": 5}},
        "2": {"class_type": "Wait", "inputs": {"a": ["1", 0], "marker": str(toy / "started")}},
        "3": {"class_type": "Print", "inputs": {"a": ["2", 0]}},
    }
    (toy / "wait.json").write_text(json.dumps(prompt))
    command = [sys.executable, "-m", "lcm_accel", "run", "wait.json", "--nodes", "toy_nodes.py", "--no-builtin-nodes"]
    # a child inherits an ignored SIGINT (a suite started as a background job): give it the default back
    process = subprocess.Popen(
        command,
        cwd=toy,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 30
    while not (toy / "started").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "error: stopped by Ctrl-C while node 2 (Wait) was running"


def test_ui_workflow_api_out_and_png_round_trip(models):
    out = _cli(
        "run",
        str(DATA / "txt2img_variants.ui.json"),
        "--models",
        "models",
        "--out",
        "results",
        "--api-out",
        "api.json",
        "--set",
        "3.seed=99",
        cwd=models,
        nodes=[STUBS],
    )
    assert out.returncode == 0, out.stderr
    expected = json.loads((DATA / "txt2img_variants.api.json").read_text())
    expected["3"]["inputs"]["seed"] = 99
    assert json.loads((models / "api.json").read_text()) == expected
    png = models / "results" / "lcm_00001_.png"
    assert f"saved {png}" in out.stdout
    out = _cli(
        "run", str(png), "--models", "models", "--out", "results", "--api-out", "again.json", cwd=models, nodes=[STUBS]
    )
    assert out.returncode == 0, out.stderr
    assert (models / "results" / "lcm_00002_.png").is_file()
    # The seed is fed by a PrimitiveNode, so --set cannot be written into the UI workflow: the PNG
    # then carries only the API prompt that was run (never a stale workflow), and re-runs with seed 99.
    from PIL import Image

    assert "workflow" not in Image.open(png).text
    assert json.loads((models / "again.json").read_text()) == expected


def test_set_on_a_widget_is_written_into_the_embedded_workflow(models):
    out = _cli(
        "run",
        str(DATA / "txt2img_variants.ui.json"),
        "--models",
        "models",
        "--out",
        "results",
        "--set",
        "3.steps=7",
        cwd=models,
        nodes=[STUBS],
    )
    assert out.returncode == 0, out.stderr
    from PIL import Image

    (png,) = (models / "results").glob("*.png")
    embedded = json.loads(Image.open(png).text["workflow"])
    original = json.loads((DATA / "txt2img_variants.ui.json").read_text())
    (ksampler,) = [n for n in embedded["nodes"] if n["id"] == 3]
    (before,) = [n for n in original["nodes"] if n["id"] == 3]
    changed = [i for i, (a, b) in enumerate(zip(before["widgets_values"], ksampler["widgets_values"])) if a != b]
    assert [ksampler["widgets_values"][i] for i in changed] == [7]
    out = _cli(
        "run", str(png), "--models", "models", "--out", "results", "--api-out", "again.json", cwd=models, nodes=[STUBS]
    )
    assert out.returncode == 0, out.stderr
    assert json.loads((models / "again.json").read_text())["3"]["inputs"]["steps"] == 7


def test_missing_model_file_is_a_one_line_error(models):
    out = _cli(
        "run",
        str(DATA / "default_txt2img.api.json"),
        "--models",
        "models",
        "--set",
        "4.ckpt_name=other.safetensors",
        cwd=models,
        nodes=[STUBS],
    )
    line = _error_line(out)
    assert out.returncode == 2
    assert "node 4 (CheckpointLoaderSimple), input 'ckpt_name': value 'other.safetensors' is not in the list" in line


def test_default_registry_includes_the_pack_and_standalone_host():
    from lcm_accel.harness import default_registry
    from lcm_accel.nodes import OLD_NODE_IDS, PACK_NODES

    registry = default_registry()
    assert set(PACK_NODES) <= set(registry.names())
    # the ids used before the LCMAccel_ prefix name the same classes (saved workflows keep running)
    assert registry.aliases() == OLD_NODE_IDS
    assert all(registry.get(old) is PACK_NODES[new] for old, new in OLD_NODE_IDS.items())
    try:
        from lcm_accel.hosts import standalone
    except ImportError:
        return
    assert set(getattr(standalone, "NODE_CLASS_MAPPINGS", {})) <= set(registry.names())
