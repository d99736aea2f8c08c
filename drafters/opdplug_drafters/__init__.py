"""opdplug-drafters: train drafters for speculative decoding against a target, export them for SGLang.

Public API for a drafter kind of your own, in your own distribution (register it with
``opd_register_drafter_kinds`` through an ``opdplug`` entry point; see ``kinds`` for the
protocol and ``drafters/tests/thirdparty_drafter`` for an example)::

    from opdplug_drafters import Drafter, DrafterKind, TrainOutcome, TrainRequest, acceptance_of
"""
from .base import Drafter
from .kinds import DrafterKind, TrainOutcome, TrainRequest, acceptance_of

__all__ = ["Drafter", "DrafterKind", "TrainOutcome", "TrainRequest", "acceptance_of"]
