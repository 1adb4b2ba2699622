"""The jobs of `python -m lcm_accel batch`: one image per job, each a list of `--set` assignments.

CSV: a header row of `NODE.INPUT` columns (plus an optional `id` column), one job per row; a cell's
text is the VALUE of `--set NODE.INPUT=VALUE` (parsed the same way), an empty cell leaves the input as
the workflow has it. JSONL: one object per line, `{"id": "cat-1", "6.text": "a cat", "3.seed": 7}`;
a string is the VALUE as typed on the command line, any other JSON value is that value.
A job without an `id` is named by its position (`00001`, ...). Ids name the job's output folder, so
they are file-name safe and unique.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import HarnessError
from .runner import parse_assignment

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class Job:
    """One image to make: its id and its `NODE.INPUT=VALUE` assignments (applied after the batch's --set)."""

    id: str
    assignments: tuple[str, ...]


def _assignment(where: str, key: str, value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    assignment = f"{key}={text}"
    try:
        parse_assignment(assignment)
    except HarnessError as error:
        raise HarnessError(f"{where}: column/key {key!r} is not NODE.INPUT (e.g. 3.seed)") from error
    return assignment


def _job(where: str, number: int, fields: dict[str, Any], skip_empty: bool) -> Job:
    job_id = fields.pop("id", None)
    job_id = f"{number:05d}" if job_id in (None, "") else str(job_id)
    if not ID_PATTERN.fullmatch(job_id):
        raise HarnessError(f"{where}: job id {job_id!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
    if job_id.startswith("manifest") or job_id == "temp":
        raise HarnessError(f"{where}: job id {job_id!r} is reserved (the batch's manifest files, previews' temp/)")
    sets = tuple(_assignment(where, k, v) for k, v in fields.items() if not (skip_empty and v == ""))
    return Job(job_id, sets)


def _read_csv(path: Path, text: str) -> list[Job]:
    rows = list(csv.reader(text.splitlines()))
    if not rows or not any(h.strip() for h in rows[0]):
        raise HarnessError(f"--jobs {path}: the CSV file has no header row (NODE.INPUT columns, optional id)")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header):
        raise HarnessError(f"--jobs {path}: a column name appears twice in the header {header}")
    jobs = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise HarnessError(f"--jobs {path}, line {line}: {len(row)} cells for {len(header)} columns")
        jobs.append(_job(f"--jobs {path}, line {line}", len(jobs) + 1, dict(zip(header, row)), skip_empty=True))
    return jobs


def _read_jsonl(path: Path, text: str) -> list[Job]:
    jobs = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            fields = json.loads(raw)
        except json.JSONDecodeError as error:
            raise HarnessError(f"--jobs {path}, line {line}: not JSON ({error.msg})") from error
        if not isinstance(fields, dict):
            raise HarnessError(f'--jobs {path}, line {line}: expected an object like {{"3.seed": 7}}')
        jobs.append(_job(f"--jobs {path}, line {line}", len(jobs) + 1, dict(fields), skip_empty=False))
    return jobs


def read_jobs(path: str | Path) -> list[Job]:
    """The jobs of a .csv or .jsonl file, checked: NODE.INPUT keys, safe and unique ids, at least one job."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"--jobs {path}: no such file")
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        jobs = _read_csv(path, text)
    elif suffix in (".jsonl", ".ndjson"):
        jobs = _read_jsonl(path, text)
    else:
        raise HarnessError(f"--jobs {path}: expected a .csv or .jsonl file")
    if not jobs:
        raise HarnessError(f"--jobs {path}: the file lists no jobs")
    seen: set[str] = set()
    for job in jobs:
        if job.id in seen:
            raise HarnessError(f"--jobs {path}: job id {job.id!r} appears twice")
        seen.add(job.id)
    return jobs
