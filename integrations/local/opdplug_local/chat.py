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

from .conversations import ROLES, SHAREGPT_ROLES, normalise_turns  # noqa: F401 (re-exported)


def normalise_messages(value: Any, where: str) -> list[dict]:
    """OpenAI ``[{"role", "content"}]`` or ShareGPT ``[{"from", "value"}]`` as the former
    (``conversations.normalise_turns``).

    :param where: names the row in errors, e.g. ``"row 17 of data.jsonl"``.
    """
    return normalise_turns(value, where)


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


def chat_conversation_ids(tokenizer, messages: Sequence[dict], end_ids: Sequence[int],
                          template_kwargs: Optional[dict] = None) -> tuple[list[int], list[int]]:
    """A whole conversation as the template renders it, and a loss mask over its ids that is 1
    exactly on what the model writes in each assistant turn: the turn's content and its
    end-of-turn token, never the assistant header, the generation prompt's fixed text (such as
    an empty think block), or any system / user / tool text.

    Each assistant turn ``i`` is located the way it is generated: the ids of
    ``messages[:i]`` with the generation prompt are a prefix of the whole conversation's ids,
    and the turn runs from there to its first stop id. A template that renders earlier turns
    differently once later ones follow (e.g. one that strips past reasoning) has no such
    prefix: that is a one-line ``ConfigError``, since a mask there would train on text the model
    never sees at serving time.
    """
    ids = encode(tokenizer, render_text(tokenizer, messages, add_generation_prompt=False, template_kwargs=template_kwargs))
    mask = [0] * len(ids)
    stops = set(int(i) for i in end_ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = encode(tokenizer, render_text(tokenizer, messages[:i], add_generation_prompt=True, template_kwargs=template_kwargs))
        if ids[: len(head)] != head:
            raise ConfigError(
                f"the chat template renders turn {i} differently once later turns follow (its generation prompt is "
                f"not a prefix of the whole conversation), so assistant turns cannot be masked exactly; "
                f"train on the last assistant turn only (task.options.loss_turns = \"last\")")
        end = next((j for j in range(len(head), len(ids)) if ids[j] in stops), None)
        if end is None:
            raise ConfigError(f"the chat template writes no stop token after assistant turn {i}; "
                              f"save the tokenizer with its end-of-turn token as eos_token")
        mask[len(head): end + 1] = [1] * (end + 1 - len(head))
    return ids, mask
