"""Execution: order, caching across runs (counted calls), IS_CHANGED, list mapping, hidden
inputs, progress hook, interruption and node errors."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest

from lcm_accel.harness import (
    ExecutionInterrupted,
    Executor,
    NodeExecutionError,
    NodeRegistry,
    ProgressBar,
    load_node_file,
    request_interrupt,
)
from lcm_accel.harness.runner import api_prompt
from lcm_accel.harness.workflow_io import load_workflow
from lcm_accel.runtime.interrupt import interrupt_requested
from lcm_accel.runtime.model_paths import ModelPaths

DATA = Path(__file__).parent / "data" / "harness"
CALLS: Counter = Counter()


class Source:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1})}}

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"

    def run(self, value):
        CALLS["Source"] += 1
        return (value,)


class Add:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("NUMBER",), "b": ("INT", {"default": 0})}}

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"

    def run(self, a, b):
        CALLS["Add"] += 1
        return (a + b,)


class Spread:
    """One value in, a list out (OUTPUT_IS_LIST): downstream nodes are mapped over it."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("NUMBER",), "count": ("INT", {"default": 3})}}

    RETURN_TYPES = ("NUMBER", "INT")
    OUTPUT_IS_LIST = (True, False)
    FUNCTION = "run"

    def run(self, a, count):
        CALLS["Spread"] += 1
        return ([a + i for i in range(count)], count)


class Total:
    """INPUT_IS_LIST: receives whole lists at once."""

    INPUT_IS_LIST = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("NUMBER",)}}

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"

    def run(self, a):
        CALLS["Total"] += 1
        return (sum(a),)


class Collect:
    """Output node with hidden inputs; returns the dict form {"ui", "result"}."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"a": ("NUMBER",)},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, a, prompt, extra_pnginfo, unique_id):
        CALLS["Collect"] += 1
        return {
            "ui": {"values": [a], "ids": [unique_id], "has_prompt": [prompt is not None], "extra": [extra_pnginfo]},
            "result": (a,),
        }


class Slow:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("NUMBER",), "steps": ("INT", {"default": 4})}}

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"
    stop_at: int | None = None
    keyboard = False

    def run(self, a, steps):
        CALLS["Slow"] += 1
        bar = ProgressBar(steps)
        for step in range(steps):
            if step == Slow.stop_at:
                if Slow.keyboard:
                    raise KeyboardInterrupt
                request_interrupt()
            bar.update(1)
        return (a,)


class Volatile:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("NUMBER",), "token": ("STRING", {})}}

    @classmethod
    def IS_CHANGED(cls, token):
        return float("nan") if token == "always" else token

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"

    def run(self, a, token):
        CALLS["Volatile"] += 1
        return (a,)


class Broken:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("NUMBER",)}}

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"

    def run(self, a):
        raise ValueError("the tensor shapes do not match")


@pytest.fixture
def executor():
    CALLS.clear()
    Slow.stop_at, Slow.keyboard = None, False
    reg = NodeRegistry()
    reg.update({c.__name__: c for c in (Source, Add, Spread, Total, Collect, Slow, Volatile, Broken)})
    return Executor(reg)


def _chain(seed=5, middle="Add", extra=None):
    prompt = {
        "1": {"class_type": "Source", "inputs": {"value": 10}},
        "2": {"class_type": middle, "inputs": {"a": ["1", 0], "b": seed, **(extra or {})}},
        "3": {"class_type": "Collect", "inputs": {"a": ["2", 0]}},
        "9": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},  # leads to no output: never run
    }
    return prompt


def test_runs_only_what_outputs_need_and_passes_hidden_inputs(executor):
    result = executor.run(_chain(), extra_pnginfo={"workflow": {"nodes": []}})
    assert result.output("3") == [15]
    assert result.executed == ["1", "2", "3"] and "9" not in result.results
    assert result.ui["3"] == {
        "values": [15],
        "ids": ["3"],
        "has_prompt": [True],
        "extra": [{"workflow": {"nodes": []}}],
    }


def test_second_run_with_a_new_seed_reruns_only_downstream(executor):
    executor.run(_chain(seed=5))
    assert CALLS == Counter(Source=1, Add=1, Collect=1)
    again = executor.run(_chain(seed=5))
    assert again.executed == [] and again.cached == ["1", "2", "3"] and again.output("3") == [15]
    changed = executor.run(_chain(seed=6))
    assert changed.executed == ["2", "3"] and changed.cached == ["1"] and changed.output("3") == [16]
    assert CALLS == Counter(Source=1, Add=2, Collect=2)
    upstream = _chain(seed=6)
    upstream["1"]["inputs"]["value"] = 20  # an upstream change invalidates everything after it
    assert executor.run(upstream).executed == ["1", "2", "3"]


def test_is_changed_controls_caching(executor):
    prompt = _chain(middle="Volatile", extra={"token": "v1"})
    del prompt["2"]["inputs"]["b"]
    executor.run(prompt)
    executor.run(prompt)
    assert CALLS["Volatile"] == 1
    prompt["2"]["inputs"]["token"] = "always"  # NaN: never equal, always re-run
    executor.run(prompt)
    executor.run(prompt)
    assert CALLS["Volatile"] == 3


def test_list_outputs_are_mapped_and_input_is_list_gets_whole_lists(executor):
    prompt = {
        "1": {"class_type": "Source", "inputs": {"value": 10}},
        "2": {"class_type": "Spread", "inputs": {"a": ["1", 0], "count": 3}},
        "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 100}},
        "4": {"class_type": "Collect", "inputs": {"a": ["3", 0]}},
        "5": {"class_type": "Total", "inputs": {"a": ["3", 0]}},
        "6": {"class_type": "Collect", "inputs": {"a": ["5", 0]}},
    }
    result = executor.run(prompt)
    assert result.output("2", 0) == [10, 11, 12] and result.output("2", 1) == [3]
    assert result.output("3") == [110, 111, 112] and CALLS["Add"] == 3
    assert result.ui["4"]["values"] == [110, 111, 112]  # ui lists of the mapped calls are merged
    assert result.output("6") == [333] and CALLS["Total"] == 1


def test_progress_hook_sees_each_step(executor):
    seen = []
    prompt = _chain(middle="Slow", extra={"steps": 3})
    del prompt["2"]["inputs"]["b"]
    executor.run(prompt, progress_hook=lambda node, value, total: seen.append((node, value, total)))
    assert seen == [("2", 1, 3), ("2", 2, 3), ("2", 3, 3)]


@pytest.mark.parametrize("keyboard", [False, True])
def test_interrupt_names_the_node_and_keeps_finished_ones(executor, keyboard):
    prompt = _chain(middle="Slow", extra={"steps": 4})
    del prompt["2"]["inputs"]["b"]
    Slow.stop_at, Slow.keyboard = 2, keyboard
    with pytest.raises(ExecutionInterrupted, match=r"node 2 \(Slow\)") as caught:
        executor.run(prompt, progress_hook=lambda *a: None)
    assert caught.value.node_id == "2" and not interrupt_requested()
    Slow.stop_at = None
    result = executor.run(prompt, progress_hook=lambda *a: None)
    assert result.cached == ["1"] and result.executed == ["2", "3"] and CALLS["Source"] == 1


def test_interrupt_from_another_thread(executor):
    started, release = threading.Event(), threading.Event()

    class Waiter(Slow):
        def run(self, a, steps):
            bar = ProgressBar(steps)
            started.set()
            release.wait(5)
            bar.update(1)
            return (a,)

    executor.registry.register("Waiter", Waiter)
    prompt = _chain(middle="Waiter", extra={"steps": 2})
    del prompt["2"]["inputs"]["b"]
    errors = []
    worker = threading.Thread(target=lambda: errors.append(pytest.raises(ExecutionInterrupted, executor.run, prompt)))
    worker.start()
    assert started.wait(5)
    request_interrupt()
    release.set()
    worker.join(5)
    assert errors and errors[0].value.node_id == "2"


def test_node_errors_name_the_node_and_keep_the_cause(executor):
    prompt = _chain(middle="Broken")
    del prompt["2"]["inputs"]["b"]
    with pytest.raises(NodeExecutionError, match=r"node 2 \(Broken\) failed: ValueError: the tensor shapes") as caught:
        executor.run(prompt)
    assert isinstance(caught.value.__cause__, ValueError)


def test_wrong_return_shape_is_an_error_naming_the_node(executor):
    class Sloppy(Add):
        def run(self, a, b):
            return a + b

    executor.registry.register("Sloppy", Sloppy)
    with pytest.raises(NodeExecutionError, match=r"node 2 \(Sloppy\).*expected a tuple of 1"):
        executor.run(_chain(middle="Sloppy"))


def test_default_graph_runs_end_to_end_and_saves_a_png_that_round_trips(tmp_path):
    """The UI default graph through the ComfyUI stand-ins: the loader is not called again when
    only the seed changes, and the saved PNG carries prompt + workflow like ComfyUI's."""
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "v1-5-pruned-emaonly.ckpt").write_bytes(b"")
    registry = NodeRegistry()
    load_node_file(registry, DATA / "comfy_stub_nodes.py")
    stubs = __import__("sys").modules[registry.get("KSampler").__module__]
    stubs.CALLS.clear()
    paths = ModelPaths(tmp_path / "models", output_dir=tmp_path / "out")
    executor = Executor(registry, paths)
    ui_file = DATA / "default_txt2img.ui.json"
    from lcm_accel.runtime.model_paths import use_model_paths

    with use_model_paths(paths):
        prompt, extra = api_prompt(load_workflow(ui_file), registry)
    first = executor.run(prompt, extra_pnginfo=extra)
    assert (tmp_path / "out" / "ComfyUI_00001_.png").is_file()
    prompt["3"]["inputs"]["seed"] = 7
    second = executor.run(prompt, extra_pnginfo=extra)
    assert set(second.executed) == {"3", "8", "9"} and set(second.cached) == {"4", "5", "6", "7"}
    assert [c[0] for c in stubs.CALLS].count("CheckpointLoaderSimple") == 1
    assert first.ui["9"]["images"][0]["filename"] == "ComfyUI_00001_.png"
    saved = load_workflow(tmp_path / "out" / "ComfyUI_00002_.png")
    assert saved.kind == "ui" and saved.data == json.loads(ui_file.read_text())
    from PIL import Image

    with Image.open(tmp_path / "out" / "ComfyUI_00002_.png") as image:
        assert json.loads(image.text["prompt"])["3"]["inputs"]["seed"] == 7


def test_progress_bar_without_hook_uses_tqdm_quietly():
    bar = ProgressBar(3)
    bar.update(1)
    bar.update_absolute(2, total=4)
    assert (bar.current, bar.total) == (2, 4)
    bar.update(5)
    assert bar.current == 4  # clamped to the total
    bar.close()
