"""The HTTP client: retries within a budget, failover, all-or-nothing batches.

The upstream here is a tiny JSON echo server; every fault comes from the real fault proxy the
SGLang lane also uses in front of a real server.
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from opdplug.errors import RemoteError, TrainingError
from opdplug_sglang.client import MalformedResponse, RetryPolicy, SGLangClient
from opdplug_sglang.testing.fault_proxy import FaultProxy


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        self._send(200, {"model_path": "/m", "port": self.server.server_address[1]})

    def do_POST(self):  # noqa: N802
        data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if data.get("bad"):
            self._send(400, {"error": "bad request"})
        else:
            self._send(200, {"echo": data, "port": self.server.server_address[1]})


@pytest.fixture
def upstream():
    servers = []

    def make():
        srv = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


FAST = RetryPolicy(timeout_s=1.0, budget_s=3.0, backoff_s=0.02, backoff_max_s=0.1)


@pytest.mark.parametrize("fault", ["http500", "http503", "truncate", "garbage", "drop"])
def test_transient_faults_are_retried_and_the_answer_is_whole(upstream, fault):
    with FaultProxy(upstream()) as proxy:
        client = SGLangClient([proxy.url], FAST)
        proxy.inject(fault, times=2, path="/generate")
        assert client.post("/generate", {"x": 1})["echo"] == {"x": 1}
        assert proxy.served_faults[fault] == 2 and client.stats.retries == 2


def test_a_slow_answer_times_out_and_is_retried(upstream):
    with FaultProxy(upstream()) as proxy:
        client = SGLangClient([proxy.url], FAST)
        proxy.inject("delay", seconds=1.5)
        t0 = time.monotonic()
        assert client.post("/generate", {"x": 2})["echo"] == {"x": 2}
        assert client.stats.retries == 1 and time.monotonic() - t0 < 3.5


def test_a_restarting_server_is_waited_for_within_the_budget(upstream):
    proxy = FaultProxy(upstream()).start()
    try:
        client = SGLangClient([proxy.url], RetryPolicy(timeout_s=1.0, budget_s=5.0, backoff_s=0.05, backoff_max_s=0.2))
        proxy.set_down(True)
        threading.Timer(0.6, proxy.set_down, args=(False,)).start()
        assert client.post("/generate", {"x": 3})["echo"] == {"x": 3}
        assert client.stats.retries >= 1
    finally:
        time.sleep(0.7)
        proxy.stop()


def test_spent_budget_is_a_remote_error_naming_the_url(upstream):
    with FaultProxy(upstream()) as proxy:
        client = SGLangClient([proxy.url], RetryPolicy(timeout_s=1.0, budget_s=0.3, backoff_s=0.02, backoff_max_s=0.05))
        proxy.inject("http500", times=1000)
        with pytest.raises(RemoteError) as info:
            client.post("/generate", {"x": 1})
        assert proxy.url in str(info.value) and info.value.url == proxy.url
        assert "HTTP 500" in str(info.value) and "\n" not in str(info.value)


def test_refused_connection_is_a_remote_error(upstream):
    proxy = FaultProxy(upstream()).start()
    url = proxy.url
    proxy.stop()
    client = SGLangClient([url], RetryPolicy(timeout_s=0.5, budget_s=0.3, backoff_s=0.02, backoff_max_s=0.05))
    with pytest.raises(RemoteError, match="ConnectionRefused"):
        client.get("/get_model_info")


def test_a_client_error_is_not_retried(upstream):
    url = upstream()
    client = SGLangClient([url], FAST)
    with pytest.raises(TrainingError, match="HTTP 400") as info:
        client.post("/generate", {"bad": True})
    assert not isinstance(info.value, RemoteError) and client.stats.retries == 0


def test_validation_failures_are_retried_like_server_errors(upstream):
    with FaultProxy(upstream()) as proxy:
        client = SGLangClient([proxy.url], FAST)
        calls = []

        def validate(answer):
            calls.append(answer)
            if len(calls) == 1:
                raise MalformedResponse("first answer rejected")

        assert client.post("/generate", {"x": 5}, validate=validate)["echo"] == {"x": 5}
        assert len(calls) == 2 and client.stats.retries == 1


def test_post_many_keeps_order_and_spreads_over_servers(upstream):
    a, b = upstream(), upstream()
    client = SGLangClient([a, b], FAST, max_concurrency=4)
    answers = client.post_many("/generate", [{"i": i} for i in range(10)])
    assert [x["echo"]["i"] for x in answers] == list(range(10))
    ports = [x["port"] for x in answers]
    assert ports[0::2] == [int(a.rsplit(":", 1)[1])] * 5 and ports[1::2] == [int(b.rsplit(":", 1)[1])] * 5


def test_post_many_fails_over_to_the_other_server(upstream):
    good = upstream()
    dead = FaultProxy(upstream()).start()
    dead_url = dead.url
    dead.stop()
    client = SGLangClient([dead_url, good], FAST, max_concurrency=2)
    answers = client.post_many("/generate", [{"i": i} for i in range(4)])
    assert [x["echo"]["i"] for x in answers] == [0, 1, 2, 3]
    assert client.stats.failures_by_url.get(dead_url, 0) >= 2


def test_post_many_is_all_or_nothing(upstream):
    with FaultProxy(upstream()) as proxy:
        client = SGLangClient([proxy.url], RetryPolicy(timeout_s=1.0, budget_s=0.3, backoff_s=0.02, backoff_max_s=0.05),
                              max_concurrency=3)

        def validate(answer, i):
            if i == 1:
                raise MalformedResponse("row 1 is always wrong")

        with pytest.raises(RemoteError, match="row 1 is always wrong"):
            client.post_many("/generate", [{"i": i} for i in range(3)], validate=validate)


def test_urls_are_checked():
    from opdplug.errors import ConfigError

    with pytest.raises(ConfigError, match="not a server URL"):
        SGLangClient(["ftp://x"])
    with pytest.raises(ConfigError, match="no SGLang server URL"):
        SGLangClient([])
    assert SGLangClient(["127.0.0.1:30000/"]).urls == ["http://127.0.0.1:30000"]


def _closed_port_url():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    return url


def test_the_retry_hint_names_options_the_config_accepts():
    client = SGLangClient([_closed_port_url()], RetryPolicy(timeout_s=0.5, budget_s=0.3, backoff_s=0.02, backoff_max_s=0.05))
    with pytest.raises(RemoteError) as err:
        client.post("/generate", {"x": 1})
    assert "retry_budget_s in [teacher.options] or [rollout.options]" in str(err.value)
    assert "[sglang]" not in str(err.value)


def test_an_unreachable_rollout_server_is_not_a_vocabulary_problem(tiny_models):
    from opdplug_sglang.target import SGLangTarget

    client = SGLangClient([_closed_port_url()], RetryPolicy(timeout_s=0.5, budget_s=0.3, backoff_s=0.02, backoff_max_s=0.05))
    with pytest.raises(RemoteError) as err:
        SGLangTarget(client).check_vocabulary(tiny_models.tokenizer)
    message = str(err.value)
    assert "vocabulary" not in message and "refused token ids" not in message and "check that it is up" in message
