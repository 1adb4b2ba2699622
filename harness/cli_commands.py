"""The harness's sub-commands of `python -m lcm_accel`: run, batch, validate, nodes.

Every failure ends with ONE line `error: ...` on stderr and a non-zero status (2: the
workflow or the command line is wrong, 1: a node failed while running, 130: interrupted);
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from ..runtime.errors import RunError
from ..runtime.interrupt import ExecutionInterrupted
from ..runtime.model_paths import ModelPaths, use_model_paths
from .errors import HarnessError, NodeExecutionError, WorkflowError
from .registry import NodeRegistry, default_registry, load_node_file

EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 1, 2, 130


def add_harness_commands(sub: argparse._SubParsersAction) -> None:
    """Add `run`, `validate` and `nodes` to the top-level parser's sub-commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--nodes",
        action="append",
        default=[],
        metavar="FILE.py",
        help="also register the NODE_CLASS_MAPPINGS of this Python file (repeatable)",
    )
    common.add_argument(
        "--no-builtin-nodes",
        action="store_true",
        help="register only the nodes of --nodes files (not the pack's nor the standalone host's)",
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    workflow = argparse.ArgumentParser(add_help=False)
    workflow.add_argument("workflow", help="workflow .json (API or UI format) or .png with ComfyUI metadata")
    workflow.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NODE.INPUT=VALUE",
        help="set an input of a node, e.g. --set 3.seed=42 (value parsed as JSON when possible)",
    )
    workflow.add_argument("--api-out", metavar="FILE", help="write the API-format prompt that is run/validated")
    common.add_argument("--models", default="models", help="models folder in ComfyUI's layout (default: ./models)")
    common.add_argument("--input", default=None, help="input folder (default: 'input' beside the models folder)")
    common.add_argument("--out", default="output", help="output folder (default: ./output)")
    run = sub.add_parser("run", parents=[common, workflow], help="run a ComfyUI workflow headless")
    run.add_argument(
        "--fast",
        action="store_true",
        help="fast mode for every MODEL / CLIP / VAE of the workflow: captured UNet steps, text encodes "
        "and VAE decodes on CUDA; says once why where it cannot (then runs eager)",
    )
    run.add_argument(
        "--fast-backend",
        choices=("cuda_graph", "torch_compile"),
        default="cuda_graph",
        help="how --fast captures the forwards (default: cuda_graph)",
    )
    _add_placement_options(run)
    batch = sub.add_parser(
        "batch",
        parents=[common],
        help="run a workflow once per job of a CSV / JSONL file (resumable; several processes under accelerate launch)",
    )
    batch.add_argument("workflow", help="workflow .json (API or UI format) or .png with ComfyUI metadata")
    batch.add_argument(
        "--jobs",
        required=True,
        metavar="FILE",
        help='CSV (NODE.INPUT columns, optional id) or JSONL ({"3.seed": 7, ...} per line) of per-image --set values',
    )
    batch.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NODE.INPUT=VALUE",
        help="set an input for every job (a job's own values come after)",
    )
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_placement_options(batch)
    sub.add_parser("validate", parents=[common, workflow], help="check a workflow without running it")
    nodes = sub.add_parser("nodes", parents=[common], help="list the registered nodes (and their inputs)")
    nodes.add_argument("--inputs", action="store_true", help="also list each node's inputs and outputs")
    nodes.add_argument(
        "--json", action="store_true", help="print ids, display names, categories, inputs and outputs as JSON"
    )
    migrate = sub.add_parser(
        "migrate", parents=[common], help="rewrite the old node ids of a saved workflow to the pack's current ones"
    )
    migrate.add_argument("workflow", help="workflow .json (API or UI format)")
    migrate.add_argument("-o", "--output", help="write here (default: overwrite the workflow file)")


def _add_placement_options(parser: argparse.ArgumentParser) -> None:
    """--device / --dtype / --text-encoder-dtype / --vae-dtype (run and batch)."""
    precisions = ("fp32", "fp16", "bf16")
    parser.add_argument(
        "--device",
        default="auto",
        help="where the standalone host's models run: auto (default: CUDA when available, else CPU; "
        "each process's own GPU under accelerate launch), cpu, cuda or cuda:N",
    )
    parser.add_argument(
        "--dtype",
        choices=precisions,
        default=None,
        help="UNet and text encoder precision (default: fp16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument(
        "--text-encoder-dtype", choices=precisions, default=None, help="text encoder precision, if not that of --dtype"
    )
    parser.add_argument(
        "--vae-dtype",
        choices=precisions,
        default=None,
        help="VAE precision (default: bf16 on CUDA GPUs that have it, else fp32; fp16 overflows in SD1.5's VAE)",
    )


def build_registry(node_files: list[str], builtin: bool = True) -> NodeRegistry:
    """The default registry (unless `builtin` is False) plus the nodes of `node_files`."""
    registry = default_registry() if builtin else NodeRegistry()
    for path in node_files:
        load_node_file(registry, path)
    return registry


def _prepare(args: argparse.Namespace, registry: NodeRegistry) -> tuple[dict, dict | None]:
    from .runner import api_prompt, apply_overrides
    from .workflow_io import load_workflow

    prompt, extra = api_prompt(load_workflow(args.workflow), registry)
    apply_overrides(prompt, args.set, registry, extra)
    if args.api_out:
        Path(args.api_out).write_text(json.dumps(prompt, indent=2) + "\n", encoding="utf-8")
    return prompt, extra


def node_listing(registry: NodeRegistry) -> dict[str, dict]:
    """Every registered node: display name, category, inputs by section ({name: type}) and outputs,
    as ComfyUI's /object_info describes them (`nodes --json`)."""
    listing = {}
    for name in registry.names():
        spec = registry.spec(name)
        inputs: dict[str, dict[str, str]] = {}
        for entry in spec.inputs.values():
            inputs.setdefault(entry.category, {})[entry.name] = entry.type
        listing[name] = {
            "display_name": registry.display_name(name),
            "category": getattr(registry.get(name), "CATEGORY", ""),
            "inputs": inputs,
            "outputs": [str(kind) for kind in spec.return_types],
        }
    return listing


def _cmd_nodes(args: argparse.Namespace, registry: NodeRegistry) -> int:
    if args.json:
        print(json.dumps({"nodes": node_listing(registry), "renamed": registry.aliases()}, indent=2))
        return 0
    listing = node_listing(registry) if args.inputs else {}
    for name in registry.names():
        node_class = registry.get(name)
        category = getattr(node_class, "CATEGORY", "")
        print(f"{name}\t{registry.display_name(name)}\t{category}\t{registry.source(name)}")
        for section, inputs in listing.get(name, {}).get("inputs", {}).items():
            for input_name, kind in inputs.items():
                print(f"    {section} {input_name}: {kind}")
        if name in listing:
            print(f"    -> {', '.join(listing[name]['outputs']) or '(output node)'}")
    for old, new in sorted(registry.aliases().items()):
        print(f"{old}\t-> {new}\t(old id: workflows saved with it load as {new})")
    if not len(registry):
        print("no nodes registered", file=sys.stderr)
    return 0


def migrate_workflow(data: dict, aliases: dict[str, str]) -> tuple[dict, list[str]]:
    """`data` (API or UI format) with each old node id replaced by its current one; and what changed."""
    from .workflow_io import detect_format

    changed = []
    if detect_format(data) == "api":
        nodes = [(node_id, node, "class_type") for node_id, node in data.items()]
    else:
        nodes = [(node.get("id"), node, "type") for node in data["nodes"]]
        for subgraph in (data.get("definitions") or {}).get("subgraphs") or []:
            nodes += [(node.get("id"), node, "type") for node in subgraph.get("nodes", [])]
    for node_id, node, key in nodes:
        new = aliases.get(node.get(key))
        if new is None:
            continue
        changed.append(f"node {node_id}: {node[key]} -> {new}")
        node[key] = new
        properties = node.get("properties")
        if isinstance(properties, dict) and properties.get("Node name for S&R") in aliases:
            properties["Node name for S&R"] = new
    return data, changed


def _cmd_migrate(args: argparse.Namespace, registry: NodeRegistry) -> int:
    path = Path(args.workflow)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise HarnessError(f"{path}: cannot read the workflow ({error})") from error
    data, changed = migrate_workflow(data, registry.aliases())
    target = Path(args.output) if args.output else path
    target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print("\n".join(changed) if changed else "no old node ids in the workflow", file=sys.stderr)
    print(f"wrote {target}")
    return 0


def _cmd_validate(args: argparse.Namespace, registry: NodeRegistry) -> int:
    from .validation import validate_prompt

    prompt, _ = _prepare(args, registry)
    validated = validate_prompt(prompt, registry)
    print(f"ok: {len(validated.order)} node(s) to run, output node(s) {', '.join(validated.output_ids)}")
    return 0


def _cmd_run(args: argparse.Namespace, registry: NodeRegistry) -> int:
    from ..runtime.model_paths import get_model_paths
    from .executor import Executor

    prompt, extra = _prepare(args, registry)
    paths = get_model_paths()
    start = time.perf_counter()
    with _placement(args), _fast_mode(args.fast_backend if getattr(args, "fast", False) else None):
        result = Executor(registry, paths).run(prompt, extra_pnginfo=extra)
    elapsed = time.perf_counter() - start
    for ui in result.ui.values():
        for item in ui.get("images", []) if isinstance(ui, dict) else []:
            if isinstance(item, dict) and item.get("type", "output") == "output" and "filename" in item:
                print(f"saved {paths.output_dir / item.get('subfolder', '') / item['filename']}")
    print(f"ran {len(result.executed)} node(s) in {elapsed:.2f} s")
    return 0


def _cmd_batch(args: argparse.Namespace, registry: NodeRegistry) -> int:
    from ..runtime.model_paths import get_model_paths
    from .batch import process_device, process_state, run_batch
    from .jobs import read_jobs

    jobs = read_jobs(args.jobs)
    state = process_state(args.device)
    args.device = process_device(state, args.device)
    start = time.perf_counter()
    try:
        with _placement(args):
            summary = run_batch(
                args.workflow, jobs, registry, get_model_paths(), args.set, state, progress=not args.no_progress
            )
    except (KeyboardInterrupt, ExecutionInterrupted):
        print(
            f"batch interrupted: the finished jobs are recorded in {get_model_paths().output_dir}; run the same "
            "command again to continue",
            flush=True,
        )
        raise
    if not state.is_main_process:
        return 0
    failed = (
        f", {len(summary.failed)} failed ({', '.join(summary.failed[:5])}{', ...' if len(summary.failed) > 5 else ''})"
        if summary.failed
        else ""
    )
    print(
        f"batch: {summary.total} job(s), {summary.skipped} done before, {summary.total - summary.skipped} run now "
        f"on {state.num_processes} process(es) in {time.perf_counter() - start:.2f} s{failed}; manifest {summary.manifest}"
    )
    return EXIT_FAILED if summary.failed else 0


def _fast_mode(backend: str | None):
    """`run --fast`: fast mode as the default of every model the workflow loads (standalone host)."""
    if backend is None:
        return contextlib.nullcontext()
    from ..runtime.fast_mode import FastModeSettings, fast_mode_default

    return fast_mode_default(FastModeSettings(True, backend))


def _placement(args: argparse.Namespace):
    """`run --device/--dtype/...`: where the standalone host loads checkpoints for this run; a device
    or dtype this machine lacks is refused here, before any node runs."""
    from ..runtime.devices import DeviceError, DeviceSettings, device_default, resolve

    try:
        placement = resolve(DeviceSettings(args.device, args.dtype, args.text_encoder_dtype, args.vae_dtype))
    except DeviceError as error:
        raise HarnessError(str(error)) from error
    return device_default(placement)


COMMANDS = {
    "run": _cmd_run,
    "batch": _cmd_batch,
    "validate": _cmd_validate,
    "nodes": _cmd_nodes,
    "migrate": _cmd_migrate,
}


def _fail(message: str, status: int) -> int:
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return status


def run_harness_command(args: argparse.Namespace) -> int:
    """Run the parsed sub-command; returns the process exit status."""
    try:
        with use_model_paths(ModelPaths(args.models, input_dir=args.input, output_dir=args.out)):
            registry = build_registry(args.nodes, builtin=not args.no_builtin_nodes)
            return COMMANDS[args.command](args, registry)
    except ExecutionInterrupted as error:
        if args.debug:
            raise
        return _fail(str(error), EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        if args.debug:
            raise
        return _fail("interrupted (Ctrl-C)", EXIT_INTERRUPTED)
    except WorkflowError as error:
        if args.debug:
            raise
        return _fail(error.one_line(), EXIT_INVALID)
    except NodeExecutionError as error:
        if args.debug:
            raise
        return _fail(str(error), EXIT_FAILED)
    except (RunError, OSError) as error:
        if args.debug:
            raise
        return _fail(str(error), EXIT_INVALID)
    except Exception as error:  # a bug: still one line, the traceback behind --debug
        if args.debug:
            raise
        return _fail(
            f"internal error: {type(error).__name__}: {error} (run with --debug for the traceback)", EXIT_FAILED
        )
