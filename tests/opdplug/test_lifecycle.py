"""The optional component lifecycle (``opdplug.types.Component``): ``setup(ctx)`` once the models
are loaded (also for components built later), ``metrics()`` merged into every step's metrics,
``close()`` when the run ends, even by an exception."""
import json
import types

import pytest

from opdplug.errors import TrainingError
from opdplug.hookspecs import hookimpl
from opdplug.loop import train
from opdplug.types import Credit


class Probe:
    """A credit scheme (uniform weights) that records its lifecycle."""

    def __init__(self, name: str):
        self.name, self.events = name, []

    def setup(self, ctx):
        self.events.append(("setup", ctx.student is not None, ctx.task is not None, ctx.step))

    def metrics(self):
        self.events.append("metrics")
        return {f"{self.name}/metrics_calls": self.events.count("metrics")}

    def close(self):
        self.events.append("close")

    def __call__(self, batch, scores):
        return Credit(weights_B_L=batch.loss_mask_B_L.float())


def lifecycle_plugin(probe: Probe, late: Probe, seen: list, fail_at_step: int = -1):
    """Registers ``probe`` (used as the credit scheme) and ``late`` (built by ``opd_step_end`` of
    step 0, long after setup), records the kernel's own lifecycle hooks in ``seen``, and makes
    the loss fail at ``fail_at_step``."""
    plugin = types.ModuleType("lifecycle_plugin")

    def register(register):
        register("probe", probe)
        register("late", late)

    def configure(ctx):
        seen.append(("configure", list(probe.events)))

    def step_end(ctx, step, metrics):
        ctx.component("credit_schemes", "late", {}, "test.late")

    def loss(ctx, batch, scores, credit, student):
        if ctx.step == fail_at_step:
            raise RuntimeError("the loss broke")

    def unconfigure(ctx):
        seen.append(("unconfigure", list(probe.events[-1:]), list(late.events[-1:])))

    for hook, fn in (("opd_register_credit_schemes", register), ("opd_configure", configure),
                     ("opd_step_end", step_end), ("opd_loss", loss), ("opd_unconfigure", unconfigure)):
        setattr(plugin, hook, hookimpl(fn, tryfirst=True) if hook == "opd_loss" else hookimpl(fn))
    return plugin


def test_setup_once_metrics_every_step_close_at_the_end(toy_run, toy_manager, tmp_path):
    probe, late, seen = Probe("probe"), Probe("late"), []
    config, manager = toy_run(toy_manager(lifecycle_plugin(probe, late, seen)), run={"steps": 3},
                              credit={"scheme": "probe"})
    history = train(config, manager).history
    assert probe.events[0] == ("setup", True, True, 0)  # after the models and the task, before step 0
    assert probe.events.count(probe.events[0]) == 1 and seen[0] == ("configure", [probe.events[0]])
    assert [m["probe/metrics_calls"] for m in history] == [1, 2, 3]
    assert late.events[0] == ("setup", True, True, 0)  # built at the end of step 0: set up as it was built
    assert ["late/metrics_calls" in m for m in history] == [False, True, True]
    assert probe.events[-1] == late.events[-1] == "close" and probe.events.count("close") == 1
    assert seen[-1] == ("unconfigure", ["close"], ["close"])  # opd_unconfigure after every close()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["probe/metrics_calls"] for m in logged] == [1, 2, 3]


def test_close_is_called_when_the_run_fails(toy_run, toy_manager):
    probe, late, seen = Probe("probe"), Probe("late"), []
    config, manager = toy_run(toy_manager(lifecycle_plugin(probe, late, seen, fail_at_step=1)), run={"steps": 3},
                              credit={"scheme": "probe"})
    with pytest.raises(RuntimeError, match="the loss broke"):
        train(config, manager)
    assert probe.events[-1] == late.events[-1] == "close"
    assert seen[-1] == ("unconfigure", ["close"], ["close"])


def test_close_is_called_when_setup_of_another_component_fails(toy_run, toy_manager):
    class Refuses(Probe):
        def setup(self, ctx):
            raise TrainingError("refused")

    probe = Probe("probe")
    plugin = types.ModuleType("refusing_plugin")
    plugin.opd_register_samplers = hookimpl(lambda register: register("probe", probe))
    plugin.opd_register_credit_schemes = hookimpl(lambda register: register("refuses", Refuses("refuses")))
    config, manager = toy_run(toy_manager(plugin), rollout={"sampler": "probe"}, credit={"scheme": "refuses"})
    with pytest.raises(TrainingError, match="refused"):
        train(config, manager)
    assert probe.events[0][0] == "setup"  # set up before the credit scheme refused
    assert probe.events[-1] == "close"


def test_an_instance_asked_for_under_two_keys_is_set_up_once(toy_run, toy_manager):
    probe, seen = Probe("probe"), []
    plugin = lifecycle_plugin(probe, probe, seen)  # "late" is the same object as "probe"
    config, manager = toy_run(toy_manager(plugin), credit={"scheme": "probe"})
    train(config, manager)
    assert sum(1 for e in probe.events if e[0] == "setup") == 1
