"""``opdplug drafter regenerate``: the target writes the assistant turns of a conversation file
again, so that a drafter trains on the distribution it will be asked to predict when served.

Which turns: with ``turns = "all"`` (the default, as SpecForge's regeneration does) every
assistant turn is regenerated in order, each given the turns before it, where the earlier
assistant turns are the ones the target has just written (the conversation the target would
really have had; the user turns stay as they are). With ``turns = "last"`` only the final
assistant turn is regenerated, given the original history. A conversation that ends with a user
turn gets a new assistant turn appended either way, so a file of prompts without answers works
too.

Rendering: each prompt is the conversation so far in the target tokenizer's own chat template
with the generation prompt and ``template_kwargs`` (e.g. ``{"enable_thinking": false}``): pass
the same switches the dataset task and the server use, or the drafter learns text the target
never writes (SpecForge issue 296). The new turn is the target's tokens up to its first stop id,
decoded without special tokens.

Output: JSONL in the normalised form (``opdplug_local.conversations``), the input record with
its ``messages`` replaced, plus ``"regenerated": {"turns": [...], "truncated": n}`` (turn indices
written by the target; how many hit ``max_new_tokens``; the template switches as JSON text,
which the dataset task checks against its own ``template_kwargs``). Each finished conversation is one
``write`` of one whole line to a file opened for appending, so a killed run leaves only whole
lines; re-running skips every id already in the output (a torn last line, should the file
system leave one, is cut off first). Conversations go through the target ``batch_size`` at a
time, turn by turn; each turn's sampling seed derives from (seed, id, turn), so a resumed or
re-batched run draws the same tokens from a local target.

Targets: a local model directory (``LocalGenerator``) or SGLang servers serving the target
(``SGLangGenerator``; the chat template comes from a local copy of the target's tokenizer).
"""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

from opdplug.context import derive_seed
from opdplug.errors import ConfigError

from opdplug_local import chat, conversations


@dataclass(frozen=True)
class RegenerateOptions:
    """How ``regenerate`` asks the target for new turns."""

    turns: Literal["all", "last"] = "all"
    """``all``: every assistant turn in order, each after the regenerated ones; ``last``: the final one."""
    batch_size: int = 8
    """Conversations sent to the target together."""
    max_new_tokens: int = 256
    """Budget of one regenerated turn (a turn that hits it is kept, and counted as truncated)."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy). Use the serving temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass (1: off)."""
    seed: int = 0
    """Seeds every turn's draws, with the conversation id and the turn."""
    template_kwargs: dict = field(default_factory=dict)
    """Chat-template switches, e.g. ``{"enable_thinking": False}``: the ones used at serving time."""
    limit: int = 0
    """Regenerate at most this many conversations in this call (0: all not yet done)."""

    def __post_init__(self) -> None:
        if self.turns not in ("all", "last"):
            raise ConfigError(f"--turns must be 'all' or 'last', got {self.turns!r}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("--batch-size and --max-new-tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.limit < 0:
            raise ConfigError("--temperature must be >= 0, --top-p in (0, 1] and --limit >= 0")


@dataclass(frozen=True)
class Generated:
    """One new turn: the target's token ids (its stop id included when it stopped)."""

    ids: list
    truncated: bool


class LocalGenerator:
    """The target as a local Hugging Face model directory, sampled with its KV cache."""

    def __init__(self, model_dir: str, *, dtype: str = "float32"):
        from opdplug_local import models as local

        self.name = str(model_dir)
        self.model = local.load_model(str(model_dir), "--target", dtype).eval()
        self.tokenizer = local.load_tokenizer(str(model_dir))
        self.stop_ids = local.stop_token_ids(self.tokenizer, self.model)

    def generate(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], options: RegenerateOptions) -> list[Generated]:
        from opdplug_local import sampling

        out = sampling.sample(self.model, [list(p) for p in prompts], max_new_tokens=options.max_new_tokens,
                              temperature=options.temperature, top_p=options.top_p, eos_id=self.stop_ids,
                              pad_id=self.tokenizer.pad_token_id, row_seeds=list(seeds))
        rows = []
        for b in range(len(prompts)):
            keep = out.completion_mask_B_L[b].bool()
            rows.append(Generated(ids=out.input_ids_B_L[b][keep].tolist(), truncated=bool(out.truncated_B[b])))
        return rows


class SGLangGenerator:
    """The target served by SGLang (``/generate`` with ``input_ids``); ``tokenizer_dir`` holds a
    local copy of the served model's tokenizer (its chat template renders the prompts)."""

    def __init__(self, urls: Sequence[str], tokenizer_dir: str, *, retry_budget_s: float = 60.0,
                 max_concurrency: int = 8, timeout_s: float = 600.0):
        from opdplug_local import models as local
        from opdplug_sglang.client import RetryPolicy, SGLangClient
        from opdplug_sglang.target import SGLangTarget

        self.name = ",".join(urls)
        self.tokenizer = local.load_tokenizer(str(tokenizer_dir))
        self.stop_ids = local.stop_token_ids(self.tokenizer)
        self.client = SGLangClient(list(urls), RetryPolicy(timeout_s=timeout_s, budget_s=retry_budget_s),
                                   max_concurrency=max_concurrency)
        SGLangTarget(self.client).check_vocabulary(self.tokenizer)  # a wrong tokenizer is a one-line error now

    def generate(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], options: RegenerateOptions) -> list[Generated]:
        from opdplug_sglang.client import MalformedResponse
        from opdplug_sglang.protocol import answers_of

        params = [{"max_new_tokens": options.max_new_tokens, "temperature": options.temperature, "top_p": options.top_p,
                   "stop_token_ids": list(self.stop_ids), "no_stop_trim": True, "skip_special_tokens": False,
                   "sampling_seed": int(seed % (2**31))} for seed in seeds]
        payload = {"input_ids": [[int(i) for i in p] for p in prompts], "sampling_params": params, "stream": False}
        rows: list = [None] * len(prompts)

        def validate(response, _index: int) -> None:
            for b, answer in enumerate(answers_of(response, len(prompts))):
                ids = answer.get("output_ids") if isinstance(answer, dict) else None
                if not isinstance(ids, list) or len(ids) > options.max_new_tokens:
                    raise MalformedResponse(f"answer {b} has no valid output_ids")
                stopped = bool(ids) and ids[-1] in self.stop_ids
                rows[b] = Generated(ids=[int(i) for i in ids], truncated=not stopped)

        self.client.post_many("/generate", [payload], validate=validate)
        return rows


# ----------------------------------------------------------------------------- the output file
def done_ids(path: Path, template_kwargs: Optional[dict] = None) -> set:
    """Ids already in the output; a last line without its newline (torn by a crash) is cut off.
    With ``template_kwargs``, a record written with other switches is a one-line error: one file
    must hold one rendering."""
    if not path.exists():
        return set()
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            f.truncate(cut)
            data = data[:cut]
    ids = set()
    for number, line in enumerate(data.splitlines(), start=1):
        record = conversations.parse_line(line, str(path), number)
        if record is None:
            continue
        ids.add(record["id"])
        recorded = (record.get("regenerated") or {}).get("template_kwargs")
        if template_kwargs is not None and isinstance(recorded, str) and json.loads(recorded) != dict(template_kwargs):
            raise ConfigError(f"{path}:{number}: written with --template-kwargs {recorded} and this run asks for "
                              f"{json.dumps(template_kwargs, sort_keys=True)}; resume with the same switches or write to a new file")
    return ids


def append_line(fd: int, record: dict) -> None:
    """One record as one ``write`` of one whole line (the file is opened with O_APPEND)."""
    data = conversations.dumps(record).encode("utf-8")
    written = os.write(fd, data)
    while written < len(data):  # a short write (rare on a local file system): finish the line
        written += os.write(fd, data[written:])


# ----------------------------------------------------------------------------- regeneration
def targets_of(messages: Sequence[dict], turns: str) -> list[int]:
    """The indices of the turns the target writes: every assistant turn or the last one, plus a
    new one at the end when the conversation ends with a user turn."""
    indices = conversations.assistant_turns(messages)
    if turns == "last":
        indices = indices[-1:]
    if messages[-1]["role"] == "user":
        indices = ([] if turns == "last" else indices) + [len(messages)]
    return indices


def regenerate_batch(records: Sequence[dict], generator, options: RegenerateOptions) -> list[dict]:
    """New records for ``records``: their target turns written by ``generator``, turn by turn."""
    tok = generator.tokenizer
    stops = set(generator.stop_ids)
    messages = [[dict(m) for m in r["messages"]] for r in records]
    plans = [targets_of(m, options.turns) for m in messages]
    truncated = [0] * len(records)
    for round_ in range(max((len(p) for p in plans), default=0)):
        active = [b for b, p in enumerate(plans) if len(p) > round_]
        prompts, seeds = [], []
        for b in active:
            at = plans[b][round_]
            prompts.append(chat.chat_prompt_ids(tok, messages[b][:at], options.template_kwargs))
            seeds.append(derive_seed(options.seed, "regenerate", records[b]["id"], at))
        for b, new in zip(active, generator.generate(prompts, seeds, options)):
            ids = new.ids
            cut = next((j for j, t in enumerate(ids) if t in stops), len(ids))
            text = tok.decode(ids[:cut], skip_special_tokens=True)
            at = plans[b][round_]
            turn = {"role": "assistant", "content": text}
            if at == len(messages[b]):
                messages[b].append(turn)
            else:
                messages[b][at] = turn
            truncated[b] += int(new.truncated)
    # The switches are recorded (as JSON text: Arrow cannot hold an empty struct) so that the
    # dataset task can refuse to train with other ones (SpecForge issue 296).
    switches = json.dumps(options.template_kwargs, sort_keys=True)
    return [{**r, "messages": m, "regenerated": {"turns": p, "truncated": t, "template_kwargs": switches}}
            for r, m, p, t in zip(records, messages, plans, truncated)]


def regenerate(input_path: str | os.PathLike, output_path: str | os.PathLike, generator, options: RegenerateOptions,
               *, progress: bool = True, on_batch: Optional[Callable[[int], None]] = None) -> dict:
    """Regenerate the conversations of ``input_path`` into ``output_path`` (see the module
    docstring); returns a summary. ``on_batch(n_written)`` is called after each batch is written."""
    from tqdm.auto import tqdm

    input_path, output_path = Path(input_path), Path(output_path)
    if input_path.resolve() == output_path.resolve():
        raise ConfigError(f"the output {str(output_path)!r} is the input file; write the regenerated turns elsewhere")
    total = conversations.check_file(input_path)  # every line valid and ids unique before any target call
    done = done_ids(output_path, options.template_kwargs)
    # Streamed: only one batch of conversations is in memory at a time, whatever the file's size.
    pending = (r for r in conversations.read_conversations(input_path) if r["id"] not in done)
    skipped = sum(1 for r in conversations.read_conversations(input_path) if r["id"] in done)
    n_todo = total - skipped if not options.limit else min(options.limit, total - skipped)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    written = truncated = turns = 0
    fd = os.open(output_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        with tqdm(total=n_todo, disable=not progress, desc="regenerate", unit="conv") as bar:
            while written < n_todo:
                batch = list(itertools.islice(pending, min(options.batch_size, n_todo - written)))
                if not batch:
                    break
                for record in regenerate_batch(batch, generator, options):
                    append_line(fd, record)
                    written += 1
                    turns += len(record["regenerated"]["turns"])
                    truncated += record["regenerated"]["truncated"]
                    bar.update(1)
                if on_batch is not None:
                    on_batch(written)
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"input": str(input_path), "output": str(output_path), "target": generator.name, "written": written,
            "skipped_done": skipped, "turns": turns, "truncated_turns": truncated, "turns_mode": options.turns,
            "temperature": options.temperature, "template_kwargs": dict(options.template_kwargs)}


def parse_template_kwargs(text: str) -> dict:
    """``--template-kwargs '{"enable_thinking": false}'`` as a dict (one-line error otherwise)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--template-kwargs must be a JSON object, e.g. '{{\"enable_thinking\": false}}' ({exc})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--template-kwargs must be a JSON object, got {text!r}")
    return value
