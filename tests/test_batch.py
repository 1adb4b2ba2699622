"""`python -m lcm_accel batch`: jobs files, the manifest, 2 processes under accelerate launch against
`run` of each job, a stopped (Ctrl-C) or killed batch resuming, failing jobs recorded while the others finish."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lcm_accel.fixtures.demo_models import write_demo_models_dir
from lcm_accel.harness.errors import HarnessError
from lcm_accel.harness.jobs import Job, read_jobs
from lcm_accel.harness.manifest import MANIFEST, PARTS, Manifest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "example_workflows" / "lcm_lora_txt2img.json"  # UI format: the PNGs carry the edited UI workflow
SMALL = ["--set", "5.width=64", "--set", "5.height=64"]
PROMPTS = ["a cat", "a dog", "a red house", "a boat", "mountains", "a bowl of fruit", "a lighthouse", "a robot"]
JOBS = [
    {"id": f"img-{i}", "6.seed": 100 + i, "3.text": PROMPTS[i], **({"2.strength": 0.5} if i == 3 else {})}
    for i in range(8)
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_demo_models_dir(tmp_path_factory.mktemp("batch_models"))


def _write_jsonl(path: Path, jobs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return path


def _entries(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert len({r["id"] for r in rows}) == len(rows)
    return {r["id"]: r for r in rows}


def _default_sigint() -> None:
    """In the child: Ctrl-C's default action, even when the suite runs as a background job (which
    starts with SIGINT ignored, and Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(args: list[str], cwd: Path, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "lcm_accel", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=_default_sigint,
        **kwargs,
    )


# -- jobs files and the manifest ------------------------------------------------------------------
def test_jobs_from_csv_and_jsonl(tmp_path):
    csv = tmp_path / "jobs.csv"
    csv.write_text('3.seed,6.text,id\n7,"a cat, sitting",first\n,a dog,\n\n')
    assert read_jobs(csv) == [Job("first", ("3.seed=7", "6.text=a cat, sitting")), Job("00002", ("6.text=a dog",))]
    jsonl = _write_jsonl(
        tmp_path / "jobs.jsonl", [{"3.seed": 7, "6.text": "a cat", "2.strength": 0.5}, {"id": "x", "3.seed": 8}]
    )
    assert read_jobs(jsonl) == [Job("00001", ("3.seed=7", "6.text=a cat", "2.strength=0.5")), Job("x", ("3.seed=8",))]


@pytest.mark.parametrize(
    "name, text, fragment",
    [
        ("a.csv", "seed\n1\n", "'seed' is not NODE.INPUT"),
        ("a.csv", "id,3.seed\nx,1\nx,2\n", "job id 'x' appears twice"),
        ("a.csv", "id,3.seed\n../up,1\n", "must be letters, digits"),
        ("a.csv", "id,3.seed\nmanifest.parts,1\n", "is reserved"),
        ("a.csv", "3.seed\n1,2\n", "line 2: 2 cells for 1 columns"),
        ("a.jsonl", '{"3.seed": 1}\n{"3.seed": \n', "line 2: not JSON"),
        ("a.jsonl", "[1]\n", "expected an object"),
        ("a.jsonl", "\n", "lists no jobs"),
        ("a.txt", "3.seed=1\n", "expected a .csv or .jsonl file"),
    ],
)
def test_bad_jobs_files_are_refused_with_the_line(tmp_path, name, text, fragment):
    (tmp_path / name).write_text(text)
    with pytest.raises(HarnessError, match=None) as error:
        read_jobs(tmp_path / name)
    assert fragment in str(error.value)


def test_manifest_skips_a_torn_line_and_never_glues_onto_it(tmp_path):
    writer = Manifest(tmp_path, rank=1)
    writer.record({"id": "a", "status": "error", "time": 1.0})
    with open(writer.part, "ab") as f:
        f.write(b'{"id": "b", "sta')  # a crash in the middle of a line
    assert set(Manifest(tmp_path).entries()) == {"a"}
    writer.record({"id": "a", "status": "ok", "time": 2.0})
    writer.record({"id": "c", "status": "ok", "time": 3.0})
    reader = Manifest(tmp_path, rank=0)
    assert {k: v["status"] for k, v in reader.entries().items()} == {"a": "ok", "c": "ok"}
    assert reader.new_ids() == {"a", "c"} and reader.new_ids() == set()
    merged = reader.merge(["c", "a"])
    assert [json.loads(line)["id"] for line in (tmp_path / MANIFEST).read_text().splitlines()] == ["c", "a"]
    assert merged["a"]["status"] == "ok" and not (tmp_path / PARTS).exists()


# -- end to end ---------------------------------------------------------------------------------
def test_two_processes_write_what_run_writes_for_each_job(root, tmp_path, one_thread):
    from test_distributed_training import launch

    from lcm_accel.cli import main

    jobs = _write_jsonl(tmp_path / "jobs.jsonl", JOBS)
    out = launch(
        [
            "-m",
            "lcm_accel",
            "batch",
            str(WORKFLOW),
            "--jobs",
            str(jobs),
            "--models",
            str(root / "models"),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--no-progress",
            *SMALL,
        ],
        cwd=tmp_path,
    )
    assert "batch: 8 job(s), 0 done before, 8 run now on 2 process(es)" in out.stdout
    entries = _entries(tmp_path / "out")
    assert list(entries) == [j["id"] for j in JOBS]  # merged in the jobs' order
    assert {e["status"] for e in entries.values()} == {"ok"}
    assert {e["rank"] for e in entries.values()} == {0, 1}  # split across both processes
    assert not (tmp_path / "out" / PARTS).exists()
    for job in JOBS:
        sets = [f"{k}={v}" for k, v in job.items() if k != "id"]
        ref = tmp_path / "ref" / job["id"]
        args = ["run", str(WORKFLOW), "--models", str(root / "models"), "--out", str(ref), "--device", "cpu", *SMALL]
        assert main(args + [a for s in sets for a in ("--set", s)]) == 0
        (image,) = entries[job["id"]]["images"]
        ours, theirs = Image.open(tmp_path / "out" / image), Image.open(ref / "lcm_lora_txt2img_00001_.png")
        assert np.array_equal(np.asarray(ours), np.asarray(theirs)), job
        assert ours.text == theirs.text  # the same API prompt and UI workflow (with the job's values)
        assert json.loads(ours.text["prompt"])["6"]["inputs"]["seed"] == job["6.seed"]


def test_a_killed_batch_resumes_without_redoing_finished_jobs(root, tmp_path):
    jobs = _write_jsonl(tmp_path / "jobs.jsonl", [{**j, "5.width": 64 if i < 2 else 256} for i, j in enumerate(JOBS)])
    args = [
        "batch",
        str(WORKFLOW),
        "--jobs",
        str(jobs),
        "--models",
        str(root / "models"),
        "--out",
        "out",
        "--device",
        "cpu",
        "--no-progress",
        "--set",
        "5.height=64",
    ]
    part = tmp_path / "out" / PARTS / "rank-0.jsonl"

    def stop_after(lines: int, sig: int) -> tuple[int, str, str]:
        process = _cli(args, tmp_path)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if part.is_file() and part.read_text().count("\n") >= lines:
                break
            time.sleep(0.02)
        process.send_signal(sig)
        stdout, stderr = process.communicate(timeout=60)
        return process.returncode, stdout, stderr

    status, stdout, stderr = stop_after(1, signal.SIGINT)  # Ctrl-C: a clean stop, status 130
    assert status == 130 and "run the same command again to continue" in stdout
    assert stderr.strip().splitlines()[-1].startswith("error: ")
    stop_after(3, signal.SIGKILL)  # a crash
    done = {e["id"]: e for e in Manifest(tmp_path / "out").entries().values()}
    assert 3 <= len(done) < len(JOBS), "the batch was not killed in the middle"
    with open(part, "ab") as f:
        f.write(b'{"id": "img-7", "status": "o')  # as if killed while writing a line
    (tmp_path / "out" / "img-7").mkdir(exist_ok=True)  # and while a job was writing its files
    (tmp_path / "out" / "img-7" / "lcm_lora_txt2img_00001_.png").write_bytes(b"partial")
    stamps = {i: (tmp_path / "out" / e["images"][0]).stat().st_mtime_ns for i, e in done.items()}

    process = _cli(args, tmp_path)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert f"batch: 8 job(s), {len(done)} done before, {8 - len(done)} run now" in stdout
    entries = _entries(tmp_path / "out")
    assert set(entries) == {j["id"] for j in JOBS} and {e["status"] for e in entries.values()} == {"ok"}
    for job_id, stamp in stamps.items():  # finished jobs were not redone
        assert entries[job_id]["time"] == done[job_id]["time"]
        assert (tmp_path / "out" / entries[job_id]["images"][0]).stat().st_mtime_ns == stamp
    # the interrupted job ran again; what it left is kept and the counter moved past it
    assert entries["img-7"]["images"] == ["img-7/lcm_lora_txt2img_00002_.png"]
    assert (tmp_path / "out" / "img-7" / "lcm_lora_txt2img_00001_.png").read_bytes() == b"partial"
    assert Image.open(tmp_path / "out" / "img-7" / "lcm_lora_txt2img_00002_.png").size == (256, 64)


def test_failing_jobs_are_recorded_and_the_others_finish(root, tmp_path, one_thread, capsys):
    from lcm_accel.cli import main

    jobs = tmp_path / "jobs.csv"
    jobs.write_text("id,6.seed,99.seed\nfine,1,\nbad-seed,x,\nno-node,2,5\nalso-fine,3,\n")
    args = [
        "batch",
        str(WORKFLOW),
        "--jobs",
        str(jobs),
        "--models",
        str(root / "models"),
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        "--no-progress",
        *SMALL,
    ]
    assert main(args) == 1
    stdout = capsys.readouterr().out
    assert "batch: 4 job(s), 0 done before, 4 run now on 1 process(es)" in stdout
    assert "2 failed (bad-seed, no-node)" in stdout
    entries = _entries(tmp_path / "out")
    assert [entries[i]["status"] for i in ("fine", "bad-seed", "no-node", "also-fine")] == [
        "ok",
        "error",
        "error",
        "ok",
    ]
    assert "node 6 (LCMAccel_KSampler), input 'seed': expected an integer, got 'x'" in entries["bad-seed"]["error"]
    assert "no node 99 in the workflow" in entries["no-node"]["error"]
    assert all((tmp_path / "out" / e["images"][0]).is_file() for e in entries.values() if e["status"] == "ok")
    # a re-run retries only the failed jobs
    assert main(args) == 1
    assert "4 job(s), 2 done before, 2 run now" in capsys.readouterr().out
    assert _entries(tmp_path / "out")["fine"]["time"] == entries["fine"]["time"]
    # a mistake in the batch's own --set is the command's: refused before any job runs
    assert main(args + ["--set", "6.sed=1"]) == 2
    assert "node 6 (LCMAccel_KSampler) has no input 'sed'" in capsys.readouterr().err


def test_without_accelerate_one_process_runs_and_several_are_refused(monkeypatch):
    from lcm_accel.harness.batch import SingleProcess, process_state

    monkeypatch.setitem(sys.modules, "accelerate", None)  # not installed
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    state = process_state("auto")
    assert isinstance(state, SingleProcess)
    with state.split_between_processes([1, 2, 3]) as mine:
        assert mine == [1, 2, 3]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(HarnessError, match="needs accelerate"):
        process_state("auto")
