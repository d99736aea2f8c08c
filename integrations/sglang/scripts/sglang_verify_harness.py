"""The harness of ``verify_sglang_cpu.py``: the recording HTTP client (standard library only), the
SGLang server process, ``check`` (one printed line per finding), and the reference forward pass
the checks compare SGLang's log-probs with."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The verified server command (see SGLANG_CPU_NOTES.md).
SERVER_FLAGS = [
    "--device", "cpu", "--disable-overlap-schedule", "--dtype", "float32",
    "--max-total-tokens", "8192", "--mem-fraction-static", "0.05", "--skip-server-warmup",
]
SERVER_ENV = {"SGLANG_USE_CPU_ENGINE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

RECORD: dict = {}
FAILURES: list[str] = []


def check(cond: bool, msg: str) -> None:
    print(("ok   " if cond else "FAIL ") + msg, flush=True)
    if not cond:
        FAILURES.append(msg)


# ----------------------------------------------------------------------------------------- HTTP
class Http:
    def __init__(self, base: str):
        self.base = base

    def call(self, method: str, path: str, body=None, timeout: float = 120.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read().decode()
        try:
            payload = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            payload = raw
        return status, payload

    def post(self, path, body, key=None, **kw):
        status, payload = self.call("POST", path, body, **kw)
        if key:
            body = json.loads(json.dumps(body))  # a snapshot: callers reuse and mutate their dicts
            RECORD[key] = {"request": {"POST": path, "body": body}, "status": status, "response": payload}
        return status, payload

    def get(self, path, key=None, **kw):
        status, payload = self.call("GET", path, **kw)
        if key:
            RECORD[key] = {"request": {"GET": path}, "status": status, "response": payload}
        return status, payload


# --------------------------------------------------------------------------------------- server
def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def tree_rss_mib(pid: int) -> dict[int, float]:
    """Resident set size (MiB) of ``pid`` and all its descendants."""
    res, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        res[p] = int(line.split()[1]) / 1024
        except OSError:
            continue
        todo.extend(_children(p))
    return res


class Server:
    def __init__(self, python: str, model: str, port: int, log: Path, extra=()):
        self.port, self.log = port, log
        env = {**os.environ, **SERVER_ENV}
        cmd = [python, "-m", "sglang.launch_server", "--model-path", model,
               "--host", "127.0.0.1", "--port", str(port), *SERVER_FLAGS, *extra]
        self.cmd = cmd
        self.t0 = time.time()
        self.log_file = open(log, "w")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.http = Http(f"http://127.0.0.1:{port}")

    def wait_ready(self, timeout=300.0) -> float:
        while time.time() - self.t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server died (rc {self.proc.returncode}); see {self.log}")
            try:
                # /health_generate runs a 1-token generation: ready means the model answers.
                if self.http.call("GET", "/health_generate", timeout=30)[0] == 200:
                    return time.time() - self.t0
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout}s; see {self.log}")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log_file.close()


# ------------------------------------------------------------------------------------ reference
@dataclass(frozen=True)
class Case:
    """The models and the sequence the checks share: ``ids`` = ``prompt`` + a completion."""

    tok: Any
    m0: Any
    """The served model."""
    m1: Any
    """A perturbed copy, for the weight update."""
    work: Path
    eos: int
    prompt: list
    ids: list
    lp0: Any
    """``hf_logprobs(m0, ids)``."""
    watch: list
    """Token ids asked for with ``token_ids_logprob``."""

    @property
    def P(self) -> int:
        return len(self.prompt)

    @property
    def L(self) -> int:
        return len(self.ids)


def hf_logprobs(model, ids, temperature=1.0):
    """[L, V] log_softmax(logits / T): row t is the distribution of token t+1."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits / temperature, dim=-1)


def score_err(entries, lp_ref, ids, start):
    """Max |sglang - hf| over the non-null ``[logprob, id, text]`` entries; entry k is position start+k."""
    err = 0.0
    for k, e in enumerate(entries):
        if e[0] is None:
            continue
        t = start + k
        assert e[1] == ids[t], (k, e, ids[t])
        err = max(err, abs(e[0] - float(lp_ref[t - 1, ids[t]])))
    return err
