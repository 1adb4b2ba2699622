"""The batch manifest: one JSON line per finished job, safe against crashes and several processes.

While a batch runs, each process appends to its own part file (`OUT/manifest.parts/rank-N.jsonl`),
one line per job, flushed and fsync'ed before the next job starts: no two processes ever write the
same file, so no locking is needed and nothing depends on the file system's append semantics across
processes (NFS has none). A line torn by a crash is skipped when read, and a new line is never glued
onto it. At the end the main process merges the parts and the previous manifest into
`OUT/manifest.jsonl` (written to a temporary file and renamed: complete or unchanged) and removes
the parts. The latest entry of a job wins, so a re-run's success replaces an earlier failure, and a
re-run with another process count reads every part left behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

MANIFEST = "manifest.jsonl"
PARTS = "manifest.parts"


def read_lines(path: Path) -> Iterator[dict]:
    """The JSON objects of a JSONL file; unparsable lines (a line torn by a crash) are skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    for raw in data.splitlines():
        try:
            entry = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            yield entry


class Manifest:
    """Reads every entry of an output folder; appends this process's entries to its own part file."""

    def __init__(self, out_dir: str | Path, rank: int = 0):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST
        self.part = self.out_dir / PARTS / f"rank-{rank}.jsonl"
        self._offsets: dict[Path, int] = {}

    def parts(self) -> list[Path]:
        return sorted((self.out_dir / PARTS).glob("rank-*.jsonl"))

    def entries(self) -> dict[str, dict]:
        """The latest entry of every job (by its `time`), from the manifest and all part files."""
        latest: dict[str, dict] = {}
        for path in [self.path, *self.parts()]:
            for entry in read_lines(path):
                old = latest.get(entry["id"])
                if old is None or float(entry.get("time", 0)) >= float(old.get("time", 0)):
                    latest[entry["id"]] = entry
        return latest

    def record(self, entry: dict) -> None:
        """Append one entry to this process's part file, durably, on a line of its own."""
        self.part.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        with open(self.part, "ab") as f:
            if f.tell() > 0:
                with open(self.part, "rb") as check:
                    check.seek(-1, os.SEEK_END)
                    if check.read(1) != b"\n":  # a torn line from a crash: start on a fresh line
                        line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def new_ids(self) -> set[str]:
        """Ids of the jobs recorded in the part files since the last call (a live count of finished jobs)."""
        found: set[str] = set()
        for path in self.parts():
            offset = self._offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except FileNotFoundError:
                continue
            complete = data[: data.rfind(b"\n") + 1]
            self._offsets[path] = offset + len(complete)
            for raw in complete.splitlines():
                try:
                    entry = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(entry, dict):
                    found.add(str(entry.get("id")))
        return found

    def merge(self, order: Iterable[str]) -> dict[str, dict]:
        """Write manifest.jsonl (jobs in `order`, then any others) atomically and remove the parts."""
        latest = self.entries()
        ranked = {job_id: i for i, job_id in enumerate(order)}
        ids = sorted(latest, key=lambda i: (ranked.get(i, len(ranked)), i))
        tmp = self.path.with_name(MANIFEST + ".tmp")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            for job_id in ids:
                f.write(json.dumps(latest[job_id], sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        for part in self.parts():
            part.unlink(missing_ok=True)
        try:
            (self.out_dir / PARTS).rmdir()
        except OSError:
            pass
        return latest
