"""The example workflows as ComfyUI's template browser shows them: each `example_workflows/<name>.json`
has its thumbnail `<name>.jpg` (256x256 JPEG, written by tools/render_thumbnails.py), the folder
holds nothing else but the API twins in `api/`, and ComfyUI's listing (app/custom_node_manager.py:
`<custom_nodes>/*/<folder>/*.json`, top level only) yields exactly the workflows' names."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "example_workflows"
WORKFLOWS = sorted(EXAMPLES.glob("*.json"))
THUMBNAIL_SIZE = (256, 256)
# the folder names ComfyUI's template listing globs; all but the first only for older packs
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")


def test_there_are_example_workflows():
    assert len(WORKFLOWS) >= 8


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_workflow_has_a_jpeg_thumbnail(path):
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), f"{thumbnail.name} is missing: run python tools/render_thumbnails.py"
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG"
        assert image.size == THUMBNAIL_SIZE
    assert thumbnail.stat().st_size < 30_000


def test_the_folder_holds_only_workflows_thumbnails_and_api_twins():
    others = sorted(p.name for p in EXAMPLES.iterdir() if p.suffix not in (".json", ".jpg") and p.name != "api")
    assert others == []
    assert (EXAMPLES / "api").is_dir()
    stray = sorted(p.name for p in EXAMPLES.glob("*.jpg") if not p.with_suffix(".json").is_file())
    assert stray == [], "thumbnails without a workflow"


def test_comfyui_lists_exactly_the_workflows(tmp_path):
    """The pack cloned into custom_nodes under any folder name; the listing as ComfyUI computes it."""
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    pack = custom_nodes / "ComfyUI-LCM-Accel"
    try:
        pack.symlink_to(ROOT, target_is_directory=True)
    except OSError:
        pytest.skip("symbolic links are not available here")
    listing: dict[str, list[str]] = {}
    for folder in TEMPLATE_FOLDERS:
        for file in glob.glob(os.path.join(str(custom_nodes), f"*/{folder}/*.json")):
            pack_name = os.path.basename(os.path.dirname(os.path.dirname(file)))
            listing.setdefault(pack_name, []).append(os.path.splitext(os.path.basename(file))[0])
    assert list(listing) == [pack.name]
    assert sorted(listing[pack.name]) == [p.stem for p in WORKFLOWS]
