"""HTTP to one or more SGLang servers: JSON requests, concurrency, retries within a budget.

Standard library only (``http.client`` and a thread pool): SGLang runs in its own environment,
so nothing of it is imported in the training process.

What is retried, and what is not:

* retried (with exponential backoff, on the next URL when there are several, until the time
  budget is spent): connection refused or reset, timeouts, HTTP 5xx, 408 and 429, a body that is
  not complete JSON, and a JSON answer the caller's ``validate`` rejects (a truncated or
  malformed response). A server restarting mid-run looks like this for a while, then recovers.
* not retried: other HTTP 4xx (the request itself is wrong; sending it again cannot help).

When the budget is spent the caller gets ``RemoteError`` naming the URL and the last reason; it
never gets part of a batch's answers.
"""
from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.parse
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from opdplug.errors import ConfigError, RemoteError, TrainingError


class MalformedResponse(Exception):
    """A response arrived but is not what the request asks for (retried like a 5xx)."""


class _Retryable(Exception):
    pass


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one request before giving up."""

    timeout_s: float = 120.0
    """Seconds to wait for one response (connect + answer)."""
    budget_s: float = 60.0
    """Seconds of retrying after the first failure of a request before the run is stopped."""
    backoff_s: float = 0.25
    """First pause between tries; doubled each time (with jitter) up to ``backoff_max_s``."""
    backoff_max_s: float = 4.0
    """Longest pause between tries."""


@dataclass
class ClientStats:
    """Counters since the client was made (read them for metrics)."""

    requests: int = 0
    retries: int = 0
    seconds: float = 0.0
    failures_by_url: dict = field(default_factory=dict)


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{url!r} is not a server URL; write it like http://127.0.0.1:30000")
    return url


class SGLangClient:
    """Sends JSON requests to SGLang servers, spreading them over ``urls``."""

    def __init__(self, urls: Sequence[str], policy: RetryPolicy = RetryPolicy(), max_concurrency: int = 8):
        if not urls:
            raise ConfigError("no SGLang server URL given; set urls = [\"http://127.0.0.1:30000\"]")
        self.urls = [normalize_url(u) for u in urls]
        self.policy = policy
        self.max_concurrency = max(1, max_concurrency)
        self.stats = ClientStats()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._next = 0

    # ------------------------------------------------------------------ one request
    def _connection(self, url: str) -> http.client.HTTPConnection:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(url)
        if conn is None:
            parts = urllib.parse.urlsplit(url)
            cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            conn = conns[url] = cls(parts.hostname, parts.port, timeout=self.policy.timeout_s)
        return conn

    def _drop_connection(self, url: str) -> None:
        conn = getattr(self._local, "conns", {}).pop(url, None)
        if conn is not None:
            conn.close()

    def _once(self, url: str, method: str, path: str, payload: Any) -> Any:
        """One try. Raises ``_Retryable`` for what another try may fix."""
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn = self._connection(url)
        try:
            conn.request(method, urllib.parse.urlsplit(url).path + path, body=body, headers=headers)
            resp = conn.getresponse()
            status, raw = resp.status, resp.read()
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timeout, truncated
            self._drop_connection(url)
            raise _Retryable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        if status >= 500 or status in (408, 429):
            self._drop_connection(url)
            raise _Retryable(f"HTTP {status}: {raw[:200].decode(errors='replace')}")
        if status >= 400:
            raise TrainingError(
                f"SGLang server {url} rejected {method} {path} with HTTP {status}: "
                f"{raw[:300].decode(errors='replace').strip()}"
            )
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            self._drop_connection(url)
            raise _Retryable(f"the response is not complete JSON ({len(raw)} bytes)") from None

    def request(
        self, method: str, path: str, payload: Any = None, *, url: Optional[str] = None,
        validate: Optional[Callable[[Any], None]] = None, failover: bool = True,
        cancel: Optional[threading.Event] = None,
    ) -> Any:
        """One request, retried within the budget. ``url`` picks the first server (round-robin
        when None); with ``failover`` later tries go to the next server."""
        candidates = self.urls
        if url is None:
            with self._lock:
                start = self._next
                self._next = (self._next + 1) % len(self.urls)
        else:
            url = normalize_url(url)
            candidates = self.urls if url in self.urls else [url]
            start = candidates.index(url)
        first_failure, attempt, pause = None, 0, self.policy.backoff_s
        while True:
            if cancel is not None and cancel.is_set():
                raise RemoteError("cancelled: another request of the same batch failed", url=candidates[start])
            target = candidates[(start + attempt) % len(candidates)] if failover else candidates[start]
            t0 = time.perf_counter()
            try:
                answer = self._once(target, method, path, payload)
                if validate is not None:
                    try:
                        validate(answer)
                    except (MalformedResponse, KeyError, IndexError, TypeError, ValueError) as exc:
                        raise _Retryable(f"malformed response: {type(exc).__name__}: {exc}") from None
                with self._lock:
                    self.stats.requests += 1
                    self.stats.seconds += time.perf_counter() - t0
                return answer
            except _Retryable as exc:
                now = time.monotonic()
                first_failure = first_failure or now
                with self._lock:
                    self.stats.retries += 1
                    self.stats.failures_by_url[target] = self.stats.failures_by_url.get(target, 0) + 1
                if now - first_failure >= self.policy.budget_s:
                    raise RemoteError(
                        f"SGLang server {target} failed {method} {path} for {now - first_failure:.0f} s "
                        f"({attempt + 1} tries; last: {exc}); check that it is up, or raise the retry "
                        f"budget (retry_budget_s in [teacher.options] or [rollout.options])", url=target,
                    ) from None
                time.sleep(min(pause, self.policy.backoff_max_s) * (0.5 + random.random()))
                pause *= 2
                attempt += 1

    def get(self, path: str, **kw) -> Any:
        return self.request("GET", path, None, **kw)

    def post(self, path: str, payload: Any, **kw) -> Any:
        return self.request("POST", path, payload, **kw)

    # ------------------------------------------------------------------ many requests
    def post_many(
        self, path: str, payloads: Sequence[Any], *, validate: Optional[Callable[[Any, int], None]] = None,
    ) -> list:
        """POST every payload, ``max_concurrency`` at a time, spread round-robin over the
        servers; answers in the order of ``payloads``. All or nothing: the first request that
        exhausts its budget cancels the rest and raises."""
        if not payloads:
            return []
        if len(payloads) == 1 or self.max_concurrency == 1:
            return [self.post(path, p, validate=None if validate is None else (lambda a, i=i: validate(a, i)))
                    for i, p in enumerate(payloads)]
        cancel = threading.Event()
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(payloads))) as pool:
            futures = [
                pool.submit(
                    self.post, path, p, url=self.urls[i % len(self.urls)], cancel=cancel,
                    validate=None if validate is None else (lambda a, i=i: validate(a, i)),
                )
                for i, p in enumerate(payloads)
            ]
            _, pending = wait(futures, return_when=FIRST_EXCEPTION)
            if pending:  # one failed for good: stop the others instead of finishing a lost batch
                cancel.set()
                for f in pending:
                    f.cancel()
            errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()]
        real = [e for e in errors if not str(e).startswith("cancelled:")]
        if real or errors:
            raise (real or errors)[0]
        return [f.result() for f in futures]
