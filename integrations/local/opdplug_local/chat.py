"""Prompts as token ids: conversations rendered with the model's own chat template, or raw text.

The ids a model sees are the ids its template makes: the prompt is rendered with
``apply_chat_template(..., add_generation_prompt=True)`` to text and tokenized once without
adding special tokens (the template writes BOS where the model wants one), so a teacher with
the same tokenizer scores exactly the student's ids. A reference answer becomes the
completion ids the template would write after that prompt, end-of-turn token included.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from opdplug.errors import ConfigError

ROLES = ("system", "user", "assistant", "tool")
"""Roles a ``messages`` row may use (OpenAI style)."""
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "tool": "tool", "function_call": "assistant", "observation": "tool"}
"""ShareGPT ``from`` values and the OpenAI roles they mean."""


def normalise_messages(value: Any, where: str) -> list[dict]:
    """OpenAI ``[{"role", "content"}]`` or ShareGPT ``[{"from", "value"}]`` as the former.

    :param where: names the row in errors, e.g. ``"row 17 of data.jsonl"``.
    """
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{where}: messages must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise ConfigError(f"{where}: message {i} is not an object")
        if "role" in m and m.get("role") is not None:
            role, content = m["role"], m.get("content")
            if role not in ROLES:
                raise ConfigError(f"{where}: message {i} has unknown role {role!r}; allowed: {', '.join(ROLES)}")
        elif "from" in m:
            role, content = SHAREGPT_ROLES.get(m["from"]), m.get("value")
            if role is None:
                raise ConfigError(f"{where}: message {i} has unknown ShareGPT 'from' {m['from']!r}; "
                                  f"allowed: {', '.join(SHAREGPT_ROLES)}")
        else:
            raise ConfigError(f"{where}: message {i} has neither 'role' nor 'from'")
        if not isinstance(content, str):
            raise ConfigError(f"{where}: message {i} ({role}) has no text content")
        out.append({"role": role, "content": content})
    return out


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def require_template(tokenizer, why: str) -> None:
    if not has_chat_template(tokenizer):
        raise ConfigError(
            f"{why}, but the tokenizer has no chat template; save one with the model "
            f"(tokenizer.chat_template) or set task.options.template = \"raw\" with a prompt column"
        )


def render_text(tokenizer, messages: Sequence[dict], *, add_generation_prompt: bool,
                template_kwargs: Optional[dict] = None, tools: Optional[list] = None) -> str:
    """The template's text for ``messages`` (one-line ConfigError if the template fails)."""
    try:
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
            tools=tools, **(template_kwargs or {}),
        )
    except Exception as exc:  # a jinja error inside the user's template
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"the chat template cannot render this conversation: {first}") from None


def encode(tokenizer, text: str) -> list[int]:
    """``text`` as ids, no special tokens added (the template wrote those it wants)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def chat_prompt_ids(tokenizer, messages: Sequence[dict], template_kwargs: Optional[dict] = None) -> list[int]:
    """The generation prompt's ids: the conversation, then the assistant header."""
    return encode(tokenizer, render_text(tokenizer, messages, add_generation_prompt=True, template_kwargs=template_kwargs))


def chat_reference_ids(tokenizer, messages: Sequence[dict], answer: str, prompt_ids: Sequence[int],
                       end_ids: Sequence[int], template_kwargs: Optional[dict] = None) -> list[int]:
    """The ids the template writes for an assistant turn ``answer`` after ``messages``, up to
    and including its end-of-turn token.

    Rendered as the whole conversation and cut after the prompt's ids, so whatever the template
    puts around an assistant turn is kept; a template whose full rendering does not start with
    the generation prompt's ids (some re-render history) falls back to ``answer`` tokenized
    plus the first stop id.
    """
    full = encode(tokenizer, render_text(tokenizer, [*messages, {"role": "assistant", "content": answer}],
                                         add_generation_prompt=False, template_kwargs=template_kwargs))
    P = len(prompt_ids)
    if full[:P] == list(prompt_ids):
        rest = full[P:]
        for i, token in enumerate(rest):
            if token in end_ids:
                return rest[: i + 1]
    return encode(tokenizer, answer) + [end_ids[0]]


def raw_prompt_ids(tokenizer, text: str) -> list[int]:
    """Raw text as the tokenizer encodes it by default (BOS added if the tokenizer adds one)."""
    return list(tokenizer(text)["input_ids"])
