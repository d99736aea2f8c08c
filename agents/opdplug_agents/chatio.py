"""The chat codec: episodes in the student's own chat template, tokenized turn by turn.

Layout (ChatML shown; any template works the same way)::

    <|im_start|>system\\n# Tools ... <|im_end|>\\n<|im_start|>user\\n{obs_0}<|im_end|>\\n<|im_start|>assistant\\n
    {action_0 exactly as sampled}<|im_end|>
    \\n<|im_start|>tool\\n{obs_1}<|im_end|>\\n<|im_start|>assistant\\n
    {action_1}<|im_end|> ...

* The first observation is the template's render of ``[system?, user obs_0]`` with the tools
  (JSON schemas, ``toolcalls.tool_schemas``) and the generation prompt.
* An action is the model's ids up to and including the tokenizer's EOS, which must be the
  template's end of an assistant turn; they are never re-tokenized.
* Each later observation is the text the template writes between the end of an assistant turn
  and the next generation prompt, found once per environment by rendering with placeholders,
  then filled with the observation and tokenized alone.
* ``drift(episode, env)`` re-renders a whole episode and compares; a template that rewrites
  earlier turns (dropping think blocks, trimming) is named in the message.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from .toolcalls import canonical_of, render_canonical, tool_schemas


@dataclass(frozen=True)
class CodecOptions:
    """How a chat model talks to environments (``[task.options]`` of the ``agent`` task)."""

    tool_format: str = "hermes"
    """A registered tool-call format (built in: hermes, llama3_json, json)."""
    system_prompt: str = ""
    """A system message put first in every episode ("" for none)."""
    observation_role: str = "tool"
    """The role of the environment's answers to tool calls: ``tool`` (or ``user``). Games
    without tools always answer as ``user``."""


_USER, _ASSISTANT, _OBS = "\x00U", "\x00A", "\x00O"
"""Placeholders rendered into the template to find where each turn's text goes."""


def template_name(tokenizer: Any) -> str:
    """How messages name a tokenizer's chat template: its path and a short hash of the source."""
    digest = hashlib.sha256(str(tokenizer.chat_template).encode()).hexdigest()[:8]
    return f"{getattr(tokenizer, 'name_or_path', '') or 'tokenizer'} (chat template {digest})"


class ChatCodec:
    """The codec of ``opdplug_agents.dialogue`` for tokenizers with a chat template."""

    def __init__(self, tokenizer: Any, fmt: Any, options: Optional[CodecOptions] = None) -> None:
        self.tokenizer = tokenizer
        self.format = fmt
        self.options = options or CodecOptions()
        self.eos_id = tokenizer.eos_token_id
        self.eos_text = tokenizer.convert_ids_to_tokens(self.eos_id)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.bos_ids: tuple[int, ...] = ()  # a template that wants BOS writes it itself
        self._pieces: dict[tuple, tuple[str, str]] = {}

    @property
    def name(self) -> str:
        """The template, as messages name it (``template_name``)."""
        return template_name(self.tokenizer)

    # -- rendering ----------------------------------------------------------------------------
    def tools(self, env: Any) -> Optional[list[dict]]:
        """The environment's tools as JSON schemas, or None for a game without tools."""
        tools = getattr(env, "tools", None)
        return tool_schemas(tools) if tools else None

    def _head(self) -> list[dict]:
        return [{"role": "system", "content": self.options.system_prompt}] if self.options.system_prompt else []

    def render(self, messages: list[dict], tools: Optional[list[dict]], generation_prompt: bool) -> str:
        """The template's text of ``messages``."""
        return self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def encode(self, text: str) -> list[int]:
        """``text`` as ids, special tokens parsed, nothing added."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def role(self, tools: Optional[list[dict]]) -> str:
        """The role of an observation after an action."""
        return self.options.observation_role if tools else "user"

    def _split(self, first: bool, tools: Optional[list[dict]]) -> tuple[str, str]:
        """The text before and after an observation (cached per kind of turn and tool set)."""
        key = (first, repr(tools))
        if key not in self._pieces:
            if first:
                text = self.render([*self._head(), {"role": "user", "content": _OBS}], tools, True)
            else:
                base = [*self._head(), {"role": "user", "content": _USER}, {"role": "assistant", "content": _ASSISTANT}]
                before = self.render(base, tools, False)
                after = self.render([*base, {"role": self.role(tools), "content": _OBS}], tools, True)
                if not after.startswith(before):
                    raise ValueError(f"{self.name} rewrites earlier turns when an observation is added; it cannot be extended turn by turn")
                closing = before[before.index(_ASSISTANT) + len(_ASSISTANT):]
                if not closing.startswith(self.eos_text):
                    raise ValueError(f"{self.name} does not end an assistant turn with the EOS token {self.eos_text!r}")
                text = closing[len(self.eos_text):] + after[len(before):]
            if text.count(_OBS) != 1:
                raise ValueError(f"{self.name} does not write an observation's content as given")
            pre, post = text.split(_OBS)
            self._pieces[key] = (pre, post)
        return self._pieces[key]

    # -- the codec ----------------------------------------------------------------------------
    def observation_ids(self, env: Any, text: str, first: bool) -> tuple[int, ...]:
        """The ids between the previous action's EOS (or the start) and the next action."""
        pre, post = self._split(first, self.tools(env))
        return tuple(self.encode(pre + text + post))

    def expert_action_ids(self, env: Any, text: str) -> list[int]:
        """An expert's canonical call written in the tool-call format (plain text for a game
        without tools), then EOS."""
        if self.tools(env):
            text = render_canonical(self.format, text)
        return [*self.encode(text), self.eos_id]

    def action_text(self, env: Any, ids: Sequence[int]) -> str:
        """The model's reply (ids before EOS) as the environment's action: the parsed call in
        canonical form, or the stripped reply for a game without tools."""
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        return canonical_of(self.format, text) if self.tools(env) else text.strip()

    def cue_ids(self, tools: Optional[list[dict]]) -> list[int]:
        """The ids of the generation prompt that ends every observation."""
        base = [*self._head(), {"role": "user", "content": _USER}]
        plain = self.render(base, tools, False)
        return self.encode(self.render(base, tools, True)[len(plain):])

    def split_actions(self, completion_ids: Sequence[int], env: Any = None) -> list[list[int]]:
        """Action spans (EOS excluded): an action runs to EOS, the observation after it to the
        next generation prompt; without one (action ids only), spans split on EOS."""
        ids = [int(i) for i in completion_ids]
        cue = self.cue_ids(self.tools(env)) if env is not None else []
        out, pos = [], 0
        while pos < len(ids):
            end = ids.index(self.eos_id, pos) if self.eos_id in ids[pos:] else len(ids)
            out.append(ids[pos:end])
            pos = end + 1
            if cue and pos < len(ids):
                at = _find(ids, cue, pos)
                if at < 0:
                    break
                pos = at + len(cue)
        return out

    # -- checks -------------------------------------------------------------------------------
    def messages(self, episode: Any, tools: Optional[list[dict]]) -> list[dict]:
        """The episode as chat messages (assistant turns: the decoded action ids)."""
        out = [*self._head()]
        for t, turn in enumerate(episode.turns):
            out.append({"role": "user" if t == 0 else self.role(tools), "content": turn.observation})
            ids = [i for i in turn.action_ids if i != self.eos_id]
            out.append({"role": "assistant", "content": self.tokenizer.decode(ids, skip_special_tokens=False)})
        return out

    def drift(self, episode: Any, env: Any) -> Optional[str]:
        """None when the episode's incremental ids equal a full re-render of its messages, else
        one line naming the template and the first token that differs."""
        tools = self.tools(env)
        messages = self.messages(episode, tools)
        full = self.encode(self.render(messages, tools, False))
        mine = list(episode.token_ids)
        for i, (a, b) in enumerate(zip(mine, full)):
            if a != b:
                return (f"{self.name} drifts at token {i} of {len(mine)}: incremental "
                        f"{self.tokenizer.decode(mine[i:i + 6])!r}, re-rendered {self.tokenizer.decode(full[i:i + 6])!r}")
        if len(full) < len(mine):
            return f"{self.name} drifts: the re-render has {len(full)} tokens, the episode {len(mine)}"
        return None


def _find(ids: list[int], sub: list[int], start: int) -> int:
    for i in range(start, len(ids) - len(sub) + 1):
        if ids[i:i + len(sub)] == sub:
            return i
    return -1


__all__ = ["ChatCodec", "CodecOptions", "template_name"]
