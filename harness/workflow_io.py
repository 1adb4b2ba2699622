"""Read a workflow from a file: API-format JSON, UI-format JSON (what the frontend saves),
or a PNG whose metadata carries them (ComfyUI's `prompt` / `workflow` tEXt chunks)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import WorkflowFormatError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class LoadedWorkflow:
    """A workflow and its format: "api" ({id: {class_type, inputs}}) or "ui" (nodes/links)."""

    kind: str
    data: dict
    source: str


def detect_format(data: Any, source: str = "workflow") -> str:
    """ "ui" or "api" for a parsed workflow; raises WorkflowFormatError for anything else."""
    if isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data:
        return "ui"
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return "api"
    raise WorkflowFormatError(
        f"{source} is neither an API-format workflow ({{id: {{class_type, inputs}}}}) nor a UI-format "
        "workflow (with 'nodes' and 'links')"
    )


def parse_workflow(data: Any, source: str = "workflow") -> LoadedWorkflow:
    """Wrap parsed JSON, accepting also the `{"prompt": {...}}` body of ComfyUI's /prompt."""
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data["prompt"]:
        try:
            return LoadedWorkflow(detect_format(data["prompt"], source), data["prompt"], source)
        except WorkflowFormatError:
            pass
    return LoadedWorkflow(detect_format(data, source), data, source)


def read_png_metadata(path: Path) -> dict[str, str]:
    """The text chunks of a PNG (ComfyUI writes `prompt` and `workflow` as JSON strings)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            text = dict(getattr(image, "text", {}) or {})
    except Exception as error:
        raise WorkflowFormatError(f"{path}: not a readable PNG ({error})") from error
    return {k: v for k, v in text.items() if isinstance(v, str)}


def _json_chunk(path: Path, chunks: dict[str, str], key: str) -> Any:
    try:
        return json.loads(chunks[key])
    except json.JSONDecodeError as error:
        raise WorkflowFormatError(f"{path}: the PNG's {key!r} metadata is not valid JSON ({error})") from error


def load_workflow(path: str | Path) -> LoadedWorkflow:
    """Load `path` (.json in either format, or .png with ComfyUI metadata). From a PNG the
    UI workflow is preferred, as the frontend does when an image is dropped on it."""
    path = Path(path)
    if not path.is_file():
        raise WorkflowFormatError(f"workflow file {path} does not exist")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head == PNG_SIGNATURE:
        chunks = read_png_metadata(path)
        for key in ("workflow", "prompt"):
            if key in chunks:
                return parse_workflow(_json_chunk(path, chunks, key), f"{path} ({key} metadata)")
        raise WorkflowFormatError(f"{path}: PNG has no ComfyUI 'workflow' or 'prompt' metadata")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WorkflowFormatError(f"workflow file {path} is not valid JSON ({error})") from error
    return parse_workflow(data, str(path))
