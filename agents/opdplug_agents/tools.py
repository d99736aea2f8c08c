"""The tool-call text format shared by every environment, and a parser that never raises.

Format
------
One action is one JSON object on one line::

    {"tool": "<name>", "args": {"<arg>": <value>, ...}}

* ``tool`` is a string naming one of the environment's tools.
* ``args`` is a JSON object; it may be omitted when the tool takes no arguments.
* No other top-level keys, no duplicate keys, no line breaks, at most ``max_chars`` characters
  (leading and trailing whitespace is ignored).

Each tool has a small schema (``ToolSpec``): its argument names, the JSON type of each
(``"string"`` or ``"integer"``; ``true``/``false`` and ``3.0`` are not integers) and whether it
is required. Unknown, missing or wrongly-typed arguments are errors.

``format_call`` writes the canonical form, the one experts emit and a tokenizer sees most::

    {"tool": "move", "args": {"dir": "north"}}

Parsing
-------
``parse_call(text, tools)`` returns either a validated ``ToolCall`` or an error message string
such as ``"error : tool move needs arg dir"``. It never raises on model output, whatever the
input. Error messages are built only from fixed words and the names in the schema (never from
the model's text), so they stay inside the environment's vocabulary.

Tokens
------
The tiny word-level tokenizer of ``opdplug_local.tiny`` splits text like the ``Whitespace``
pre-tokenizer of the ``tokenizers`` library: runs of word characters, or runs of other
non-space characters. ``pretokenize`` mirrors it, and ``vocabulary(tools)`` lists every
pre-token that a canonical call or an error message of these tools can contain (for canonical
calls: whose string values begin and end with a word character), JSON punctuation runs such as
``{"``, ``":`` and ``"}}`` included.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

# JSON type name -> check on the decoded Python value. bool is a subclass of int in Python but
# not an integer in JSON, hence the exact type test.
JSON_TYPES: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: type(v) is int,
}
TYPE_PHRASES: dict[str, str] = {"string": "a string", "integer": "an integer"}
"""How an error message names each JSON type."""

DEFAULT_MAX_CHARS = 200
"""Longest action text the parser reads (longer ones are errors): keeps parsing cheap."""

MESSAGES: dict[str, str] = {
    "not_text": "error : action must be text",
    "empty": "error : empty action",
    "too_long": "error : action too long",
    "multi_line": "error : action must be one line",
    "malformed": "error : malformed json",
    "not_object": "error : action must be a json object",
    "duplicate": "error : duplicate key",
    "keys": "error : action keys must be tool and args",
    "tool_type": "error : tool must be a string",
    "unknown_tool": "error : unknown tool , use {tools}",
    "args_type": "error : args must be a json object",
    "missing_arg": "error : tool {tool} needs arg {arg}",
    "extra_arg": "error : tool {tool} got an unknown arg , it takes {args}",
    "arg_type": "error : arg {arg} of tool {tool} must be {type}",
}
"""Every error message ``parse_call`` can return; ``{...}`` fields are filled from the schema."""
NO_ARGS = "nothing"
"""What ``extra_arg`` says a tool without arguments takes."""

_PRETOKEN = re.compile(r"\w+|[^\w\s]+")
_WORD = re.compile(r"\w+")


def pretokenize(text: str) -> list[str]:
    """Split ``text`` the way the tiny word-level tokenizer does (``tokenizers``' ``Whitespace``:
    ``\\w+|[^\\w\\s]+``), e.g. ``'{"tool": "move"'`` -> ``['{"', 'tool', '":', '"', 'move', '"']``."""
    return _PRETOKEN.findall(text)


@dataclass(frozen=True)
class Arg:
    """One argument of a tool."""

    name: str
    """The key in ``args`` (a single word)."""
    type: str
    """Its JSON type: ``"string"`` or ``"integer"``."""
    required: bool = True
    """Whether a call must give it."""

    def __post_init__(self) -> None:
        if self.type not in JSON_TYPES:
            raise ValueError(f"arg {self.name!r}: type must be one of {sorted(JSON_TYPES)}, got {self.type!r}")
        if not _WORD.fullmatch(self.name):
            raise ValueError(f"arg name must be one word, got {self.name!r}")


@dataclass(frozen=True)
class ToolSpec:
    """The schema of one tool: its name and arguments."""

    name: str
    """The value of ``"tool"`` (a single word)."""
    args: tuple[Arg, ...] = ()
    """Its arguments, in canonical order."""
    doc: str = ""
    """One line for humans (not shown to the model)."""

    def __post_init__(self) -> None:
        if not _WORD.fullmatch(self.name):
            raise ValueError(f"tool name must be one word, got {self.name!r}")

    @property
    def arg_names(self) -> tuple[str, ...]:
        """Argument names in canonical order."""
        return tuple(a.name for a in self.args)


@dataclass(frozen=True)
class ToolCall:
    """A validated call: the tool's name and its arguments (already type-checked)."""

    tool: str
    """The tool's name."""
    args: dict[str, Any] = field(default_factory=dict, hash=False)
    """Argument name -> value (str or int)."""

    def text(self, tools: Mapping[str, ToolSpec] | None = None) -> str:
        """The canonical one-line form (argument order from ``tools`` if given)."""
        spec = tools.get(self.tool) if tools else None
        order = spec.arg_names if spec else tuple(self.args)
        return format_call(self.tool, **{k: self.args[k] for k in order if k in self.args})


def toolset(*specs: ToolSpec) -> dict[str, ToolSpec]:
    """A name -> spec mapping from specs (names must be unique)."""
    out: dict[str, ToolSpec] = {}
    for spec in specs:
        if spec.name in out:
            raise ValueError(f"tool {spec.name!r} is declared twice")
        out[spec.name] = spec
    return out


def format_call(tool: str, **args: Any) -> str:
    """The canonical text of a call: ``{"tool": "move", "args": {"dir": "north"}}``."""
    return json.dumps({"tool": tool, "args": args}, ensure_ascii=True)


class _Reject(Exception):
    """Internal: carries an error message out of JSON decoding hooks."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Reject(MESSAGES["duplicate"])
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    # json accepts NaN/Infinity by default; they are not JSON.
    raise _Reject(MESSAGES["malformed"])


def _decode(text: str, max_chars: int) -> Any:
    """The JSON value of one action line; raises ``_Reject`` with the message on any problem."""
    if not isinstance(text, str):
        raise _Reject(MESSAGES["not_text"])
    text = text.strip()
    if not text:
        raise _Reject(MESSAGES["empty"])
    if len(text) > max_chars:
        raise _Reject(MESSAGES["too_long"])
    if "\n" in text or "\r" in text:
        raise _Reject(MESSAGES["multi_line"])
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _Reject:
        raise
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; so is a huge int
        raise _Reject(MESSAGES["malformed"]) from None


def _check_args(spec: ToolSpec, args: Any) -> dict[str, Any]:
    """``args`` validated against ``spec``; raises ``_Reject`` with the message otherwise."""
    if not isinstance(args, dict):
        raise _Reject(MESSAGES["args_type"])
    known = {a.name: a for a in spec.args}
    if any(name not in known for name in args):
        takes = " ".join(spec.arg_names) or NO_ARGS
        raise _Reject(MESSAGES["extra_arg"].format(tool=spec.name, args=takes))
    for arg in spec.args:
        if arg.name not in args:
            if arg.required:
                raise _Reject(MESSAGES["missing_arg"].format(tool=spec.name, arg=arg.name))
        elif not JSON_TYPES[arg.type](args[arg.name]):
            raise _Reject(
                MESSAGES["arg_type"].format(arg=arg.name, tool=spec.name, type=TYPE_PHRASES[arg.type])
            )
    return {name: args[name] for name in spec.arg_names if name in args}


def parse_call(
    text: Any, tools: Mapping[str, ToolSpec], *, max_chars: int = DEFAULT_MAX_CHARS
) -> Union[ToolCall, str]:
    """Parse one action: a validated ``ToolCall``, or an error message string.

    :param text: the model's action (anything: non-strings are errors too).
    :param tools: the tools the environment offers, by name.
    :param max_chars: longer actions (after stripping) are rejected unread.
    :return: ``ToolCall`` on success; otherwise one of ``MESSAGES`` filled from the schema.
        Never raises.
    """
    try:
        value = _decode(text, max_chars)
        if not isinstance(value, dict):
            raise _Reject(MESSAGES["not_object"])
        if "tool" not in value or not set(value) <= {"tool", "args"}:
            raise _Reject(MESSAGES["keys"])
        name = value["tool"]
        if not isinstance(name, str):
            raise _Reject(MESSAGES["tool_type"])
        spec = tools.get(name)
        if spec is None:
            raise _Reject(MESSAGES["unknown_tool"].format(tools=" ".join(tools)))
        return ToolCall(name, _check_args(spec, value.get("args", {})))
    except _Reject as reject:
        return reject.message
    except Exception:  # noqa: BLE001 - a safety net: model output must never raise
        return MESSAGES["malformed"]


def is_error(result: Union[ToolCall, str]) -> bool:
    """True when ``parse_call`` returned an error message."""
    return isinstance(result, str)


def _placeholder(arg: Arg) -> Any:
    return "x" if arg.type == "string" else 1


def vocabulary(tools: Mapping[str, ToolSpec]) -> list[str]:
    """Every pre-token of the error messages of ``tools`` and of their canonical calls (JSON
    punctuation runs, tool and argument names), sorted. Argument *values* are not included:
    each environment lists the values it can emit."""
    words: set[str] = set(tools)
    fill = {"tools": "", "tool": "", "arg": "", "args": NO_ARGS, "type": ""}
    for template in MESSAGES.values():
        words.update(pretokenize(template.format(**fill)))
    for phrase in TYPE_PHRASES.values():
        words.update(pretokenize(phrase))
    for spec in tools.values():
        words.update(spec.arg_names)
        # The punctuation runs depend only on the types and order of the args present, not on
        # their values: render every subset of the optional args once.
        optional = [a.name for a in spec.args if not a.required]
        for k in range(len(optional) + 1):
            for left_out in itertools.combinations(optional, k):
                args = {a.name: _placeholder(a) for a in spec.args if a.name not in left_out}
                call = format_call(spec.name, **args)
                words.update(t for t in pretokenize(call) if not _WORD.fullmatch(t) or t in ("tool", "args"))
    return sorted(words)
