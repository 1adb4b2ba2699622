"""Run by ComfyUI-Manager after cloning: installs requirements.txt into the running
Python, never torch (the user's CUDA build must stay as it is)."""

import re
import subprocess
import sys
from pathlib import Path

_TORCH = re.compile(r"^\s*torch(vision|audio)?\s*([=<>~!;\[].*)?$", re.IGNORECASE)


def requirements(path: Path) -> list[str]:
    """Requirement lines of `path`, comments dropped, any torch line refused."""
    reqs = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if _TORCH.match(line):
            raise SystemExit(f"{path}: refusing to install '{line}': torch is the user's own build")
        reqs.append(line)
    return reqs


def main() -> None:
    reqs = requirements(Path(__file__).with_name("requirements.txt"))
    if reqs:
        subprocess.check_call([sys.executable, "-m", "pip", "install", *reqs])


if __name__ == "__main__":
    main()
