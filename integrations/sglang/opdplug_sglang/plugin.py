"""Hook implementations of ``opdplug-sglang``.

* scorer ``sglang`` (``scorer.SGLangTeacher``): teacher log-probs from SGLang servers.
* sampler ``sglang`` (``rollout.SGLangRollout``): student rollouts from SGLang servers, with the
  student's weights pushed to them so rollouts stay on-policy (bounded staleness).
* Both components use the kernel's component lifecycle: ``setup(ctx)`` connects and checks the
  servers (reachable, same vocabulary) before step 0, so a wrong URL or tokenizer is a one-line
  error, not a failure at step 1; ``metrics()`` gives the ``sglang/*`` metrics (tokens scored,
  retries, cache size, staleness).
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


@hookimpl
def opd_register_commands(register):
    from .cli import SGLangCommand

    register("sglang", SGLangCommand())
