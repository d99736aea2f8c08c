"""``[drafter]``: the drafter plugin's config table (declared through ``opd_add_options``).

::

    [drafter]
    kind = "standalone"        # a registered drafter kind: standalone (DistillSpec), eagle3, or a plugin's
    draft_tokens = 4           # k: drafts per verify round (the acceptance length is at most k + 1)
    eval_every = 25            # acceptance on held-out prompts every N training steps (0: never)
    eval_prompts = 32
    eval_batch_size = 8
    eval_temperatures = [0.0, 1.0]

    [drafter.options]          # the kind's own options (eagle3: opdplug_drafters.eagle3.Eagle3Options)
    steps = 300

The table is checked here for what every kind shares; the kind name and its options are checked
against the registry (``kinds.get_kind``, ``kinds.kind_options``) by ``opd_validate`` and by
``opdplug drafter train``, before anything is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from opdplug.errors import ConfigError

NAMED_TABLES = ("eagle3",)
"""Kinds whose options may also be written ``[drafter.<kind>]`` (``configs/drafter_eagle3.toml``
does); every kind reads ``[drafter.options]``."""


@dataclass(frozen=True)
class DrafterOptions:
    """``[drafter]``: what drafter to train and how to measure it while training."""

    kind: str = "standalone"
    """A registered drafter kind (``opdplug plugins`` lists them). ``standalone``: a small causal
    LM, trained by DistillSpec through the ordinary OPD loop (the config's ``[student]`` is the
    drafter, ``[teacher]`` the target); ``eagle3``: an EAGLE-3 head trained on ``[teacher] path``."""
    draft_tokens: int = 4
    """k, drafts per verify round, for every acceptance measurement of the run."""
    eval_every: int = 0
    """Measure acceptance (exact speculative decoding with the target) on held-out prompts every
    this many optimizer steps, logged as ``drafter/accept_len_T{t}``; 0: never. Standalone only
    (other kinds measure on their own, e.g. ``[drafter.options] eval_every`` for eagle3)."""
    eval_prompts: int = 32
    """Held-out (eval split) prompts per measurement."""
    eval_batch_size: int = 8
    """Prompts decoded together per measurement."""
    eval_temperatures: list[float] = field(default_factory=lambda: [0.0, 1.0])
    """Serving temperatures measured (0: greedy)."""
    eval_seed: int = 1234
    """Seeds the held-out prompts and the sampling of the measurements."""
    options: dict = field(default_factory=dict)
    """The kind's own options, validated by the kind (``validate_options``)."""
    eagle3: dict = field(default_factory=dict)
    """``[drafter.eagle3]``: the same as ``[drafter.options]`` when ``kind = "eagle3"``."""

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ConfigError("drafter.kind must name a drafter kind (e.g. 'standalone' or 'eagle3')")
        if self.draft_tokens < 1:
            raise ConfigError(f"drafter.draft_tokens must be at least 1, got {self.draft_tokens}")
        if self.eval_every < 0 or self.eval_prompts < 1 or self.eval_batch_size < 1:
            raise ConfigError("drafter.eval_every must be >= 0, eval_prompts and eval_batch_size >= 1")
        if any(t < 0 for t in self.eval_temperatures) or not self.eval_temperatures:
            raise ConfigError(f"drafter.eval_temperatures must be a non-empty list of numbers >= 0, got {self.eval_temperatures}")
        for name in NAMED_TABLES:
            if getattr(self, name) and (self.kind != name or self.options):
                raise ConfigError(f"[drafter.{name}] is given but drafter.kind = {self.kind!r}"
                                  if self.kind != name else f"give the {name} options once: [drafter.options] or [drafter.{name}]")

    def kind_table(self) -> tuple[str, dict]:
        """``(name, table)``: the kind's options as written, ``[drafter.options]`` or
        ``[drafter.<kind>]`` (see ``NAMED_TABLES``)."""
        if self.kind in NAMED_TABLES and getattr(self, self.kind):
            return self.kind, getattr(self, self.kind)
        return "options", self.options

    def is_set(self) -> bool:
        """Whether the run is a drafter run at all (a config with a ``[drafter]`` table that
        asks for measurements, or for another kind than the OPD loop's own)."""
        return self.eval_every > 0 or self.kind != "standalone"
