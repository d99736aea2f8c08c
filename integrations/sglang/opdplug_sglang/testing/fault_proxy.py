"""A fault-injecting HTTP proxy to put in front of a real server in tests.

``FaultProxy(upstream)`` forwards every request unchanged until told to misbehave::

    proxy = FaultProxy("http://127.0.0.1:30000").start()
    proxy.inject("http500", times=2)           # the next 2 requests answer 500
    proxy.inject("truncate")                   # half a body, then the connection closes
    proxy.inject("malformed")                  # valid JSON, wrong content (answers shifted by one)
    proxy.inject("garbage")                    # 200 with a body that is not JSON
    proxy.inject("drop")                       # close the connection without answering
    proxy.inject("delay", seconds=3)           # answer late (exceeds a short client timeout)
    proxy.set_down(True)                       # refuse connections (nothing listens on the port)
    proxy.stop()

Faults are consumed in order by matching requests (``path`` narrows which ones). ``seen`` counts
requests per path and ``served_faults`` the faults applied, so a test can check the client retried.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

KINDS = ("http500", "http503", "truncate", "malformed", "garbage", "drop", "delay")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: "FaultProxy"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _forward(self, method: str) -> tuple[int, bytes]:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        up = urllib.parse.urlsplit(self.proxy.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=600)
        try:
            headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
            conn.request(method, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _reply(self, status: int, body: bytes, *, length: Optional[int] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _handle(self, method: str) -> None:
        fault = self.proxy._take(self.path)
        self.proxy.seen[self.path] += 1
        kind = fault["kind"] if fault else None
        if kind == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if kind in ("http500", "http503"):
            self._discard_body()
            self._reply(int(kind[4:]), b'{"error": "injected fault"}')
            return
        if kind == "garbage":
            self._discard_body()
            self._reply(200, b"<html>upstream error</html>")
            return
        if kind == "delay":
            time.sleep(fault.get("seconds", 5.0))
        status, body = self._forward(method)
        if kind == "truncate":
            self._reply(status, body[: len(body) // 2], length=len(body))
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if kind == "malformed":
            body = _shift_logprobs(body)
        self._reply(status, body)

    def _discard_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")


def _shift_logprobs(body: bytes) -> bytes:
    """The same answer with every per-position list shifted by one position: plausible JSON
    with the scores of the neighbouring tokens (the bug a careless parser would not notice)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:-1]
    answers = data if isinstance(data, list) else [data]
    for a in answers:
        meta = a.get("meta_info", {}) if isinstance(a, dict) else {}
        for key in ("input_token_logprobs", "input_top_logprobs", "input_token_ids_logprobs", "output_token_logprobs"):
            if isinstance(meta.get(key), list) and len(meta[key]) > 1:
                meta[key] = meta[key][1:] + meta[key][:1]
    return json.dumps(data).encode()


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 that injects faults into a server's answers on request."""

    def __init__(self, upstream: str, port: int = 0):
        self.upstream = upstream.rstrip("/")
        self.port = port
        self.seen: Counter = Counter()
        self.served_faults: Counter = Counter()
        self._faults: deque = deque()
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FaultProxy":
        handler = type("Handler", (_Handler,), {"proxy": self})
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def set_down(self, down: bool) -> None:
        """Down: the port refuses connections (as while a server restarts). Up: listen again."""
        if down:
            self.stop()
        elif self._server is None:
            self.start()

    def inject(self, kind: str, *, times: int = 1, path: str = "/generate", **params) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(KINDS)}")
        with self._lock:
            for _ in range(times):
                self._faults.append({"kind": kind, "path": path, **params})

    def pending(self) -> int:
        with self._lock:
            return len(self._faults)

    def _take(self, path: str) -> Optional[dict]:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if path.startswith(fault["path"]):
                    del self._faults[i]
                    self.served_faults[fault["kind"]] += 1
                    return fault
        return None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
