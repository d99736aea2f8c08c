"""How a chat model writes a tool call, by name: the ``tool_call_formats`` registry kind.

An environment's actions are canonical calls (``{"tool": "move", "args": {"dir": "north"}}``,
``opdplug_agents.tools``). A chat model writes them in its own family's format; a format turns
one into the other both ways:

``hermes``        Hermes / Qwen: ``<tool_call>\\n{"name": "move", "arguments": {...}}\\n</tool_call>``
``llama3_json``   Llama-3.1 JSON tool calling: ``{"name": "move", "parameters": {...}}``
``json``          plain JSON: ``{"name": "move", "arguments": {...}}``

A format is a frozen dataclass with ``render(tool, args) -> text`` (what the expert's call
looks like in the model's format) and ``parse(text) -> (tool, args) | None`` (None: no call
found; the environment then sees the raw text and answers with its own error). A third-party
plugin registers its own through ``opd_register_tool_call_formats``, exactly like these.
``tool_schemas`` writes an environment's tools as the JSON schemas a chat template's ``tools``
argument takes.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

from .tools import ToolSpec

Call = tuple[str, dict]
"""A parsed call: the tool's name and its arguments."""


def _json_call(text: str, args_key: str) -> Optional[Call]:
    """``{"name": ..., args_key: {...}}`` in ``text`` (surrounding whitespace ignored), or None."""
    try:
        obj = json.loads(text.strip())
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(args_key, {})
    return (obj["name"], args) if isinstance(args, dict) else None


@dataclass(frozen=True)
class HermesFormat:
    """Hermes / Qwen-style ``<tool_call>`` blocks (the first block is the call)."""

    name: ClassVar[str] = "hermes"
    """The name it is registered under."""
    _BLOCK: ClassVar[re.Pattern] = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)

    def render(self, tool: str, args: Mapping[str, Any]) -> str:
        return "<tool_call>\n" + json.dumps({"name": tool, "arguments": dict(args)}) + "\n</tool_call>"

    def parse(self, text: str) -> Optional[Call]:
        match = self._BLOCK.search(text)
        return _json_call(match.group(1), "arguments") if match else None


@dataclass(frozen=True)
class Llama3JsonFormat:
    """Llama-3.1-style JSON tool calling: the whole reply is ``{"name", "parameters"}``."""

    name: ClassVar[str] = "llama3_json"
    """The name it is registered under."""

    def render(self, tool: str, args: Mapping[str, Any]) -> str:
        return json.dumps({"name": tool, "parameters": dict(args)})

    def parse(self, text: str) -> Optional[Call]:
        return _json_call(text, "parameters")


@dataclass(frozen=True)
class JsonFormat:
    """Plain JSON: the whole reply is ``{"name", "arguments"}``."""

    name: ClassVar[str] = "json"
    """The name it is registered under."""

    def render(self, tool: str, args: Mapping[str, Any]) -> str:
        return json.dumps({"name": tool, "arguments": dict(args)})

    def parse(self, text: str) -> Optional[Call]:
        return _json_call(text, "arguments")


BUILTIN = (HermesFormat, Llama3JsonFormat, JsonFormat)
"""The formats this plugin registers (by their ``name``)."""


def tool_schemas(tools: Mapping[str, ToolSpec]) -> list[dict]:
    """The tools as OpenAI-style function schemas, for a chat template's ``tools`` argument."""
    out = []
    for spec in tools.values():
        properties = {a.name: {"type": a.type} for a in spec.args}
        required = [a.name for a in spec.args if a.required]
        out.append({"type": "function", "function": {
            "name": spec.name, "description": spec.doc or spec.name,
            "parameters": {"type": "object", "properties": properties, "required": required},
        }})
    return out


def canonical_of(fmt: Any, text: str) -> str:
    """A model's reply as the environment's canonical call text, or the reply unchanged when
    ``fmt`` finds no call in it (the environment then rejects it with its own error)."""
    call = fmt.parse(text)
    if call is None:
        return text
    return json.dumps({"tool": call[0], "args": call[1]}, ensure_ascii=True)


def render_canonical(fmt: Any, text: str) -> str:
    """A canonical call (an expert's action) in ``fmt``; text that is no canonical call unchanged."""
    try:
        obj = json.loads(text)
    except ValueError:
        return text
    if not isinstance(obj, dict) or not isinstance(obj.get("tool"), str):
        return text
    return fmt.render(obj["tool"], obj.get("args") or {})
