"""Turns to token ids and back: one codec per tokenizer, chosen by what the tokenizer is.

A codec is what ``run_episodes``, the ``agent`` task and the evaluator use to put an episode
into ids. Every codec keeps the ids of each action exactly as the actor wrote them and
tokenizes each environment turn once, appending it (an episode is never re-rendered):

``observation_ids(env, text, first)``  the ids the environment writes before the next action
                                       (``first``: the whole prompt after ``bos_ids``)
``expert_action_ids(env, text)``       an expert's canonical action in the model's format, end
                                       of turn last
``action_text(env, ids)``              a model's action ids (end of turn excluded) as the
                                       environment's action text
``split_actions(completion_ids)``      the action spans of the ids after a prompt

Two codecs:

* ``WordCodec`` (``opdplug_agents.textio``): the built-in tiny word-level models, whose
  vocabulary is the environments' words. Only for them: an environment without a closed
  vocabulary (any gymnasium game) needs a real tokenizer.
* ``ChatCodec`` (``opdplug_agents.chatio``): any tokenizer with a chat template. Turns are
  rendered with the template (system, user, assistant and tool messages; tools as JSON
  schemas through its ``tools`` argument), tool calls written in a format chosen by name
  (``opdplug_agents.toolcalls``). A subword tokenizer has no unknown words.

``make_codec(tokenizer)`` picks the chat codec when the tokenizer has a chat template, else
the word codec; ``as_codec`` passes a codec through, so every function that takes a tokenizer
also takes a configured codec (``AgentTask.codec``).
"""
from __future__ import annotations

from typing import Any, Optional, Protocol, Sequence

from .chatio import ChatCodec, CodecOptions
from .registries import registry_or_installed
from .textio import WordCodec

TOOL_CALL_FORMATS = "tool_call_formats"
"""The registry kind of tool-call formats (hookspec ``opd_register_tool_call_formats``)."""


class Codec(Protocol):
    """What ``run_episodes`` needs from a text layer (see the module docstring)."""

    tokenizer: Any
    eos_id: int
    pad_id: int
    bos_ids: tuple[int, ...]

    def observation_ids(self, env: Any, text: str, first: bool) -> tuple[int, ...]: ...

    def expert_action_ids(self, env: Any, text: str) -> list[int]: ...

    def action_text(self, env: Any, ids: Sequence[int]) -> str: ...

    def split_actions(self, completion_ids: Sequence[int]) -> list[list[int]]: ...


def env_name(env: Any) -> str:
    """An environment's name for messages: its ``name`` attribute, else its class name."""
    return getattr(env, "name", "") or type(env).__name__


def make_codec(tokenizer: Any, options: Optional[CodecOptions] = None, registry: Any = None) -> Codec:
    """The chat codec when ``tokenizer`` has a chat template, else the word codec.

    :raises ConfigError: ``options.tool_format`` names no registered format.
    """
    if getattr(tokenizer, "chat_template", None):
        opts = options or CodecOptions()
        fmt = registry_or_installed(registry).build(TOOL_CALL_FORMATS, opts.tool_format, {}, "task.options.tool_format")
        return ChatCodec(tokenizer, fmt, opts)
    return WordCodec(tokenizer)


def as_codec(tokenizer_or_codec: Any) -> Codec:
    """A codec as is; a tokenizer through ``make_codec`` with default options."""
    if hasattr(tokenizer_or_codec, "observation_ids"):
        return tokenizer_or_codec
    return make_codec(tokenizer_or_codec)


__all__ = ["TOOL_CALL_FORMATS", "ChatCodec", "Codec", "CodecOptions", "WordCodec", "as_codec", "env_name", "make_codec"]
