"""Conversation records in one form: ShareGPT and OpenAI chat JSONL, normalised. Pure Python.

Two layouts are common in the wild and both are read:

* OpenAI: ``{"messages": [{"role": "user", "content": "..."}, ...]}`` with roles ``system``,
  ``user``, ``assistant``, ``tool``;
* ShareGPT: ``{"conversations": [{"from": "human", "value": "..."}, ...]}`` with ``from`` in
  ``system``, ``human``, ``gpt`` (and the aliases of ``SHAREGPT_ROLES``).

Both become the normalised record every other piece (dataset task, generator, ``opdplug drafter
regenerate``) reads and writes::

    {"id": "c0-000017", "messages": [{"role": "user", "content": "..."}, ...], ...other keys}

``id`` is the record's ``id`` (or ``conversation_id``) as text, else ``line-N`` (its line number in
the file): resumable tools key their progress on it. Keys other than the conversation's are kept.

Every problem is a ``ConfigError`` of one line naming the file, the line and the fix, so a CLI
prints it and exits non-zero instead of a traceback. Nothing here imports torch or a tokenizer.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from opdplug.errors import ConfigError

ROLES = ("system", "user", "assistant", "tool")
"""Roles of the normalised form (OpenAI's)."""
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                  "bing": "assistant", "bard": "assistant", "assistant": "assistant", "tool": "tool",
                  "function_call": "assistant", "observation": "tool", "function": "tool"}
"""ShareGPT ``from`` values and the role each means (the names ShareGPT dumps and LLaMA-Factory use)."""
CONVERSATION_KEYS = ("messages", "conversations")
"""Keys a record's turns are looked for under, in this order, when no column is named."""

FORMAT_FIX = ('write one JSON object per line: {"messages": [{"role": "user", "content": "..."}, ...]} (OpenAI) '
              'or {"conversations": [{"from": "human", "value": "..."}, ...]} (ShareGPT)')


def normalise_turns(turns: Any, where: str) -> list[dict]:
    """The turns of one conversation as ``[{"role", "content"}]`` (OpenAI or ShareGPT in).

    :param where: names the conversation in errors, e.g. ``"data.jsonl:17"``.
    """
    if not isinstance(turns, (list, tuple)):
        raise ConfigError(f"{where}: the conversation is a {type(turns).__name__}, not a list of turns; {FORMAT_FIX}")
    if not turns:
        raise ConfigError(f"{where}: the conversation is empty; give it at least one user turn or drop the line")
    out = []
    for i, m in enumerate(turns):
        if not isinstance(m, dict):
            raise ConfigError(f"{where}: turn {i} is a {type(m).__name__}, not an object; {FORMAT_FIX}")
        if m.get("role") is not None:
            role, content = m["role"], m.get("content")
            if role not in ROLES:
                raise ConfigError(f"{where}: turn {i} has unknown role {role!r}; use one of {', '.join(ROLES)}")
            text_key = "content"
        elif m.get("from") is not None:
            role, content = SHAREGPT_ROLES.get(m["from"]), m.get("value")
            if role is None:
                raise ConfigError(f"{where}: turn {i} has unknown role (ShareGPT 'from') {m['from']!r}; "
                                  f"use one of {', '.join(SHAREGPT_ROLES)}")
            text_key = "value"
        else:
            raise ConfigError(f"{where}: turn {i} has neither 'role' nor 'from' (keys: {', '.join(map(str, m)) or 'none'}); "
                              f"give every turn a role and its text")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones, in order
            if all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ConfigError(f"{where}: turn {i} ({role}) has no text in {text_key!r}; give it a string "
                              f"(images and other non-text parts are not supported)")
        out.append({"role": role, "content": content})
    return out


def conversation_key(record: dict, column: str = "") -> Optional[str]:
    """The key holding the turns: ``column`` if given and present, else the first of
    ``CONVERSATION_KEYS`` the record has; None when it has none."""
    if column:
        return column if column in record else None
    return next((k for k in CONVERSATION_KEYS if k in record), None)


def normalise_record(record: Any, where: str, *, line: int = 0, column: str = "") -> dict:
    """One JSON value from a file as a normalised record (see the module docstring).

    :param where: names the record in errors (``"data.jsonl:17"``).
    :param line: its line number, for the fallback id ``line-N`` (0: no fallback, id required).
    :param column: the key of the turns (empty: ``messages``, else ``conversations``).
    """
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: a JSON {type(record).__name__}, not an object; {FORMAT_FIX}")
    key = conversation_key(record, column)
    if key is None:
        wanted = repr(column) if column else "'messages' or 'conversations'"
        raise ConfigError(f"{where}: no {wanted} key (keys: {', '.join(map(str, record)) or 'none'}); {FORMAT_FIX}")
    messages = normalise_turns(record[key], where)
    ident = record.get("id", record.get("conversation_id"))
    if ident is None or ident == "":
        if not line:
            raise ConfigError(f"{where}: the record has no 'id'; give every conversation one")
        ident = f"line-{line}"
    out = {"id": str(ident), "messages": messages}
    out.update({k: v for k, v in record.items() if k not in (key, "id", "conversation_id", "messages")})
    return out


def parse_line(text: str | bytes, path: str, line: int, *, column: str = "") -> Optional[dict]:
    """One line of a conversation JSONL file as a normalised record (None for a blank line)."""
    if not text.strip():
        return None
    where = f"{path}:{line}"
    try:
        value = json.loads(text)
    except ValueError as exc:
        msg = getattr(exc, "msg", str(exc))
        raise ConfigError(f"{where}: not valid JSON ({msg}); the file must be JSONL: {FORMAT_FIX}") from None
    return normalise_record(value, where, line=line, column=column)


def read_conversations(path: str | os.PathLike, *, column: str = "") -> Iterator[dict]:
    """The normalised records of a JSONL file, streamed line by line (constant memory).

    Raises a one-line ``ConfigError`` naming ``path:line`` at the first bad line, and for a
    missing or empty file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such file; point it at a conversation JSONL file")
    seen = 0
    with open(p, "rb") as f:
        for number, raw in enumerate(f, start=1):
            record = parse_line(raw, str(path), number, column=column)
            if record is not None:
                seen += 1
                yield record
    if not seen:
        raise ConfigError(f"{path}: no conversations in the file; {FORMAT_FIX}")


def check_file(path: str | os.PathLike, *, column: str = "", unique_ids: bool = True) -> int:
    """Validate every line of a conversation JSONL file (first problem raised); the count.
    ``unique_ids``: two records with one id are an error too (tools that resume by id need it)."""
    ids: dict[str, int] = {}
    n = 0
    for n, record in enumerate(read_conversations(path, column=column), start=1):
        ids[record["id"]] = ids.get(record["id"], 0) + 1
    dup = next((i for i, c in ids.items() if c > 1), None) if unique_ids else None
    if dup is not None:
        raise ConfigError(f"{path}: conversation id {dup!r} appears {ids[dup]} times; ids must be unique (or left out)")
    return n


def assistant_turns(messages: Sequence[dict]) -> list[int]:
    """Indices of the assistant turns of a normalised conversation."""
    return [i for i, m in enumerate(messages) if m["role"] == "assistant"]


def dumps(record: dict) -> str:
    """A normalised record as one JSONL line (newline included)."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_conversations(path: str | os.PathLike, records: Sequence[dict]) -> Path:
    """Write ``records`` as JSONL atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(dumps(record))
    os.replace(tmp, path)
    return path
