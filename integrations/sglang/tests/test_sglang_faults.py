"""Faults between the trainer and the served teacher, injected by the proxy in front of the server.

A run hit by transient faults trains exactly as a clean run (a step completes with all its
scores, or is redone whole); the sglang lane also restarts a real server mid-run.
"""
import time

import pytest

from opdplug.hookspecs import hookimpl
from opdplug.loop import train
from opdplug_sglang.testing.fault_proxy import FaultProxy


def _sglang(url, **options):
    return {"scorer": "sglang", "path": "", "top_k": 4,
            "options": {"urls": [url], "batch_size": 2, "retry_budget_s": 20.0, "timeout_s": 2.0, **options}}


@pytest.fixture(scope="module")
def clean_losses(teacher_server, tiny_models, tmp_path_factory):
    from opdplug.config import parse_config
    from opdplug.manager import make_plugin_manager

    def make(url, out, **run):
        manager = make_plugin_manager()
        data = {
            "run": {"output_dir": str(out), "steps": 3, "batch_size": 4, "progress": False, "lr": 3e-3, **run},
            "student": {"path": str(tiny_models.student_dir)},
            "teacher": _sglang(url),
            "task": {"options": {"max_len": 4}},
            "loss": {"support": "teacher_topk", "divergence": "reverse_kl", "top_k": 4},
        }
        return parse_config(data, manager.plugin_tables()), manager

    clean = [h["loss"] for h in train(*make(teacher_server.url, tmp_path_factory.mktemp("clean"))).history]
    return clean, make


@pytest.mark.parametrize("fault", ["http500", "truncate", "garbage", "drop", "malformed", "delay"])
def test_transient_faults_do_not_change_training(teacher_server, clean_losses, fault, tmp_path):
    clean, make = clean_losses
    with FaultProxy(teacher_server.url) as proxy:
        config, manager = make(proxy.url, tmp_path / fault)

        class Inject:  # faults land in the middle of the run, on the teacher's scoring requests
            @hookimpl
            def opd_step_end(self, ctx, step, metrics):
                if step == 0:
                    proxy.inject(fault, times=3, seconds=3.0)

        manager.register(Inject(), name="inject")
        result = train(config, manager)
        assert proxy.served_faults[fault] == 3
    assert [h["loss"] for h in result.history] == pytest.approx(clean, rel=1e-6)
    assert result.history[-1]["sglang/retries"] >= 3


@pytest.mark.sglang
def test_a_real_server_restarted_mid_run_is_waited_for(teacher_server, clean_losses, tmp_path):
    if getattr(teacher_server, "kind", "") != "sglang":
        pytest.skip("restarts the real server")
    import dataclasses

    from opdplug_sglang.server import launch, wait_ready

    clean, make = clean_losses
    config, manager = make(teacher_server.url, tmp_path / "restart")
    # a restart takes 30-60 s here: give each request a budget that covers it
    options = dict(config.teacher.options, retry_budget_s=300.0)
    config = dataclasses.replace(config, teacher=dataclasses.replace(config.teacher, options=options))
    restart = _Restart(teacher_server, launch)
    manager.register(restart, name="restart")
    t0 = time.monotonic()
    result = train(config, manager)
    assert restart.done and time.monotonic() - t0 > 10
    assert [h["loss"] for h in result.history] == pytest.approx(clean, rel=1e-5)
    assert result.history[-1]["sglang/retries"] >= 1
    wait_ready(teacher_server)


class _Restart:
    """After step 0: stop the server, start a new one on the same port (in the background)."""

    def __init__(self, server, launch):
        self.server, self.launch, self.done = server, launch, False
        self.port = int(server.url.rsplit(":", 1)[1])

    @hookimpl
    def opd_step_end(self, ctx, step, metrics):
        if step != 0:
            return
        self.server.stop()
        new = self.launch(self.server.model_path, port=self.port, extra_args=["--disable-radix-cache"], wait=False)
        self.server.process, self.server.log_path = new.process, new.log_path  # the fixture stops the new one
        self.done = True
