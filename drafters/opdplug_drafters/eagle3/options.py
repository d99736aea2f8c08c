"""``[drafter.eagle3]`` (or ``[drafter.options]`` with ``kind = "eagle3"``): what is particular
to an EAGLE-3 head. How it trains (steps, batch size, optimizer, schedule, clipping, seed,
checkpoints, logging) is the ``[run]`` table every opdplug run has: the head trains in the core
loop (``stages``)."""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Literal, Optional

from opdplug.errors import ConfigError

MOVED_TO_RUN = {
    "steps": "steps", "batch_size": "batch_size", "lr": "lr", "warmup_steps": "warmup_steps",
    "weight_decay": "weight_decay", "grad_clip": "max_grad_norm", "log_every": "log_every", "seed": "seed",
    "progress": "progress",
}
"""Keys the EAGLE-3 table had while the head trained in a loop of its own, and their ``[run]`` name now."""


@dataclass(frozen=True)
class Eagle3Options:
    """The EAGLE-3 kind's options: the head, its data and its held-out proxy."""

    ttt_steps: int = 7
    """Training-time-test unroll depth: draft steps trained per position (EAGLE-3 uses 7)."""
    step_decay: float = 0.8
    """Weight of TTT step j's loss is ``step_decay ** j``."""
    draft_vocab_size: Optional[int] = None
    """Draft vocabulary size; None = the target's whole vocabulary."""
    aux_layers: Optional[tuple[int, ...]] = None
    """Target HF hidden-state indices fused by the head (i = the stream entering layer i; SGLang
    config id i - 1); None = ``config.default_aux_layers`` of the target's depth."""
    intermediate_size: Optional[int] = None
    """MLP width of the head; None = the target's."""
    variant: str = "eagle3"
    """``"eagle3"``, or ``"eagle3.1"``: an RMSNorm on each auxiliary feature before ``fc`` and the
    normed output (after the norm before ``lm_head``) fed back to the next draft step, as the
    public EAGLE-3.1 checkpoints set it (config flags ``fc_norm``, ``norm_output``; SGLang 0.5.23
    loads both). See ``config.HeadNorms``."""
    norm_before_fc: bool = False
    """Also one RMSNorm over the concatenated features before ``fc`` (SGLang's ``norm_before_fc``,
    NVIDIA's gpt-oss heads), with either variant."""
    data: Literal["target", "rollout"] = "target"
    """Where the training sequences come from. ``target``: the target samples a completion of every
    prompt (``temperature``, ``max_new_tokens``): the head learns the distribution it will verify
    against. ``rollout``: the run's ``[rollout] sampler`` writes them, e.g. ``reference`` (the
    task's own answers: a conversation file's assistant turns, with the task's loss mask) or
    ``teacher``; never a sampler that samples the student (a head cannot sample)."""
    max_new_tokens: int = 64
    """Generation budget of the target's completions (rows also stop at the target's stop ids)."""
    temperature: float = 1.0
    """Temperature the target samples its completions at (0 = greedy). Sample at the serving
    temperature: the head learns the target's distribution either way, but the data (and the
    proxy ``accept_len``'s exactness) follow this. (``[rollout] temperature`` is the student's
    sampling temperature in token-level runs; an EAGLE-3 head never samples while training.)"""
    vocab_prompts: int = 256
    """Prompts whose target completions are counted to choose the draft vocabulary (only when
    ``draft_vocab_size`` is smaller than the target's)."""
    eval_prompts: int = 64
    """Held-out (eval split) prompts whose target completions measure the acceptance proxies."""
    eval_every: int = 25
    """Measure the proxies on them every this many optimizer steps (and after the last); 0: never."""
    init_from_target: bool = True
    """Warm-start ``lm_head`` (draft rows) and ``norm`` from the target's lm-head and final norm."""
    features: Literal["local", "sglang"] = "local"
    """Where the target's features come from (the score stage, the held-out proxies' batch and
    the pre-flight check). ``local``: a forward of ``[teacher] path``. ``sglang``: SGLang servers
    serving that same target in capture-only mode (``features_urls``; their flags are
    ``opdplug_sglang.features.server_flags`` of the head's SGLang layer ids), checked through
    ``/server_info`` before the target is sampled: aux capture on, the head's layer ids, radix
    cache off. The local copy still gives the head its embedding and lm-head warm start, the
    draft vocabulary's counts and, with ``data = "target"``, the samples."""
    features_urls: list[str] = field(default_factory=list)
    """The servers of ``features = "sglang"`` (e.g. ``["http://127.0.0.1:30000"]``); requests are
    spread over them."""
    features_batch_size: int = 8
    """Sequences per request to a feature server."""
    features_retry_budget_s: float = 60.0
    """Seconds a failing feature request (or the up-front check) is retried before the run stops."""

    def __post_init__(self) -> None:
        from .config import head_norms

        head_norms(self.variant, norm_before_fc=self.norm_before_fc)  # an unknown name is a one-line error
        if self.ttt_steps < 1 or not 0 < self.step_decay <= 1:
            raise ConfigError(f"eagle3 needs ttt_steps >= 1 and 0 < step_decay <= 1; got ttt_steps={self.ttt_steps}, "
                              f"step_decay={self.step_decay}")
        if self.temperature < 0:
            raise ConfigError(f"eagle3 needs temperature >= 0 (0: greedy), got {self.temperature}")
        if self.max_new_tokens < 1 or self.eval_every < 0 or self.eval_prompts < 0 or self.vocab_prompts < 1:
            raise ConfigError("eagle3 needs max_new_tokens >= 1, vocab_prompts >= 1, eval_prompts >= 0 and eval_every >= 0")
        self._check_features()

    def _check_features(self) -> None:
        if self.features not in ("local", "sglang"):
            raise ConfigError(f"drafter.options.features must be 'local' or 'sglang', got {self.features!r}")
        if self.features == "local":
            if self.features_urls:
                raise ConfigError("drafter.options.features_urls is given but features = 'local'; "
                                  "set features = 'sglang' to take the features from those servers")
            return
        if not self.features_urls:
            raise ConfigError("drafter.options.features = 'sglang' needs features_urls, e.g. [\"http://127.0.0.1:30000\"]")
        for url in self.features_urls:
            parts = urllib.parse.urlsplit(url if isinstance(url, str) else "")
            if not isinstance(url, str) or parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"drafter.options.features_urls: {url!r} is not a server URL; "
                                  f"write it like http://127.0.0.1:30000")
        if self.features_batch_size < 1 or self.features_retry_budget_s < 0:
            raise ConfigError("drafter.options.features_batch_size must be >= 1 and features_retry_budget_s >= 0")


def moved_keys_error(table: dict, where: str) -> None:
    """A one-line error for a key that now belongs to ``[run]`` (configs written for the old loop)."""
    moved = [key for key in table if key in MOVED_TO_RUN]
    if moved:
        key = moved[0]
        raise ConfigError(f"{where}.{key} is now [run] {MOVED_TO_RUN[key]}: the EAGLE-3 head trains in the core loop "
                          f"with the same [run] options as every run")
