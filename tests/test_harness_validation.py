"""Validation of API prompts: every kind of error ComfyUI reports, each naming node, class
and input, all reported together."""

from __future__ import annotations

import pytest

from lcm_accel.harness import NodeRegistry, ValidationError, validate_prompt
from lcm_accel.harness.errors import NodeDefinitionError


class MakeNumber:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1, "min": 0, "max": 10})}}

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"

    def run(self, value):
        return (value,)


class Scale:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"number": ("NUMBER",), "factor": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 2.0})},
            "optional": {
                "mode": (["mul", "add"], {"default": "mul"}),
                "flag": ("BOOLEAN", {"default": False}),
                "label": ("STRING", {"default": ""}),
                "kind": ("COMBO", {"options": ["a", "b"]}),
            },
        }

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"

    def run(self, number, factor, **_):
        return (number * factor,)


class Show:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"number": ("NUMBER",)}, "optional": {"anything": ("*",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, number, anything=None):
        return {"ui": {"number": [number]}}


class Picky:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {}), "number": ("NUMBER",)}}

    @classmethod
    def VALIDATE_INPUTS(cls, name, input_types):
        if input_types.get("number") != "NUMBER":
            return "number must come from a NUMBER output"
        return True if name.endswith(".txt") else f"name {name!r} must end in .txt"

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"

    def run(self, name, number):
        return (number,)


class Loose:
    """VALIDATE_INPUTS takes `value`, so the built-in range check is skipped for it (ComfyUI rule)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"min": 0, "max": 1})}}

    @classmethod
    def VALIDATE_INPUTS(cls, value):
        return True

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"

    def run(self, value):
        return (value,)


@pytest.fixture
def registry():
    reg = NodeRegistry()
    reg.update({"MakeNumber": MakeNumber, "Scale": Scale, "Show": Show, "Picky": Picky, "Loose": Loose})
    return reg


def _ok_prompt():
    return {
        "1": {"class_type": "MakeNumber", "inputs": {"value": 3}},
        "2": {"class_type": "Scale", "inputs": {"number": ["1", 0], "factor": 1.5, "mode": "add", "kind": "b"}},
        "3": {"class_type": "Show", "inputs": {"number": ["2", 0]}},
    }


def _problems(prompt, registry):
    with pytest.raises(ValidationError) as caught:
        validate_prompt(prompt, registry)
    return {(p.node_id, p.class_type, p.input_name): p.message for p in caught.value.problems}


def test_valid_prompt_gives_order_and_converted_values(registry):
    prompt = _ok_prompt()
    prompt["2"]["inputs"]["factor"] = "0.5"  # ComfyUI converts text numbers
    validated = validate_prompt(prompt, registry)
    assert validated.order == ["1", "2", "3"] and validated.output_ids == ["3"]
    assert validated.prompt["2"]["inputs"]["factor"] == 0.5
    assert validated.prompt["2"]["inputs"]["number"] == ("1", 0)


@pytest.mark.parametrize(
    "change, where, text",
    [
        (lambda p: p["2"].update(class_type="Scal"), ("2", "Scal", None), "unknown node class 'Scal'"),
        (lambda p: p["2"]["inputs"].pop("factor"), ("2", "Scale", "factor"), "required input is missing"),
        (lambda p: p["3"]["inputs"].update(number=["9", 0]), ("3", "Show", "number"), "node 9, which is not in"),
        (lambda p: p["3"]["inputs"].update(number=["2", 1]), ("3", "Show", "number"), "has 1 output(s)"),
        (lambda p: p["3"]["inputs"].update(number=["2"]), ("3", "Show", "number"), "bad link"),
        (lambda p: p["2"]["inputs"].update(factor=2.5), ("2", "Scale", "factor"), "bigger than the maximum 2.0"),
        (lambda p: p["1"]["inputs"].update(value=-1), ("1", "MakeNumber", "value"), "smaller than the minimum 0"),
        (lambda p: p["2"]["inputs"].update(mode="div"), ("2", "Scale", "mode"), "'div' is not in the list"),
        (lambda p: p["2"]["inputs"].update(kind="c"), ("2", "Scale", "kind"), "'c' is not in the list"),
        (lambda p: p["1"]["inputs"].update(value="many"), ("1", "MakeNumber", "value"), "expected an integer"),
        (lambda p: p["1"]["inputs"].update(value=2.5), ("1", "MakeNumber", "value"), "expected an integer"),
        (lambda p: p["1"]["inputs"].update(value=True), ("1", "MakeNumber", "value"), "expected an integer"),
        (lambda p: p["2"]["inputs"].update(flag="yes"), ("2", "Scale", "flag"), "expected true or false"),
        (lambda p: p["2"]["inputs"].update(label=5), ("2", "Scale", "label"), "expected a string"),
        (lambda p: p["2"]["inputs"].update(number=7), ("2", "Scale", "number"), "expects a link"),
    ],
)
def test_each_error_names_node_class_and_input(registry, change, where, text):
    prompt = _ok_prompt()
    change(prompt)
    problems = _problems(prompt, registry)
    assert list(problems) == [where]
    assert text in problems[where]


def test_type_mismatch_across_a_link(registry):
    registry.register("MakeText", type("MakeText", (MakeNumber,), {"RETURN_TYPES": ("STRING",)}))
    prompt = _ok_prompt()
    prompt["1"]["class_type"] = "MakeText"
    problems = _problems(prompt, registry)
    assert "expects NUMBER, but output 0 of node 1 (MakeText) is STRING" in problems[("2", "Scale", "number")]


def test_star_type_accepts_any_link(registry):
    prompt = _ok_prompt()
    prompt["3"]["inputs"]["anything"] = ["1", 0]
    validate_prompt(prompt, registry)


def test_cycle_and_no_output(registry):
    prompt = _ok_prompt()
    prompt["4"] = {"class_type": "Scale", "inputs": {"number": ["5", 0], "factor": 1}}
    prompt["5"] = {"class_type": "Scale", "inputs": {"number": ["4", 0], "factor": 1}}
    prompt["3"]["inputs"]["anything"] = ["5", 0]
    messages = " | ".join(_problems(prompt, registry).values())
    assert "cycle" in messages and "4" in messages and "5" in messages
    no_output = {"1": {"class_type": "MakeNumber", "inputs": {"value": 3}}}
    assert "no output node" in _problems(no_output, registry)[(None, None, None)]


def test_all_errors_reported_together_and_unreachable_nodes_ignored(registry):
    prompt = _ok_prompt()
    prompt["1"]["inputs"]["value"] = 99
    prompt["2"]["inputs"]["mode"] = "div"
    prompt["3"]["inputs"]["anything"] = ["8", 0]
    prompt["7"] = {"class_type": "Scale", "inputs": {}}  # leads to no output: not checked, like ComfyUI
    with pytest.raises(ValidationError) as caught:
        validate_prompt(prompt, registry)
    assert len(caught.value.problems) == 3
    text = str(caught.value)
    assert text.count("\n  - ") == 3 and "node 1 (MakeNumber), input 'value'" in text
    assert "node 7" not in text
    assert caught.value.one_line().count("; ") == 2 and "\n" not in caught.value.one_line()


def test_validate_inputs_is_honoured(registry):
    prompt = _ok_prompt()
    prompt["4"] = {"class_type": "Picky", "inputs": {"name": "a.txt", "number": ["1", 0]}}
    prompt["3"]["inputs"]["number"] = ["4", 0]
    validate_prompt(prompt, registry)
    prompt["4"]["inputs"]["name"] = "a.png"
    assert "name 'a.png' must end in .txt" in _problems(prompt, registry)[("4", "Picky", None)]
    prompt["5"] = {"class_type": "Loose", "inputs": {"value": 7}}  # out of its min/max but VALIDATE_INPUTS owns it
    prompt["3"]["inputs"]["number"] = ["5", 0]
    validate_prompt(prompt, registry)


def test_registry_refuses_broken_classes_and_name_clashes(registry):
    class NoFunction:
        @classmethod
        def INPUT_TYPES(cls):
            return {}

        RETURN_TYPES = ()
        FUNCTION = "missing"

    with pytest.raises(NodeDefinitionError, match="NoFunction: FUNCTION must name a method"):
        registry.register("NoFunction", NoFunction)
    with pytest.raises(NodeDefinitionError, match="'Show' from other.py is already registered"):
        registry.register("Show", MakeNumber, source="other.py")
