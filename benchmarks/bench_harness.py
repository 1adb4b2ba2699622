"""Harness overhead per node: a 200-node chain of trivial nodes, timed through UI->API
conversion, validation, a cold execution and a fully cached one.

    python benchmarks/bench_harness.py [--nodes 200] [--repeats 20]

Prints microseconds per node (best of the repeats); the node bodies do nothing, so this is
the harness's own cost.
"""

from __future__ import annotations

import argparse
import time

from lcm_accel.harness import Executor, NodeRegistry, convert_ui_to_api, validate_prompt


class Start:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": 0, "max": 1 << 30})}}

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"

    def run(self, value):
        return (value,)


class Step:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("NUMBER",), "add": ("INT", {"default": 1, "min": 0, "max": 10})}}

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"

    def run(self, a, add):
        return (a + add,)


class End:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("NUMBER",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, a):
        return {"ui": {"value": [a]}}


def chain_ui(n: int) -> dict:
    """A UI-format chain Start -> Step x (n-2) -> End."""
    nodes, links = [], []
    for i in range(1, n + 1):
        kind = "Start" if i == 1 else "End" if i == n else "Step"
        node = {"id": i, "type": kind, "mode": 0, "inputs": [], "outputs": []}
        if kind != "Start":
            node["inputs"] = [{"name": "a", "type": "NUMBER", "link": i - 1}]
            links.append([i - 1, i - 1, 0, i, 0, "NUMBER"])
        if kind != "End":
            node["outputs"] = [{"name": "NUMBER", "type": "NUMBER", "links": [i]}]
        node["widgets_values"] = {"Start": [0], "Step": [1], "End": []}[kind]
        nodes.append(node)
    return {"nodes": nodes, "links": links, "groups": [], "version": 0.4}


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    registry = NodeRegistry()
    registry.update({"Start": Start, "Step": Step, "End": End})
    ui = chain_ui(args.nodes)
    prompt = convert_ui_to_api(ui, registry)
    validated = validate_prompt(prompt, registry)
    result = Executor(registry).run_validated(validated, prompt)
    assert result.ui[str(args.nodes)]["value"] == [args.nodes - 2], "the chain computed the wrong value"

    def cold():
        Executor(registry).run_validated(validated, prompt)

    warm_executor = Executor(registry)
    warm_executor.run_validated(validated, prompt)

    timings = {
        "convert (UI->API)": best(lambda: convert_ui_to_api(ui, registry), args.repeats),
        "validate": best(lambda: validate_prompt(prompt, registry), args.repeats),
        "execute, cold": best(cold, args.repeats),
        "execute, cached": best(lambda: warm_executor.run_validated(validated, prompt), args.repeats),
        "validate + cached run": best(lambda: warm_executor.run(prompt), args.repeats),
    }
    print(f"{args.nodes}-node chain, best of {args.repeats}:")
    for name, seconds in timings.items():
        print(f"  {name:<24} {seconds * 1e3:8.2f} ms total  {seconds / args.nodes * 1e6:8.1f} us/node")


if __name__ == "__main__":
    main()
