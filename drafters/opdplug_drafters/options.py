"""``[drafter]``: the drafter plugin's config table (declared through ``opd_add_options``).

::

    [drafter]
    kind = "standalone"        # standalone (DistillSpec, through the OPD loop) | eagle3
    draft_tokens = 4           # k: drafts per verify round (the acceptance length is at most k + 1)
    eval_every = 25            # acceptance on held-out prompts every N training steps (0: never)
    eval_prompts = 32
    eval_batch_size = 8
    eval_temperatures = [0.0, 1.0]

    [drafter.eagle3]           # kind = "eagle3": the options of opdplug_drafters.eagle3.Eagle3Options
    steps = 300
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from opdplug.errors import ConfigError

KINDS = ("standalone", "eagle3")
"""Drafter kinds this plugin trains (``kind``)."""


@dataclass(frozen=True)
class DrafterOptions:
    """``[drafter]``: what drafter to train and how to measure it while training."""

    kind: str = "standalone"
    """``standalone``: a small causal LM, trained by DistillSpec through the ordinary OPD loop (the
    config's ``[student]`` is the drafter, ``[teacher]`` the target); ``eagle3``: an EAGLE-3 head
    trained by ``opdplug_drafters.eagle3.train_eagle3`` on ``[teacher] path`` with ``[drafter.eagle3]``."""
    draft_tokens: int = 4
    """k, drafts per verify round, for every acceptance measurement of the run."""
    eval_every: int = 0
    """Measure acceptance (exact speculative decoding with the target) on held-out prompts every
    this many optimizer steps, logged as ``drafter/accept_len_T{t}``; 0: never. Standalone only
    (an EAGLE-3 run evaluates on its own, ``[drafter.eagle3] eval_every``)."""
    eval_prompts: int = 32
    """Held-out (eval split) prompts per measurement."""
    eval_batch_size: int = 8
    """Prompts decoded together per measurement."""
    eval_temperatures: list[float] = field(default_factory=lambda: [0.0, 1.0])
    """Serving temperatures measured (0: greedy)."""
    eval_seed: int = 1234
    """Seeds the held-out prompts and the sampling of the measurements."""
    eagle3: dict = field(default_factory=dict)
    """Options of an EAGLE-3 run (``Eagle3Options`` fields), validated when ``kind = "eagle3"``."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"drafter.kind = {self.kind!r} is not allowed; choose one of {', '.join(map(repr, KINDS))}")
        if self.draft_tokens < 1:
            raise ConfigError(f"drafter.draft_tokens must be at least 1, got {self.draft_tokens}")
        if self.eval_every < 0 or self.eval_prompts < 1 or self.eval_batch_size < 1:
            raise ConfigError("drafter.eval_every must be >= 0, eval_prompts and eval_batch_size >= 1")
        if any(t < 0 for t in self.eval_temperatures) or not self.eval_temperatures:
            raise ConfigError(f"drafter.eval_temperatures must be a non-empty list of numbers >= 0, got {self.eval_temperatures}")
        if self.kind == "eagle3":
            eagle3_options(self.eagle3)  # fail at load time, not after a target was built

    def is_set(self) -> bool:
        """Whether the run is a drafter run at all (a config with a ``[drafter]`` table that
        asks for measurements, or for EAGLE-3)."""
        return self.eval_every > 0 or self.kind != "standalone"


def eagle3_options(table: dict):
    """``[drafter.eagle3]`` validated into ``opdplug_drafters.eagle3.Eagle3Options`` (one-line errors)."""
    try:
        from .eagle3 import Eagle3Options
    except ImportError as exc:
        raise ConfigError(f"drafter.kind = \"eagle3\" needs opdplug_drafters.eagle3, which failed to import: {exc}") from None
    from opdplug.config import from_dict

    table = dict(table)
    aux = table.pop("aux_layers", None)  # a tuple field: the TOML list is checked here
    if aux is not None and (not isinstance(aux, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in aux)):
        raise ConfigError(f"drafter.eagle3.aux_layers must be a list of integers, got {aux!r}")
    options = from_dict(Eagle3Options, table, "[drafter.eagle3]")
    return dataclasses.replace(options, aux_layers=tuple(aux)) if aux is not None else options
