"""``opdplug sglang serve`` stops the server it started (which runs in its own session) when it is
told to stop: SIGTERM from a process manager, or Ctrl-C, also where it was started as a background
job with SIGINT ignored, which Python inherits and would otherwise keep."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

OPDPLUG = Path(sys.executable).with_name("opdplug")


def _refused(url: str) -> bool:
    host, port = re.match(r"http://([^:]+):(\d+)", url).groups()
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return False
    except OSError:
        return True


@pytest.mark.sglang
@pytest.mark.timeout(600)
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_serve_stops_its_server_on_sigterm_and_on_sigint_even_when_sigint_was_ignored(tiny_models, stop_signal):
    command = [str(OPDPLUG if OPDPLUG.exists() else shutil.which("opdplug")), "sglang", "serve", "--port", "0",
               str(tiny_models.teacher_dir), "--", "--disable-radix-cache"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # as `cmd &` in a script
    lines = []
    for line in process.stdout:  # the command prints its URL once the server answers
        lines.append(line)
        found = re.search(r" at (http://\S+) ", line)
        if found:
            break
    else:
        pytest.fail("opdplug sglang serve exited before serving: " + "".join(lines[-5:]))
    url = found.group(1)
    assert not _refused(url)
    servers = _children(process.pid)  # the server's own process group, to clean up if the test fails
    process.send_signal(stop_signal)
    try:
        assert process.wait(90) == 0
        assert _refused(url), f"the server at {url} still answers after opdplug sglang serve stopped"
    finally:
        process.kill()
        for pid in servers:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children
