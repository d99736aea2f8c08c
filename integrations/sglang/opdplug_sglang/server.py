"""Start and stop a local SGLang server (what the tests, benchmarks and ``opdplug sglang serve`` use).

SGLang lives in its own virtual environment (it pins another torch than the trainer's), made by
``integrations/sglang/scripts/setup_sglang_env.sh``; this module only runs its Python. On a
machine without a GPU the server runs SGLang's CPU engine with the flags below (without the
memory flags it reserves about 15 GB for its KV cache).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from opdplug.errors import ConfigError, RemoteError

REPO = Path(__file__).resolve().parents[3]
DEFAULT_VENV = REPO / ".venv-sglang"
SETUP_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "setup_sglang_env.sh"

CPU_FLAGS = (
    "--device", "cpu", "--disable-overlap-schedule", "--dtype", "float32",
    "--max-total-tokens", "8192", "--mem-fraction-static", "0.05", "--skip-server-warmup",
)


def sglang_python(python: str = "") -> Path:
    """The interpreter of the SGLang environment: ``python``, else ``$OPDPLUG_SGLANG_PYTHON``,
    else ``<repo>/.venv-sglang/bin/python``."""
    path = Path(python or os.environ.get("OPDPLUG_SGLANG_PYTHON", "") or DEFAULT_VENV / "bin" / "python")
    if not path.exists():
        raise ConfigError(
            f"no SGLang environment at {path}; create it with bash {SETUP_SCRIPT} "
            f"or point OPDPLUG_SGLANG_PYTHON at a Python that has sglang"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    """A running ``sglang.launch_server`` process."""

    url: str
    process: subprocess.Popen
    log_path: Path
    model_path: str
    argv: list = field(default_factory=list)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is not None:
            return
        try:  # the server spawns scheduler/detokenizer children: stop the whole group
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def launch(
    model_path: str | os.PathLike,
    *,
    port: int = 0,
    python: str = "",
    device: str = "cpu",
    extra_args: Sequence[str] = (),
    log_path: Optional[str | os.PathLike] = None,
    wait: bool = True,
    timeout_s: float = 300.0,
    threads: int = 1,
) -> LocalServer:
    """Start a server for ``model_path`` on 127.0.0.1 and (by default) wait until it answers."""
    port = port or free_port()
    exe = sglang_python(python)
    argv = [str(exe), "-m", "sglang.launch_server", "--model-path", str(model_path),
            "--host", "127.0.0.1", "--port", str(port)]
    if device == "cpu":
        argv += CPU_FLAGS
    argv += list(extra_args)
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if device == "cpu":
        env.update(SGLANG_USE_CPU_ENGINE="1", OMP_NUM_THREADS=str(threads))
    log_path = Path(log_path) if log_path else Path(os.environ.get("TMPDIR", "/tmp")) / f"sglang-{port}.log"
    log = open(log_path, "w")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log.close()
    server = LocalServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path,
                         model_path=str(model_path), argv=argv)
    if wait:
        try:
            wait_ready(server, timeout_s)
        except BaseException:
            server.stop()
            raise
    return server


def wait_ready(server: LocalServer, timeout_s: float = 300.0) -> None:
    """Poll ``/get_model_info`` until the server answers; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RemoteError(
                f"the SGLang server for {server.model_path} exited with status {server.process.returncode} "
                f"while starting; its log {server.log_path} ends with: {server.log_tail(3)!r}", url=server.url,
            )
        try:
            with urllib.request.urlopen(server.url + "/get_model_info", timeout=2) as r:
                json.loads(r.read())
                return
        except (OSError, ValueError):
            time.sleep(0.5)
    server.stop()
    raise RemoteError(f"the SGLang server at {server.url} did not answer within {timeout_s:.0f} s; see {server.log_path}", url=server.url)


if __name__ == "__main__":  # python -m opdplug_sglang.server MODEL_DIR [PORT]
    srv = launch(sys.argv[1], port=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print(srv.url, flush=True)
    try:
        srv.process.wait()
    except KeyboardInterrupt:
        srv.stop()
