"""Start a real ComfyUI server on a private folder and drive it over its HTTP API (for tests).

Which ComfyUI: the checkout named by `COMFYUI_PATH`; its Python: `COMFYUI_PYTHON`, else the
checkout's `venv/` or `.venv/`, else this interpreter. The server runs headless on 127.0.0.1 on a
free port, with `--base-directory` pointing at the test's folder (models/, custom_nodes/, input/,
output/ live there), an in-memory database, and its log captured in a file the tests show when
something fails. Only the standard library is used: the tests need no HTTP client package.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

CHECKOUT_MARKERS = ("main.py", "nodes.py", "folder_paths.py", "comfy/model_detection.py")


class ComfyUIError(RuntimeError):
    """ComfyUI refused or failed a request; the message carries ComfyUI's own words and its log tail."""


def comfyui_checkout() -> tuple[Path | None, str]:
    """(checkout, "") from `COMFYUI_PATH`, or (None, why it cannot be used)."""
    value = os.environ.get("COMFYUI_PATH")
    if not value:
        return None, "COMFYUI_PATH is not set (point it at a ComfyUI checkout to run the ComfyUI integration tests)"
    path = Path(value).expanduser()
    missing = [m for m in CHECKOUT_MARKERS if not (path / m).is_file()]
    if missing:
        return None, f"COMFYUI_PATH={value} is not a ComfyUI checkout (missing {', '.join(missing)})"
    return path.resolve(), ""


def comfyui_python(checkout: Path) -> str:
    """The interpreter that runs ComfyUI: `COMFYUI_PYTHON`, the checkout's venv, or this one."""
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    for venv in ("venv", ".venv"):
        candidate = checkout / venv / "bin" / "python"
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def run_checks(
    checkout: Path, script: Path, base: Path, timeout: float = 900, args: tuple[str, ...] = ()
) -> dict[str, dict]:
    """Run a check script (tests/comfyui_*_checks.py) in ComfyUI's interpreter on `base`; its
    "CHECK {json}" lines as {name: values}. Fails (AssertionError with the output) if the script
    fails, reports nothing, or any check reports an error."""
    done = subprocess.run(
        [comfyui_python(checkout), str(script), str(checkout), str(base), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    found = {}
    for line in done.stdout.splitlines():
        if line.startswith("CHECK "):
            item = json.loads(line[len("CHECK ") :])
            found[item.pop("name")] = item
    assert done.returncode == 0 and found, (
        f"the ComfyUI-side checks failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    )
    for name, item in found.items():
        assert "error" not in item, f"{name}:\n{item['error']}"
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyUIServer:
    """One ComfyUI process: `start()` waits until it answers, `stop()` always ends it.

    Use as a context manager. `base_dir` must already hold what ComfyUI should see (models/,
    custom_nodes/, input/); output/, temp/ and user/ are created by ComfyUI.
    """

    def __init__(
        self, checkout: Path, python: str, base_dir: Path, extra_args: tuple[str, ...] = ("--cpu", "--force-fp32")
    ):
        self.checkout, self.python, self.base_dir = Path(checkout), python, Path(base_dir)
        self.extra_args = tuple(extra_args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base_dir / "comfyui.log"
        self.client_id = uuid.uuid4().hex
        self._process: subprocess.Popen | None = None
        self._log_file: io.IOBase | None = None

    # -- process ---------------------------------------------------------------------------
    def command(self) -> list[str]:
        return [
            self.python,
            str(self.checkout / "main.py"),
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base_dir),
            "--disable-auto-launch",
            "--database-url",
            "sqlite:///:memory:",
            *self.extra_args,
        ]

    def start(self, timeout: float = 300.0) -> ComfyUIServer:
        """Launch ComfyUI and poll `/system_stats` until it answers (or fail with its log)."""
        self._log_file = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._process = subprocess.Popen(
            self.command(), cwd=self.checkout, stdout=self._log_file, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ComfyUIError(
                    f"ComfyUI exited with code {self._process.returncode} while starting\n{self.log_tail()}"
                )
            try:
                self.get_json("/system_stats", timeout=5)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        raise ComfyUIError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate the process (kill it if it does not exit within 20 s) and close the log."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=20)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> ComfyUIServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        """Everything ComfyUI has written so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "---- ComfyUI log (tail) ----\n" + "\n".join(self.log().splitlines()[-lines:])

    # -- HTTP ------------------------------------------------------------------------------
    def _request(self, path: str, body: dict | None = None, timeout: float = 60.0) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, headers={"Content-Type": "application/json"} if data else {}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()

    def get_json(self, path: str, timeout: float = 60.0):
        return json.loads(self._request(path, timeout=timeout))

    def get_bytes(self, path: str, timeout: float = 60.0) -> bytes:
        return self._request(path, timeout=timeout)

    # -- prompts ---------------------------------------------------------------------------
    def queue_prompt(self, prompt: dict, extra_pnginfo: dict | None = None) -> str:
        """POST an API-format prompt to `/prompt`; its prompt id, or ComfyUI's validation errors."""
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_pnginfo:
            body["extra_data"] = {"extra_pnginfo": extra_pnginfo}
        try:
            answer = json.loads(self._request("/prompt", body))
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise ComfyUIError(f"ComfyUI refused the prompt (HTTP {error.code}): {detail}\n{self.log_tail()}") from None
        if answer.get("node_errors"):
            raise ComfyUIError(f"ComfyUI reported node errors: {json.dumps(answer['node_errors'])}")
        return answer["prompt_id"]

    def wait_for(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """Poll `/history/<id>` until the prompt is done; its history entry, or ComfyUI's error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise ComfyUIError(
                    f"ComfyUI exited (code {self._process.returncode}) while running a prompt\n{self.log_tail()}"
                )
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            status = (entry or {}).get("status") or {}
            if status.get("status_str") == "error":
                raise ComfyUIError(f"ComfyUI failed the prompt: {_execution_error(status)}\n{self.log_tail()}")
            if entry and status.get("completed"):
                return entry
            time.sleep(0.5)
        raise ComfyUIError(f"prompt {prompt_id} did not finish within {timeout:.0f} s\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        """Queue `prompt` and wait for it; the history entry."""
        return self.wait_for(self.queue_prompt(prompt), timeout)

    def output_images(self, entry: dict, node_id: str) -> list[bytes]:
        """The files node `node_id` saved in a finished prompt, fetched through `/view`."""
        images = entry.get("outputs", {}).get(node_id, {}).get("images", [])
        files = []
        for image in images:
            query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
            files.append(self.get_bytes(f"/view?{query}"))
        return files


def _execution_error(status: dict) -> str:
    """ComfyUI's `execution_error` message from a history status, in one line."""
    for event, data in status.get("messages", []):
        if event == "execution_error":
            return f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_type')}: {data.get('exception_message')}"
    return json.dumps(status.get("messages", []))[-2000:]


def sd15_unet_base(base: Path, repo: Path):
    """`base` as a ComfyUI base directory for the in-process checks: models/diffusion_models/unet.safetensors
    (an SD1.5-detectable UNet in LDM names, seed 0) and the pack linked into custom_nodes/. Returns the
    diffusers UNet (for LoRA targets) and the models folder."""
    import torch
    from safetensors.torch import save_file

    from lcm_accel.fixtures.comfyui_models import sd15_unet
    from lcm_accel.fixtures.ldm_keys import unet_to_ldm

    torch.manual_seed(0)
    unet = sd15_unet().eval()
    models = base / "models"
    (models / "diffusion_models").mkdir(parents=True)
    state = {k: v.contiguous() for k, v in unet_to_ldm(unet.state_dict(), 1).items()}
    save_file(state, str(models / "diffusion_models" / "unet.safetensors"))
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "comfyui-lcm-accel").symlink_to(repo)
    return unet, models
