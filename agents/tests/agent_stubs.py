"""Shared test helpers: scripted students (the expert, except at chosen turns) and a rollout capture."""
from __future__ import annotations

from opdplug.hookspecs import hookimpl
from opdplug_agents.rollout import PolicyActor
from opdplug_agents.tools import format_call

DIRECTIONS = ("north", "east", "south", "west")


def candidates(env) -> list[str]:
    """Valid-looking calls of the environment (some optimal, some not)."""
    if env.name == "swapsort":
        return [format_call("swap", i=i) for i in range(len(env._items) - 1)] + [format_call("done")]
    if env.name == "gridnav":
        return [format_call("move", dir=d) for d in DIRECTIONS]
    return [format_call("lookup", name=n) for n in env.episode.names] + [format_call("answer", value=0)]


def mistake(env) -> str:
    """A non-optimal call that does not end the episode when one exists (a wasted move)."""
    wrong = [a for a in candidates(env) if not env.is_optimal(a)]
    lasting = [a for a in wrong if '"done"' not in a and '"answer"' not in a]
    return (lasting or wrong)[0]


def bad_student(bad_turns, producer: str = "student", fatal: bool = False) -> PolicyActor:
    """The expert, but a mistake at each turn in ``bad_turns`` (``fatal``: swapsort's ``done``
    on an unsorted list, which ends the episode as a failure)."""
    bad = set(bad_turns)

    def policy(env, turn: int) -> str:
        if turn in bad:
            return format_call("done") if fatal else mistake(env)
        return env.expert_action()

    return PolicyActor(policy, producer)


class Capture:
    """A plugin that keeps every rollout batch the loop trains on."""

    def __init__(self):
        self.batches = []

    @hookimpl(wrapper=True)
    def opd_rollout(self, ctx, prompts, step):
        batch = yield
        self.batches.append(batch)
        return batch
