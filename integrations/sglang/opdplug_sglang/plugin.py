"""Hook implementations of ``opdplug-sglang``.

* scorer ``sglang`` (``scorer.SGLangTeacher``): teacher log-probs from SGLang servers.
* sampler ``sglang`` (``rollout.SGLangRollout``): student rollouts from SGLang servers, with the
  student's weights pushed to them so rollouts stay on-policy (bounded staleness).
* ``opd_configure``: connects and checks the servers (reachable, same vocabulary) before step 0,
  so a wrong URL or tokenizer is a one-line error, not a failure at step 1.
* ``opd_step_end``: ``sglang/*`` metrics (tokens scored, retries, cache size, staleness).
* command ``sglang``: ``opdplug sglang serve|check`` (``cli.py``).
"""
from __future__ import annotations

from opdplug.hookspecs import hookimpl

from .rollout import SGLangRollout
from .scorer import SGLangTeacher


@hookimpl
def opd_register_scorers(register):
    register("sglang", SGLangTeacher)


@hookimpl
def opd_register_samplers(register):
    register("sglang", SGLangRollout)


def _components(ctx):
    c = ctx.config
    teacher = rollout = None
    if c.teacher.scorer == "sglang":
        teacher = ctx.component("scorers", c.teacher.scorer, c.teacher.options, "teacher.scorer")
    if c.rollout.sampler == "sglang":
        rollout = ctx.component("samplers", c.rollout.sampler, c.rollout.options, "rollout.sampler")
    return teacher, rollout


@hookimpl
def opd_configure(ctx):
    teacher, rollout = _components(ctx)
    if teacher is not None:
        teacher.connect(ctx)
    if rollout is not None:
        from .target import SGLangTarget

        SGLangTarget(rollout._client()).check_vocabulary(ctx.tokenizer)


@hookimpl
def opd_step_end(ctx, step, metrics):
    for component in _components(ctx):
        if component is not None:
            metrics.update(component.metrics())


@hookimpl
def opd_register_commands(register):
    from .cli import SGLangCommand

    register("sglang", SGLangCommand())
