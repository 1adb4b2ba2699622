"""Benchmark: `python -m lcm_accel batch` throughput on 1 and 2 processes, and its per-job overhead.

    python benchmarks/bench_batch.py [--jobs 6] [--size 256] [--small]

Models: a full-size SD1.5 single-file checkpoint with random weights (UNet 860M, VAE, CLIP ViT-L) and
a rank-64 LCM-LoRA-shaped file (as benchmarks/bench_lcm_workflow.py builds them); `--small`: the tiny
stand-ins of the tests (a quick smoke run, not a measurement). Workflow: example_workflows/lcm_lora_txt2img.json
(4 LCM steps, cfg 1) at --size, one job per seed and prompt.

1. Throughput, side by side in one run: the same jobs file through `python -m lcm_accel batch` on one
   process (torch's default threads) and through `accelerate launch --multi_gpu --num_processes 2` (CPU:
   gloo, one thread each, as torchrun sets), into fresh output folders. Reported: end-to-end images per
   minute (wall time of the command, start-up and model loading included) and steady-state images per
   minute (from the manifest: each process's jobs after its first, i.e. with the models loaded).
2. Overhead, in this process: `run_batch` itself with the executor's node calls timed; per job, the
   batch's time (overrides, validation, signatures, output folder, manifest line with fsync) is the
   job's wall time minus the time inside nodes, reported against the sampler node's time and the job's.
   Target: under 2% of a 4-step 256x256 SD1.5 job.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "example_workflows" / "lcm_lora_txt2img.json"
PROMPTS = [
    "a lake at sunset",
    "a red fox in snow",
    "a city street at night",
    "a bowl of fruit",
    "a lighthouse",
    "an old oak tree",
    "a sailing boat",
    "a mountain village",
    "a cup of coffee",
    "a desert road",
]


def build_models(root: Path, small: bool) -> None:
    """The models folder for the workflow: full-size SD1.5 with random weights, or the tiny stand-ins."""
    if small:
        from lcm_accel.fixtures.demo_models import write_demo_models_dir

        write_demo_models_dir(root)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_lcm_workflow import build_full_sd15_checkpoint, build_lcm_lora

    checkpoint = root / "models" / "checkpoints" / "v1-5-pruned-emaonly.safetensors"
    build_full_sd15_checkpoint(checkpoint, root / "models" / "tokenizers" / "clip")
    build_lcm_lora(root / "models" / "loras" / "lcm-lora-sdv1-5.safetensors", checkpoint)
    (root / "input").mkdir(exist_ok=True)


def write_jobs(path: Path, count: int, offset: int = 0) -> Path:
    path.write_text(
        "".join(
            json.dumps(
                {"id": f"job-{offset + i:03d}", "6.seed": offset + i, "3.text": PROMPTS[(offset + i) % len(PROMPTS)]}
            )
            + "\n"
            for i in range(count)
        )
    )
    return path


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def throughput(processes: int, root: Path, jobs: Path, out: Path, size: int, threads: int | None = None) -> dict:
    """Run the batch command on `processes` processes; images/min end to end and with models loaded."""
    batch = [
        "-m",
        "lcm_accel",
        "batch",
        str(WORKFLOW),
        "--jobs",
        str(jobs),
        "--models",
        str(root / "models"),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        "--set",
        f"5.width={size}",
        "--set",
        f"5.height={size}",
    ]
    if processes == 1:
        command = [sys.executable, *batch]
    else:
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            *batch,
        ]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads and processes == 1 else {})}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"batch on {processes} process(es) failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    entries = _manifest(out)
    per_rank: dict[int, list[dict]] = {}
    for entry in sorted(entries, key=lambda e: e["time"]):
        per_rank.setdefault(entry["rank"], []).append(entry)
    warm_rate = sum(len(rows[1:]) / sum(r["seconds"] for r in rows[1:]) for rows in per_rank.values() if rows[1:])
    return {
        "processes": processes,
        "images": len(entries),
        "wall": wall,
        "e2e_per_min": 60 * len(entries) / wall,
        "warm_per_min": 60 * warm_rate,
        "first_job_s": max(rows[0]["seconds"] for rows in per_rank.values()),
        "warm_job_s": [round(r["seconds"], 2) for rows in per_rank.values() for r in rows[1:]],
    }


def overhead(root: Path, jobs_count: int, size: int, out: Path) -> dict:
    """Per-job time inside nodes, inside the sampler node, and the rest (the batch's own), in this process."""
    from accelerate import PartialState

    from lcm_accel.harness import batch as batch_module
    from lcm_accel.harness.cli_commands import build_registry
    from lcm_accel.harness.executor import Executor
    from lcm_accel.harness.jobs import read_jobs
    from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths

    node_time: dict[str, float] = {}
    original_execute = Executor._execute

    def timed_execute(self, node_id, node, spec, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original_execute(self, node_id, node, spec, *args, **kwargs)
        finally:
            node_time[spec.class_type] = node_time.get(spec.class_type, 0.0) + time.perf_counter() - start

    rows: list[dict] = []
    original_run_job = batch_module.run_job
    original_record = batch_module.Manifest.record

    def timed_run_job(*args, **kwargs):
        node_time.clear()
        rows.append({"start": time.perf_counter()})
        return original_run_job(*args, **kwargs)

    def timed_record(self, entry):
        original_record(self, entry)
        rows[-1].update(end=time.perf_counter(), nodes=dict(node_time))

    Executor._execute = timed_execute
    batch_module.run_job = timed_run_job
    batch_module.Manifest.record = timed_record
    try:
        paths = ModelPaths(root / "models", input_dir=root / "input", output_dir=out)
        registry = build_registry([])
        jobs = read_jobs(write_jobs(out.parent / "overhead_jobs.jsonl", jobs_count + 1, offset=100))
        with use_model_paths(paths):
            batch_module.run_batch(
                WORKFLOW,
                jobs,
                registry,
                paths,
                [f"5.width={size}", f"5.height={size}"],
                PartialState(cpu=True),
                progress=False,
            )
    finally:
        Executor._execute = original_execute
        batch_module.run_job = original_run_job
        batch_module.Manifest.record = original_record
    warm = rows[1:]  # the first job loads the models
    job = sum(r["end"] - r["start"] for r in warm) / len(warm)
    nodes = sum(sum(r["nodes"].values()) for r in warm) / len(warm)
    sampler = sum(r["nodes"].get("LCMKSampler", 0.0) for r in warm) / len(warm)
    return {
        "job_s": job,
        "nodes_s": nodes,
        "sampler_s": sampler,
        "batch_overhead_s": job - nodes,
        "per_node_s": {k: round(sum(r["nodes"].get(k, 0.0) for r in warm) / len(warm), 4) for k in warm[0]["nodes"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6, help="jobs per throughput run (default 6)")
    parser.add_argument("--overhead-jobs", type=int, default=3, help="timed jobs of the overhead run (default 3)")
    parser.add_argument("--size", type=int, default=256, help="image width and height (default 256)")
    parser.add_argument("--small", action="store_true", help="tiny stand-in models: a smoke run, not a measurement")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the 1-process runs (default: torch's choice; 2 processes: 1 each)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="lcm_bench_batch_") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        build_models(root, args.small)
        print(
            f"models ({'tiny stand-ins' if args.small else 'full-size SD1.5, random weights'}) written in "
            f"{time.perf_counter() - start:.1f} s; {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; {args.size}x{args.size}, 4 LCM steps; "
            f"1 process: {args.threads or torch.get_num_threads()} thread(s)"
        )
        jobs = write_jobs(root / "jobs.jsonl", args.jobs)
        results = [throughput(n, root, jobs, root / f"out{n}", args.size, args.threads) for n in (1, 2)]
        cost = overhead(root, args.overhead_jobs, args.size, root / "out_overhead")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (other work on this machine shares the cores)")
    print(
        "\nprocesses  images  wall s   images/min (end to end)   images/min (models loaded)   first job s   warm jobs s"
    )
    for r in results:
        print(
            f"{r['processes']:9d}  {r['images']:6d}  {r['wall']:6.1f}   {r['e2e_per_min']:23.2f}   "
            f"{r['warm_per_min']:26.2f}   {r['first_job_s']:11.1f}   {r['warm_job_s']}"
        )
    one, two = results
    print(
        f"\n2 processes / 1 process: {two['e2e_per_min'] / one['e2e_per_min']:.2f}x end to end, "
        f"{two['warm_per_min'] / one['warm_per_min']:.2f}x with models loaded"
    )
    print(
        f"\nper job (in-process, models loaded, mean of {args.overhead_jobs}): job {cost['job_s']:.3f} s, inside nodes "
        f"{cost['nodes_s']:.3f} s (sampler {cost['sampler_s']:.3f} s); nodes: {cost['per_node_s']}"
    )
    share = cost["batch_overhead_s"] / cost["job_s"]
    print(
        f"batch overhead (job - nodes) {cost['batch_overhead_s'] * 1000:.1f} ms = {100 * share:.3f}% of the job, "
        f"{100 * cost['batch_overhead_s'] / cost['sampler_s']:.3f}% of the sampler's time (target < 2%: "
        f"{'PASS' if share < 0.02 else 'FAIL'})"
    )


if __name__ == "__main__":
    main()
