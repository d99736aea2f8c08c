"""The built-in ``dataset`` task: prompts from a user's file, in the student's chat template.

A config names the file and its columns::

    [task]
    name = "dataset"
    [task.options]
    path = "data/train.jsonl"      # JSONL, JSON, Parquet, CSV or a save_to_disk directory
    prompt_column = "prompt"       # or messages_column = "messages" (OpenAI or ShareGPT turns)
    answer_column = "answer"       # the reference answer verifiers compare with
    eval_fraction = 0.05           # or eval_path = "data/eval.jsonl"
    verifier = "final_number"      # outcome metric (opdplug eval) and reward ([credit] verifier)

Training draws rows from a stream (``take``): an epoch-by-epoch permutation seeded by the run
seed, whose position the loop keeps in every checkpoint, so a resumed run sees exactly the
prompts the uninterrupted one would have. Other columns reach verifiers in ``Prompt.meta``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence

import numpy as np

from opdplug.context import derive_seed
from opdplug.errors import ConfigError
from opdplug.types import Prompt

from . import chat, conversations
from .dataset import Split, load_rows, message_roles, require_columns, split_indices
from .models import stop_token_ids


@dataclass(frozen=True)
class DatasetOptions:
    """``[task.options]`` of the ``dataset`` task."""

    path: str = ""
    """The training data: a .jsonl/.json/.parquet/.csv file or a ``save_to_disk`` directory."""
    split: str = ""
    """Which split of a ``save_to_disk`` DatasetDict (needed when it holds several)."""
    eval_path: str = ""
    """Held-out data in a file of its own; empty: hold out ``eval_fraction`` of ``path``."""
    eval_split: str = ""
    """Which split of ``eval_path`` when it is a DatasetDict directory."""
    eval_fraction: float = 0.0
    """Fraction of ``path``'s rows held out for evaluation (fixed by ``split_seed``)."""
    split_seed: int = 0
    """Seed of the held-out selection (independent of the run seed: every run holds out the same rows)."""
    prompt_column: str = ""
    """A text column: the user turn (or the whole prompt with ``template = "raw"``). Empty: "prompt" if present."""
    messages_column: str = ""
    """A conversation column (OpenAI role/content or ShareGPT from/value). Empty: "messages",
    else "conversations" (ShareGPT's name), if present."""
    loss_turns: Literal["last", "all"] = "last"
    """Conversations: ``last`` trains on the final assistant turn after the rest as the prompt;
    ``all`` trains on every assistant turn of a multi-turn conversation at once (the prompt runs
    up to the first assistant turn, the reference is the rest of the conversation with a loss
    mask that is 1 on assistant text and end-of-turn tokens only)."""
    answer_column: str = ""
    """The reference answer (verifiers compare with it). Empty: "answer" if present."""
    completion_column: str = ""
    """The reference completion text for supervised training (e.g. a worked solution); empty: the answer."""
    system_prompt: str = ""
    """A system turn put before every conversation that has none."""
    template: Literal["auto", "chat", "raw"] = "auto"
    """``chat``: the student's chat template (generation prompt added); ``raw``: the text as is;
    ``auto``: chat when the tokenizer has a template."""
    template_kwargs: dict = field(default_factory=dict)
    """Keyword arguments for the template, e.g. ``{enable_thinking = false}``."""
    privileged_template: str = "A correct answer to the next question: {answer}"
    """The system-turn text a privileged-context teacher sees ({answer} and any column by name)."""
    max_prompt_tokens: int = 1024
    """Prompts longer than this are dropped or left-truncated (``overlong``) and counted. With
    ``loss_turns = "all"`` the limit is on the whole conversation, ``max_prompt_tokens +
    max_new_tokens``, and truncation cuts its end instead."""
    overlong: Literal["drop", "left_truncate"] = "drop"
    """What happens to a prompt over ``max_prompt_tokens``."""
    max_new_tokens: int = 256
    """The completion budget."""
    verifier: str = ""
    """A registered verifier for outcome metrics and rewards (``opdplug plugins`` lists them)."""
    verifier_options: dict = field(default_factory=dict)
    """Options of the verifier, e.g. ``{pattern = "..."}`` for regex."""
    shuffle: bool = True
    """Visit training rows in a new seeded order each epoch (false: file order)."""


class DatasetTask:
    """Prompts from local files (see the module docstring)."""

    options_class = DatasetOptions

    def __init__(self, tokenizer, options: Optional[DatasetOptions] = None, registry=None):
        self.options = o = options or DatasetOptions()
        if not o.path:
            raise ConfigError("task.options.path is empty; point it at your prompts (JSONL, JSON, Parquet, CSV or a save_to_disk directory)")
        if o.max_new_tokens < 1 or o.max_prompt_tokens < 1:
            raise ConfigError("task.options.max_new_tokens and max_prompt_tokens must be at least 1")
        self.tokenizer = tokenizer
        self.end_ids = stop_token_ids(tokenizer)
        if not self.end_ids:
            raise ConfigError("the tokenizer declares no EOS token; save the model's tokenizer with its eos_token")
        for path in (o.path, o.eval_path):
            if path and _is_conversation_jsonl(path, o):  # path:line errors, before the Arrow reader's own
                conversations.check_file(path, column=o.messages_column, unique_ids=False)
        self.train_rows = load_rows(o.path, key="task.options.path", split=o.split)
        self.columns = self._columns(self.train_rows, o.path)
        self.use_chat = o.template == "chat" or (o.template == "auto" and chat.has_chat_template(tokenizer))
        if self.columns["messages"]:
            chat.require_template(tokenizer, f"task.options.messages_column = {self.columns['messages']!r} needs the chat template")
            self._check_roles(self.train_rows, o.path)
        elif o.template == "chat":
            chat.require_template(tokenizer, "task.options.template = \"chat\"")
        if o.eval_path:
            self.eval_rows = load_rows(o.eval_path, key="task.options.eval_path", split=o.eval_split)
            self._columns(self.eval_rows, o.eval_path)
            if self.columns["messages"]:
                self._check_roles(self.eval_rows, o.eval_path)
            self.train = Split(np.arange(len(self.train_rows), dtype=np.int64), o.shuffle)
            self.eval = Split(np.arange(len(self.eval_rows), dtype=np.int64), shuffle=False)
        else:
            self.eval_rows = self.train_rows
            train, held_out = split_indices(len(self.train_rows), o.eval_fraction, o.split_seed)
            self.train, self.eval = Split(train, o.shuffle), Split(held_out, shuffle=False)
        self.verifier = None
        if o.verifier:
            if registry is None:
                raise ConfigError("task.options.verifier needs the plugin registry (build the task with opdplug's build_task)")
            self.verifier = registry.build("verifiers", o.verifier, o.verifier_options, "task.options.verifier")
            if not hasattr(self.verifier, "check"):
                raise ConfigError(f"task.options.verifier = {o.verifier!r} cannot check text answers (it has no check method)")
        self.dropped = self.truncated = 0

    # -- columns -----------------------------------------------------------------------------
    def _columns(self, ds, path: str) -> dict[str, str]:
        o, have = self.options, set(ds.column_names)
        require_columns(ds, {"prompt_column": o.prompt_column, "messages_column": o.messages_column,
                             "answer_column": o.answer_column, "completion_column": o.completion_column}, path)
        messages = o.messages_column or next((c for c in conversations.CONVERSATION_KEYS if not o.prompt_column and c in have), "")
        prompt = o.prompt_column or ("prompt" if not messages and "prompt" in have else "")
        if not messages and not prompt:
            raise ConfigError(f"{path!r} has no 'prompt' or 'messages' column; name yours with task.options.prompt_column "
                              f"or messages_column (its columns: {', '.join(ds.column_names)})")
        answer = o.answer_column or ("answer" if "answer" in have else "")
        return {"messages": messages, "prompt": prompt, "answer": answer, "completion": o.completion_column}

    def _check_roles(self, ds, path: str) -> None:
        allowed = set(chat.ROLES) | set(chat.SHAREGPT_ROLES)
        unknown = sorted(str(r) for r in message_roles(ds, self.columns["messages"]) - allowed)
        if unknown:
            raise ConfigError(f"{path!r}: column {self.columns['messages']!r} uses unknown role {unknown[0]!r}; "
                              f"allowed: {', '.join(chat.ROLES)} (or ShareGPT's {', '.join(chat.SHAREGPT_ROLES)})")

    # -- rows to prompts ---------------------------------------------------------------------
    def make_prompt(self, row: dict, where: str) -> Optional[Prompt]:
        """The ``Prompt`` of one row, or None when it is over the length limit and dropped."""
        o, cols = self.options, self.columns
        _check_switches(row, o.template_kwargs, where)
        answer = row.get(cols["answer"]) if cols["answer"] else None
        reference_text = row.get(cols["completion"]) if cols["completion"] else answer
        if cols["messages"] and o.loss_turns == "all":
            return self._conversation_prompt(row, where, answer)
        if cols["messages"]:
            messages = chat.normalise_messages(row[cols["messages"]], where)
            if messages[-1]["role"] == "assistant":  # a finished conversation: its last turn is the reference
                reference_text = messages[-1]["content"] if reference_text is None else reference_text
                messages = messages[:-1]
            if not messages:
                raise ConfigError(f"{where}: the conversation has only an assistant turn; nothing to prompt with")
        else:
            text = row[cols["prompt"]]
            if not isinstance(text, str):
                raise ConfigError(f"{where}: column {cols['prompt']!r} is not text")
            messages = [{"role": "user", "content": text}]
        if o.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": o.system_prompt}, *messages]
        prompt_ids = self._render(messages)
        if len(prompt_ids) > o.max_prompt_tokens:
            if o.overlong == "drop":
                self.dropped += 1
                return None
            self.truncated += 1
            prompt_ids = prompt_ids[-o.max_prompt_tokens:]
        reference_ids: Sequence[int] = ()
        if reference_text is not None:
            reference_ids = self._reference(messages, str(reference_text), prompt_ids)
        privileged = ()
        if answer is not None or reference_text is not None:
            context = o.privileged_template.format_map(_Row({**row, "answer": answer if answer is not None else reference_text}))
            privileged = tuple(self._privileged(messages, context))
        meta = {k: v for k, v in row.items() if k not in (cols["messages"], cols["prompt"])}
        if answer is not None:
            meta["answer"] = str(answer)
        if self.use_chat:  # a teacher with its own chat template renders the conversation again
            meta["chat_messages"] = messages
        return Prompt(prompt_ids=tuple(prompt_ids), reference_ids=tuple(reference_ids),
                      privileged_prompt_ids=privileged, meta=meta)

    def _conversation_prompt(self, row: dict, where: str, answer: Any) -> Optional[Prompt]:
        """``loss_turns = "all"``: the conversation up to its first assistant turn as the prompt,
        the rest as the reference, masked to the assistant turns (``chat.chat_conversation_ids``)."""
        o, cols = self.options, self.columns
        messages = chat.normalise_messages(row[cols["messages"]], where)
        if o.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": o.system_prompt}, *messages]
        turns = conversations.assistant_turns(messages)
        head = messages[: turns[0]] if turns else messages
        if not head:
            raise ConfigError(f"{where}: the conversation starts with an assistant turn; nothing to prompt with")
        reference_ids: Sequence[int] = ()
        reference_mask: Sequence[int] = ()
        if turns:
            ids, mask = chat.chat_conversation_ids(self.tokenizer, messages, self.end_ids, o.template_kwargs)
            first, last = mask.index(1), len(mask) - 1 - mask[::-1].index(1)
            prompt_ids, reference_ids, reference_mask = ids[:first], ids[first: last + 1], mask[first: last + 1]
        else:  # a held-out conversation waiting for its first answer
            prompt_ids = self._render(head)
        limit = o.max_prompt_tokens + o.max_new_tokens
        if len(prompt_ids) > o.max_prompt_tokens or len(prompt_ids) + len(reference_ids) > limit:
            if o.overlong == "drop" or len(prompt_ids) > o.max_prompt_tokens:
                self.dropped += 1
                return None
            self.truncated += 1  # cut the conversation's end: its start is what later turns build on
            keep = limit - len(prompt_ids)
            reference_ids, reference_mask = reference_ids[:keep], reference_mask[:keep]
        meta = {k: v for k, v in row.items() if k != cols["messages"]}
        if answer is not None:
            meta["answer"] = str(answer)
        meta["chat_messages"] = head
        if turns:
            meta["assistant_turns"] = len(turns)
        privileged = ()
        reference_text = answer if answer is not None else (messages[turns[-1]]["content"] if turns else None)
        if reference_text is not None:
            context = o.privileged_template.format_map(_Row({**row, "answer": reference_text}))
            privileged = tuple(self._privileged(head, context))
        return Prompt(prompt_ids=tuple(prompt_ids), reference_ids=tuple(reference_ids),
                      reference_mask=tuple(reference_mask), privileged_prompt_ids=privileged, meta=meta)

    def _render(self, messages: list[dict]) -> list[int]:
        if self.use_chat:
            return chat.chat_prompt_ids(self.tokenizer, messages, self.options.template_kwargs)
        return chat.raw_prompt_ids(self.tokenizer, "\n\n".join(m["content"] for m in messages))

    def _reference(self, messages: list[dict], text: str, prompt_ids: Sequence[int]) -> list[int]:
        if self.use_chat:
            return chat.chat_reference_ids(self.tokenizer, messages, text, prompt_ids, self.end_ids, self.options.template_kwargs)
        return chat.encode(self.tokenizer, text) + [self.end_ids[0]]

    def _privileged(self, messages: list[dict], context: str) -> list[int]:
        if messages[0]["role"] == "system":
            messages = [{"role": "system", "content": messages[0]["content"] + "\n\n" + context}, *messages[1:]]
        else:
            messages = [{"role": "system", "content": context}, *messages]
        return self._render(messages)

    # -- the Task protocol -------------------------------------------------------------------
    def take(self, position: int, n: int, *, seed: int) -> tuple[list[Prompt], int]:
        """``n`` training prompts from stream ``position`` on, and the position after them
        (dropped over-long rows are skipped, and counted)."""
        out: list[Prompt] = []
        skipped_in_a_row = 0
        while len(out) < n:
            index = self.train.at(position, seed)
            position += 1
            prompt = self.make_prompt(self.train_rows[index], f"row {index} of {self.options.path!r}")
            if prompt is None:
                skipped_in_a_row += 1
                if skipped_in_a_row >= len(self.train):
                    raise ConfigError(f"every prompt of {self.options.path!r} is over task.options.max_prompt_tokens = "
                                      f"{self.options.max_prompt_tokens}; raise it or set overlong = \"left_truncate\"")
                continue
            skipped_in_a_row = 0
            out.append(prompt)
        return out, position

    def prompts(self, n: int, *, seed: int, split: str = "train", length: Optional[int] = None) -> list[Prompt]:
        """``n`` prompts: training ones from a seed-chosen stream position, or the first ``n``
        held-out ones (all of them if fewer) in file order."""
        if split == "train":
            return self.take(derive_seed(seed, "dataset-prompts") % max(len(self.train), 1), n, seed=seed)[0]
        if split != "eval":
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        # Without a held-out split (eval_fraction = 0, no eval_path) evaluation reads training rows.
        split_rows, rows = (self.eval, self.eval_rows) if len(self.eval) else (Split(self.train.indices, False), self.train_rows)
        out = []
        for position in range(len(split_rows)):
            index = split_rows.at(position, seed)
            prompt = self.make_prompt(rows[index], f"row {index} of the held-out data")
            if prompt is not None:
                out.append(prompt)
            if len(out) == n:
                break
        return out

    def eval_size(self) -> int:
        return len(self.eval)

    def max_new_tokens(self, length: int) -> int:
        return self.options.max_new_tokens

    def completion_text(self, completion_ids: Sequence[int]) -> str:
        """The completion's text before its first stop id, special tokens left out."""
        ids = [int(i) for i in completion_ids]
        for i, token in enumerate(ids):
            if token in self.end_ids:
                ids = ids[:i]
                break
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def verify(self, prompt: Prompt, completion_ids: Sequence[int]) -> float:
        """The verifier's score of the completion (0.0 with no verifier); never raises."""
        if self.verifier is None:
            return 0.0
        try:
            return float(self.verifier.check(self.completion_text(completion_ids), prompt.meta))
        except Exception:  # noqa: BLE001 - a verifier must never take a run down
            return 0.0

    def metrics(self) -> dict:
        """Cumulative counts of prompts dropped or truncated for length (component lifecycle)."""
        return {"data/dropped_prompts": float(self.dropped), "data/truncated_prompts": float(self.truncated)}


def _check_switches(row: dict, template_kwargs: dict, where: str) -> None:
    """A row ``opdplug drafter regenerate`` wrote records the template switches its assistant
    turns were generated with: training with other ones would teach text the target does not
    write with these (SpecForge issue 296), so that is a one-line error."""
    record = row.get("regenerated")
    recorded = record.get("template_kwargs") if isinstance(record, dict) else None
    if not isinstance(recorded, str):
        return
    try:
        used = json.loads(recorded)
    except ValueError:
        return
    if used != dict(template_kwargs):
        raise ConfigError(f"{where}: its assistant turns were regenerated with template_kwargs {used} but "
                          f"task.options.template_kwargs = {dict(template_kwargs)}; use the switches the target is served "
                          f"with in both (opdplug drafter regenerate --template-kwargs)")


def _is_conversation_jsonl(path: str, o: DatasetOptions) -> bool:
    """A .jsonl file whose rows are conversations: a messages column is named, or (no prompt
    column named) its first record has one of ``conversations.CONVERSATION_KEYS``."""
    if not path.lower().endswith(".jsonl") or not os.path.isfile(path) or o.prompt_column:
        return False
    if o.messages_column:
        return True
    with open(path, "rb") as f:
        first = next((line for line in f if line.strip()), b"")
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and conversations.conversation_key(record) is not None


class _Row(dict):
    """``str.format_map`` over a row: a missing key stays as written instead of raising."""

    def __missing__(self, key: str) -> Any:
        return "{" + key + "}"
