"""Start, drive and stop a real ComfyUI server (the host made by tools/host/provision.py).

Standard library only, so it imports under any python (the host venv's, the tests').

    with ComfyServer(tmp_path, extra_model_paths={"checkpoints": str(ckpt_dir)}) as srv:
        assert not srv.import_failures(PACK)
        entry = srv.run_prompt(api_graph, timeout=300)
        status, messages = history_status(entry)
        images = srv.output_images(entry)
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..paths import HOST_DIR as COMFYUI_DIR
from ..paths import HOST_PYTHON, PACK_NAME
YAML_SECTION = "guidance_lab_test"


class ComfyServerError(RuntimeError):
    """The server did not start, died, or did not answer in time (message has the log tail)."""


class PromptRejected(Exception):
    """POST /prompt answered 400: the graph failed validation. ``.body`` is the parsed JSON
    ({"error": {...}, "node_errors": {node_id: {"errors": [...], ...}}})."""

    def __init__(self, body):
        self.body = body
        self.error = body.get("error") if isinstance(body, dict) else None
        self.node_errors = body.get("node_errors", {}) if isinstance(body, dict) else {}
        super().__init__(f"prompt rejected: {json.dumps(body)[:2000]}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def extra_model_paths_yaml(paths: dict, section: str = YAML_SECTION) -> str:
    """YAML text for --extra-model-paths-config. ComfyUI (utils/extra_config.py) reads
    ``section: {folder_name: "path\\npath2", ...}``: each value is ONE string, several
    paths separated by newlines; relative paths are taken from the YAML file's folder.
    Values are written as JSON strings, which are valid double-quoted YAML scalars."""
    lines = [f"{section}:"]
    for key, value in paths.items():
        items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        lines.append(f"  {key}: {json.dumps(chr(10).join(str(Path(p).resolve()) for p in items))}")
    return "\n".join(lines) + "\n"


def history_status(entry: dict) -> tuple[str, list]:
    """(status_str, messages) of a /history entry: status_str is 'success' or 'error';
    messages is a list of [event, data] pairs, e.g. ['execution_error', {...,
    'exception_message': ..., 'traceback': [...], 'node_id': ..., 'node_type': ...}]."""
    status = entry.get("status") or {}
    return status.get("status_str", "unknown"), status.get("messages", [])


def execution_error(entry: dict) -> dict | None:
    """The data of the execution_error message of a history entry, or None."""
    for event, data in history_status(entry)[1]:
        if event == "execution_error":
            return data
    return None


class ComfyServer:
    def __init__(self, workdir: Path, port: int | None = None,
                 extra_model_paths: dict[str, str | list] | None = None, extra_args=(),
                 python: Path | None = None, comfyui_dir: Path | None = None,
                 start_timeout: float = 180.0, env: dict | None = None):
        self.workdir = Path(workdir).resolve()
        self.port = port
        self.extra_model_paths = extra_model_paths or {}
        self.extra_args = [str(a) for a in extra_args]
        self.python = Path(python or HOST_PYTHON)
        self.comfyui_dir = Path(comfyui_dir or COMFYUI_DIR)
        self.start_timeout = start_timeout
        self.env = env or {}
        self.output_dir = self.workdir / "output"
        self.input_dir = self.workdir / "input"
        self.temp_dir = self.workdir / "temp"
        self.user_dir = self.workdir / "user"
        self.log_path = self.workdir / "server.log"
        self.yaml_path = self.workdir / "extra_model_paths.yaml"
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def command(self) -> list[str]:
        return [str(self.python), str(self.comfyui_dir / "main.py"), "--cpu",
                "--listen", "127.0.0.1", "--port", str(self.port),
                "--output-directory", str(self.output_dir), "--input-directory", str(self.input_dir),
                "--temp-directory", str(self.temp_dir), "--user-directory", str(self.user_dir),
                "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
                "--extra-model-paths-config", str(self.yaml_path), *self.extra_args]

    def start(self):
        for exe, what in ((self.python, "host python"), (self.comfyui_dir / "main.py", "ComfyUI")):
            if not exe.exists():
                raise ComfyServerError(f"{what} missing at {exe}: run `make provision` (python3 tools/host/provision.py)")
        for d in (self.output_dir, self.input_dir, self.temp_dir, self.user_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.yaml_path.write_text(extra_model_paths_yaml(self.extra_model_paths))
        if self.port is None:
            self.port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1", **self.env}
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        while True:
            if self.proc.poll() is not None:
                raise ComfyServerError(f"ComfyUI exited with {self.proc.returncode} while starting\n"
                                       f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url("/system_stats"), timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - t0 > self.start_timeout:
                self.stop()
                raise ComfyServerError(f"ComfyUI did not answer within {self.start_timeout:.0f} s\n"
                                       f"{self.log_tail()}")
            time.sleep(0.25)
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 15.0):
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- HTTP --------------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def get_json(self, path: str, timeout: float = 60.0):
        with urllib.request.urlopen(self.url(path), timeout=timeout) as r:
            return json.loads(r.read())

    def post_json(self, path: str, payload, timeout: float = 60.0):
        req = urllib.request.Request(self.url(path), data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
            return json.loads(body) if body else None

    def post_prompt(self, api_graph: dict, client_id: str | None = None) -> str:
        payload = {"prompt": api_graph}
        if client_id:
            payload["client_id"] = client_id
        try:
            answer = self.post_json("/prompt", payload)
        except urllib.error.HTTPError as e:
            if e.code == 400:
                raw = e.read()
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"error": {"message": raw.decode(errors="replace")}}
                raise PromptRejected(body) from None
            raise
        return answer["prompt_id"]

    def wait_for(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.25) -> dict:
        t0 = time.monotonic()
        while True:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None:
                return entry
            if not self.is_alive():
                raise ComfyServerError(f"ComfyUI died while running prompt {prompt_id}\n{self.log_tail()}")
            if time.monotonic() - t0 > timeout:
                raise ComfyServerError(f"prompt {prompt_id} not finished after {timeout:.0f} s\n"
                                       f"{self.log_tail()}")
            time.sleep(poll)

    def run_prompt(self, graph: dict, timeout: float = 300.0, poll: float = 0.25) -> dict:
        return self.wait_for(self.post_prompt(graph), timeout=timeout, poll=poll)

    # -- results and log ---------------------------------------------------------
    def output_images(self, history_entry: dict, types=("output",)) -> list[Path]:
        # ComfyUI keeps temporary files in a "temp" folder inside --temp-directory.
        roots = {"output": self.output_dir, "temp": self.temp_dir / "temp", "input": self.input_dir}
        files = []
        for node_output in (history_entry.get("outputs") or {}).values():
            for img in node_output.get("images") or []:
                kind = img.get("type", "output")
                if kind in types:
                    files.append(roots[kind] / img.get("subfolder", "") / img["filename"])
        return files

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return f"--- last {lines} lines of {self.log_path} ---\n" + \
            "\n".join(self.log_text().splitlines()[-lines:])

    def import_failures(self, name: str | None = None) -> list[str]:
        """`IMPORT FAILED` lines of the log (only those naming `name`, if given). Expected
        ones on this host: comfy_extras nodes_audio.py / nodes_audio_encoder.py (no torchaudio)."""
        found = [l.strip() for l in self.log_text().splitlines() if "IMPORT FAILED" in l]
        return [l for l in found if name in l] if name else found

    def custom_node_loaded(self, name: str = PACK_NAME) -> bool | None:
        """True/False from the 'Import times for custom nodes' table; None if not listed."""
        suffix = f"custom_nodes{os.sep}{name}"
        for line in self.log_text().splitlines():
            if line.rstrip().endswith(suffix) and "seconds" in line:
                return "IMPORT FAILED" not in line
        return None
