"""`python -m lcm_accel batch WORKFLOW --jobs FILE`: one workflow, many images, resumable, on one
process or on several under `accelerate launch`.

Each job is the workflow with its own `--set` assignments (`jobs.py`); it runs as `run` would run it,
its output folder being `OUT/<job id>/`, so its PNG carries the workflow with the job's values in
its metadata. The models are loaded once per process: one `Executor` serves every job, and its cache
keeps the loaders' outputs while only seeds, prompts or strengths change (output nodes always run).

Resuming: a job is done when the manifest (`manifest.py`) records it "ok" and its images exist;
a re-run skips done jobs and runs the others (failed ones included; nothing is deleted: files a
crashed job left behind stay, SaveImage's counter moves past them and the manifest names the new ones). A failing job is recorded with
its one-line error and the batch goes on. Ctrl-C stops after cleaning nothing up: the finished jobs
are in the part files, the interrupted one is not, and the next run starts from there.

Several processes: accelerate's `PartialState` joins the processes the launcher started; every
process reads which jobs are done, waits for the others (so no one reads a file that is being
written), takes its share of the pending jobs with `split_between_processes`, runs it on its own
device, and after a final barrier the main process merges the manifest.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.errors import RunError
from ..runtime.interrupt import ExecutionInterrupted
from ..runtime.model_paths import ModelPaths, use_model_paths
from ..runtime.progress import use_progress_hook
from .errors import HarnessError, WorkflowError
from .executor import Executor
from .jobs import Job
from .manifest import Manifest
from .registry import NodeRegistry
from .runner import api_prompt, apply_overrides
from .workflow_io import load_workflow


@dataclass
class BatchSummary:
    """What a batch did, over all processes (complete on the main process after the merge)."""

    total: int
    skipped: int  # done by an earlier run
    ran: int = 0  # by this process
    failed: list[str] = field(default_factory=list)  # ids of failed jobs (all processes, main only)
    manifest: Path | None = None


class SingleProcess:
    """The state of a batch that no launcher started (accelerate is then not needed: nothing to split)."""

    process_index, num_processes, is_main_process = 0, 1, True

    def wait_for_everyone(self) -> None:
        pass

    @contextlib.contextmanager
    def split_between_processes(self, items: list) -> Iterator[list]:
        yield items


def process_state(device: str) -> Any:
    """accelerate's `PartialState` for this process; `SingleProcess` when no launcher started several
    and accelerate is not installed (a runtime dependency only for several processes)."""
    from ..processes import check_world, launched_world_size, state_kwargs

    try:
        from accelerate import PartialState
    except ImportError as error:
        if launched_world_size() > 1:
            raise HarnessError("batch on several processes needs accelerate: pip install accelerate") from error
        return SingleProcess()
    state = PartialState(**state_kwargs(device))
    try:
        check_world(state)
    except RuntimeError as error:
        raise HarnessError(str(error)) from error
    return state


def process_device(state: Any, device: str) -> str:
    """The --device this process runs on: with several processes, `auto` / `cuda` become this process's
    own GPU (accelerate's device for it); one fixed `cuda:N` for all of them is refused."""
    if state.num_processes == 1:
        return device
    if device in ("auto", "cuda"):
        return str(state.device) if state.device.type == "cuda" else "cpu"
    if device.startswith("cuda:"):
        raise HarnessError(
            f"--device {device}: with {state.num_processes} processes every one would use this GPU; "
            "pass --device auto (or cuda) to give each process its own"
        )
    return device


def _done(manifest: Manifest, out_dir: Path) -> set[str]:
    return {
        job_id
        for job_id, entry in manifest.entries().items()
        if entry.get("status") == "ok" and all((out_dir / image).is_file() for image in entry.get("images", []))
    }


def _error_text(error: Exception) -> str:
    if isinstance(error, WorkflowError):
        return error.one_line()
    if isinstance(error, RunError):
        return " ".join(str(error).split())
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _saved_images(result, job_out: Path, out_dir: Path) -> list[str]:
    images = []
    for ui in result.ui.values():
        for item in ui.get("images", []) if isinstance(ui, dict) else []:
            if isinstance(item, dict) and item.get("type", "output") == "output" and "filename" in item:
                images.append((job_out / item.get("subfolder", "") / item["filename"]).relative_to(out_dir).as_posix())
    return images


def run_job(
    executor: Executor,
    base: tuple[dict, dict | None],
    job: Job,
    sets: list[str],
    registry: NodeRegistry,
    paths: ModelPaths,
) -> dict:
    """Run one job into `OUT/<id>/`; its manifest entry (status ok / error). Ctrl-C propagates."""
    out_dir = paths.output_dir
    job_out = out_dir / job.id  # files left there by a run that died are kept: the counter moves past them
    prompt, extra = copy.deepcopy(base)
    start = time.perf_counter()
    entry: dict[str, Any] = {"id": job.id, "set": list(job.assignments)}
    try:
        apply_overrides(prompt, [*sets, *job.assignments], registry, extra)
        job_paths = ModelPaths(paths.models_dir, input_dir=paths.input_dir, output_dir=job_out)
        with use_model_paths(job_paths), use_progress_hook(lambda node, value, total: None):
            result = executor.run(prompt, extra_pnginfo=extra, rerun_outputs=True)
        images = _saved_images(result, job_out, out_dir)
        if not images:
            raise HarnessError("the workflow saved no image (it needs a SaveImage node)")
        entry.update(status="ok", images=images)
    except (KeyboardInterrupt, ExecutionInterrupted):
        raise
    except Exception as error:  # recorded; the batch goes on
        entry.update(status="error", error=_error_text(error))
    entry["seconds"] = round(time.perf_counter() - start, 4)
    return entry


def run_batch(
    workflow: str | Path,
    jobs: list[Job],
    registry: NodeRegistry,
    paths: ModelPaths,
    sets: list[str],
    state: Any,
    progress: bool = True,
) -> BatchSummary:
    """Run every job not done yet, this process's share of them; the main process merges the manifest."""
    base = api_prompt(load_workflow(workflow), registry)
    if sets:  # the batch's own --set: a mistake there is the command's, not one job's
        probe = copy.deepcopy(base)
        apply_overrides(probe[0], sets, registry, probe[1])
    manifest = Manifest(paths.output_dir, state.process_index)
    done = _done(manifest, paths.output_dir)
    pending = [job for job in jobs if job.id not in done]
    summary = BatchSummary(total=len(jobs), skipped=len(jobs) - len(pending))
    state.wait_for_everyone()  # everyone has read what is done before anyone records more
    bar = _bar(len(jobs), summary.skipped) if progress and state.is_main_process else None
    counted: set[str] = set()
    pending_ids = {job.id for job in pending}
    executor = Executor(registry)
    try:
        with state.split_between_processes(pending) as mine:
            for job in mine:
                entry = run_job(executor, base, job, sets, registry, paths)
                entry.update(rank=state.process_index, time=time.time())
                manifest.record(entry)
                summary.ran += 1
                if bar is not None:
                    counted |= manifest.new_ids() & pending_ids
                    bar.update(summary.skipped + len(counted) - bar.n)
                    if entry["status"] != "ok":
                        bar.write(f"job {job.id} failed: {entry['error']}")
        state.wait_for_everyone()
        if state.is_main_process:
            merged = manifest.merge([job.id for job in jobs])
            summary.failed = [job.id for job in jobs if merged.get(job.id, {}).get("status") == "error"]
            summary.manifest = manifest.path
            if bar is not None:
                bar.update(summary.total - bar.n)
    finally:
        if bar is not None:
            bar.close()
    return summary


def _bar(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="batch", unit="image", dynamic_ncols=True)
