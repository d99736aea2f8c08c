"""Multi-turn conversations, generated offline and deterministically: the conversation data a
drafter for a chat target is trained and measured on, without a download.

Every conversation is one JSON line in the normalised form of ``conversations`` (or ShareGPT's,
with ``fmt="sharegpt"``)::

    {"id": "chat-0-000017", "topic": "units", "messages": [
        {"role": "user", "content": "How many minutes are in 3 hours?"},
        {"role": "assistant", "content": "There are 180 minutes in 3 hours."},
        {"role": "user", "content": "And how many seconds is that?"},
        {"role": "assistant", "content": "That is 10800 seconds."}]}

Topics (``TOPICS``): arithmetic, unit conversion, capitals, spelling, sorting lists, shopping.
Each conversation has two or three user/assistant exchanges, the later ones following up on
the earlier answers, and sometimes a system turn. Every assistant answer is correct and is
written in one of a few styles chosen at random (terse, full sentence, with a lead-in): the
original answers are a mixture, so a target trained on them has its own preferences among the
styles, and answers the target regenerates are closer to what it will write when served than
the originals are (what ``opdplug drafter regenerate`` is for).

Train and eval are disjoint by conversation: a conversation is in the eval pool iff a hash of
its first user turn says so (1 in ``EVAL_POOL_MOD``), whatever the seed or the counts asked for,
so no eval conversation opens the way any training one does.

    python -m opdplug_local.chatgen --out data/conversations --train 4000 --eval 200 --seed 0
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

from .conversations import dumps

EVAL_POOL_MOD = 10
"""A conversation whose first user turn hashes to 0 modulo this is in the eval pool."""
TOPICS = ("arithmetic", "units", "capitals", "spelling", "sorting", "shopping")

SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a friendly assistant. Keep answers short.",
                  "Answer clearly and correctly.")
"""System turns a conversation may start with (about 3 in 10 do: ``make_conversation``)."""

CAPITALS = (
    ("France", "Paris", "French"), ("Spain", "Madrid", "Spanish"), ("Italy", "Rome", "Italian"),
    ("Germany", "Berlin", "German"), ("Japan", "Tokyo", "Japanese"), ("Egypt", "Cairo", "Arabic"),
    ("Peru", "Lima", "Spanish"), ("Greece", "Athens", "Greek"), ("Poland", "Warsaw", "Polish"),
    ("Kenya", "Nairobi", "Swahili"), ("Norway", "Oslo", "Norwegian"), ("Portugal", "Lisbon", "Portuguese"),
    ("Austria", "Vienna", "German"), ("Chile", "Santiago", "Spanish"), ("Sweden", "Stockholm", "Swedish"),
    ("Brazil", "Brasilia", "Portuguese"), ("Ireland", "Dublin", "English"), ("Finland", "Helsinki", "Finnish"),
)
"""(country, capital, main language)."""

WORDS = ("cat", "dog", "tree", "house", "river", "apple", "green", "water", "light", "stone", "bread",
         "cloud", "train", "music", "paper", "plant", "chair", "smile", "ocean", "tiger")

UNITS = (("hours", "minutes", 60, "seconds", 60), ("days", "hours", 24, "minutes", 60),
         ("weeks", "days", 7, "hours", 24), ("kilometers", "meters", 1000, "centimeters", 100),
         ("meters", "centimeters", 100, "millimeters", 10), ("kilograms", "grams", 1000, "milligrams", 1000))
"""(big unit, smaller unit, factor, smallest unit, factor)."""

DISHES = (("pancakes", ("flour", "eggs", "milk", "butter")), ("an omelette", ("eggs", "butter", "cheese", "salt")),
          ("a salad", ("lettuce", "tomatoes", "cucumber", "oil")), ("soup", ("onions", "carrots", "potatoes", "stock")),
          ("a sandwich", ("bread", "cheese", "ham", "butter")), ("a fruit salad", ("apples", "bananas", "grapes", "oranges")))
"""(dish, its four ingredients)."""

STYLES = ("terse", "sentence", "lead")
"""How an assistant answer is worded: the bare fact, a full sentence, or a sentence after a lead-in."""
LEADS = ("Sure! ", "Of course. ", "Good question. ", "Let me help. ")


Say = Callable[[str, str], str]
"""``say(terse, sentence)``: an answer, worded in a style the conversation's writer draws."""


def _say(rng: random.Random, terse: str, sentence: str, styles: Sequence[str] = STYLES) -> str:
    """The answer in a style drawn from ``styles``."""
    style = rng.choice(tuple(styles))
    if style == "terse":
        return terse
    if style == "sentence":
        return sentence
    return rng.choice(LEADS) + sentence


def _arithmetic(rng: random.Random, say: Say) -> list[tuple[str, str]]:
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    op = rng.choice(("plus", "times", "minus"))
    if op == "times":
        b = rng.randint(2, 9)
    if op == "minus" and b > a:
        a, b = b, a
    r = a + b if op == "plus" else a * b if op == "times" else a - b
    q1 = rng.choice((f"What is {a} {op} {b}?", f"Can you compute {a} {op} {b}?", f"Please work out {a} {op} {b}."))
    turns = [(q1, say(f"{r}", f"{a} {op} {b} is {r}."))]
    k = rng.randint(2, 5)
    turns.append((rng.choice((f"And if I multiply that by {k}?", f"What is that times {k}?")),
                  say(f"{r * k}", f"{r} times {k} is {r * k}.")))
    if rng.random() < 0.5:
        c = rng.randint(1, 30)
        turns.append((f"Now add {c} to it.", say(f"{r * k + c}", f"{r * k} plus {c} is {r * k + c}.")))
    return turns


def _units(rng: random.Random, say: Say) -> list[tuple[str, str]]:
    big, small, f1, smallest, f2 = rng.choice(UNITS)
    n = rng.randint(2, 9)
    q1 = rng.choice((f"How many {small} are in {n} {big}?", f"Convert {n} {big} to {small}."))
    turns = [(q1, say(f"{n * f1} {small}", f"There are {n * f1} {small} in {n} {big}."))]
    turns.append((rng.choice((f"And how many {smallest} is that?", f"What is that in {smallest}?")),
                  say(f"{n * f1 * f2} {smallest}", f"That is {n * f1 * f2} {smallest}.")))
    return turns


def _capitals(rng: random.Random, say: Say) -> list[tuple[str, str]]:
    country, capital, language = rng.choice(CAPITALS)
    q1 = rng.choice((f"What is the capital of {country}?", f"Which city is the capital of {country}?"))
    turns = [(q1, say(capital, f"The capital of {country} is {capital}."))]
    turns.append((rng.choice(("What language do people speak there?", f"What language is spoken in {capital}?")),
                  say(language, f"People in {country} mostly speak {language}.")))
    if rng.random() < 0.4:
        other = rng.choice([c for c in CAPITALS if c[0] != country])
        turns.append((f"And the capital of {other[0]}?", say(other[1], f"The capital of {other[0]} is {other[1]}.")))
    return turns


def _spelling(rng: random.Random, say: Say) -> list[tuple[str, str]]:
    word = rng.choice(WORDS)
    back = word[::-1]
    q1 = rng.choice((f"How do you spell {word} backwards?", f"Write the word {word} backwards."))
    turns = [(q1, say(back, f"Backwards, {word} is {back}."))]
    turns.append((rng.choice((f"How many letters does {word} have?", "How many letters is that?")),
                  say(f"{len(word)}", f"The word {word} has {len(word)} letters.")))
    if rng.random() < 0.5:
        turns.append(("What is its first letter?", say(word[0], f"The first letter of {word} is {word[0]}.")))
    return turns


def _sorting(rng: random.Random, say: Say) -> list[tuple[str, str]]:
    values = rng.sample(range(1, 100), rng.randint(3, 5))
    listed = ", ".join(map(str, values))
    ordered = ", ".join(map(str, sorted(values)))
    q1 = rng.choice((f"Sort these numbers: {listed}.", f"Put {listed} in increasing order."))
    turns = [(q1, say(ordered, f"In increasing order: {ordered}."))]
    which = rng.choice(("largest", "smallest"))
    value = max(values) if which == "largest" else min(values)
    turns.append((f"Which one is the {which}?", say(f"{value}", f"The {which} is {value}.")))
    if rng.random() < 0.5:
        turns.append(("What is their sum?", say(f"{sum(values)}", f"Their sum is {sum(values)}.")))
    return turns


def _shopping(rng: random.Random, say: Say) -> list[tuple[str, str]]:
    dish, items = rng.choice(DISHES)
    have = rng.sample(items, 2)
    need = [i for i in items if i not in have]
    q1 = rng.choice((f"I want to make {dish}. I have {have[0]} and {have[1]}. What else do I need?",
                     f"For {dish} I already have {have[0]} and {have[1]}. What is missing?"))
    turns = [(q1, say(f"{need[0]} and {need[1]}", f"You still need {need[0]} and {need[1]}."))]
    turns.append(("How many ingredients is that in total?",
                  say(f"{len(items)}", f"That makes {len(items)} ingredients in total.")))
    return turns


MAKERS: dict[str, Callable[[random.Random, Say], list[tuple[str, str]]]] = {
    "arithmetic": _arithmetic, "units": _units, "capitals": _capitals, "spelling": _spelling,
    "sorting": _sorting, "shopping": _shopping,
}


def make_conversation(rng: random.Random, topic: str, styles: Sequence[str] = STYLES) -> dict:
    """One conversation of ``topic`` (normalised form, no id yet), its answers worded in ``styles``."""
    messages = []
    say = lambda terse, sentence: _say(rng, terse, sentence, styles)  # noqa: E731
    if rng.random() < 0.3:  # some conversations carry a system turn, as real chat logs do
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for user, assistant in MAKERS[topic](rng, say):
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"topic": topic, "messages": messages}


def split_of(conversation: dict) -> str:
    """``"eval"`` or ``"train"``: fixed by a hash of the first user turn (see the module docstring)."""
    first = next(m["content"] for m in conversation["messages"] if m["role"] == "user")
    digest = int(hashlib.sha256(first.encode("utf-8")).hexdigest()[:8], 16)
    return "eval" if digest % EVAL_POOL_MOD == 0 else "train"


def _check_styles(styles: Iterable[str]) -> tuple[str, ...]:
    styles = tuple(styles)
    unknown = [s for s in styles if s not in STYLES]
    if unknown or not styles:
        raise ValueError(f"unknown style {unknown[0]!r}; choose among {', '.join(STYLES)}" if unknown else "no styles")
    return styles


def _check_topics(topics: Iterable[str]) -> tuple[str, ...]:
    topics = tuple(topics)
    unknown = [t for t in topics if t not in MAKERS]
    if unknown or not topics:
        raise ValueError(f"unknown topic {unknown[0]!r}; choose among {', '.join(TOPICS)}" if unknown else "no topics")
    return topics


def iter_conversations(seed: int = 0, topics: Iterable[str] = TOPICS, split: Optional[str] = None,
                       styles: Iterable[str] = STYLES) -> Iterator[dict]:
    """Conversations forever, topics in turn, deterministic in ``seed``; ``split`` keeps one pool;
    answers worded in ``styles`` (a subset of ``STYLES``: another "writer" of the same questions).
    Ids are ``chat-SEED-N`` (N counts the stream before the split filter, so an id names one
    conversation whatever split or count is asked for)."""
    topics, styles = _check_topics(topics), _check_styles(styles)
    rng = random.Random(seed)
    for n in range(sys.maxsize):
        conversation = make_conversation(rng, topics[n % len(topics)], styles)
        if split is None or split_of(conversation) == split:
            yield {"id": f"chat-{seed}-{n:06d}", **conversation}


def generate(n: int, seed: int = 0, topics: Iterable[str] = TOPICS, split: Optional[str] = None,
             styles: Iterable[str] = STYLES) -> list[dict]:
    """The first ``n`` conversations of ``iter_conversations`` (a prefix of any larger ``n``)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    stream = iter_conversations(seed, topics, split, styles)
    return [next(stream) for _ in range(n)]


def to_sharegpt(record: dict) -> dict:
    """A normalised record in ShareGPT's layout (``conversations`` of ``from``/``value``)."""
    names = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}
    out = {k: v for k, v in record.items() if k != "messages"}
    out["conversations"] = [{"from": names[m["role"]], "value": m["content"]} for m in record["messages"]]
    return out


def _write(path: Path, records: Sequence[dict], fmt: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(dumps(to_sharegpt(record) if fmt == "sharegpt" else record))
    os.replace(tmp, path)


def write_splits(out: str | os.PathLike, n_train: int, n_eval: int, seed: int = 0, topics: Iterable[str] = TOPICS,
                 fmt: str = "openai", styles: Iterable[str] = STYLES, prefix: str = "") -> dict[str, Path]:
    """Write ``out/PREFIXtrain.jsonl`` and ``out/PREFIXeval.jsonl`` (disjoint by conversation,
    ``split_of``) in ``fmt`` (``openai``: ``messages``; ``sharegpt``: ``conversations``), answers
    worded in ``styles``; their paths."""
    if fmt not in ("openai", "sharegpt"):
        raise ValueError(f"fmt must be 'openai' or 'sharegpt', got {fmt!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / f"{prefix}train.jsonl", "eval": out / f"{prefix}eval.jsonl"}
    _write(paths["train"], generate(n_train, seed, topics, split="train", styles=styles), fmt)
    _write(paths["eval"], generate(n_eval, seed, topics, split="eval", styles=styles), fmt)
    return paths


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Texts of ``n`` conversations (all turns), e.g. to train a tokenizer that fits the data."""
    return [" ".join(m["content"] for m in c["messages"]) for c in generate(n, seed)]


def main(argv: Optional[Sequence[str]] = None, print_fn: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m opdplug_local.chatgen",
        description="Write multi-turn conversations (train.jsonl, eval.jsonl, disjoint by conversation).")
    parser.add_argument("--out", default="data/conversations", help="output directory (default: data/conversations)")
    parser.add_argument("--train", type=int, default=4000, help="train conversations (default: 4000)")
    parser.add_argument("--eval", type=int, default=200, help="eval conversations (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--topics", default=",".join(TOPICS), help=f"comma-separated, among {', '.join(TOPICS)}")
    parser.add_argument("--styles", default=",".join(STYLES), help=f"answer styles drawn from, among {', '.join(STYLES)}")
    parser.add_argument("--format", default="openai", choices=("openai", "sharegpt"),
                        help="openai (messages/role/content, default) or sharegpt (conversations/from/value)")
    args = parser.parse_args(argv)
    if args.train < 0 or args.eval < 0:
        parser.error("--train and --eval must be >= 0")
    try:
        topics = _check_topics(t.strip() for t in args.topics.split(",") if t.strip())
    except ValueError as exc:
        parser.error(f"--topics: {exc}")
    try:
        styles = _check_styles(t.strip() for t in args.styles.split(",") if t.strip())
    except ValueError as exc:
        parser.error(f"--styles: {exc}")
    paths = write_splits(args.out, args.train, args.eval, args.seed, topics, args.format, styles)
    for split, n in (("train", args.train), ("eval", args.eval)):
        mix = Counter(c["topic"] for c in generate(n, args.seed, topics, split=split, styles=styles))
        print_fn(f"wrote {n} {split} conversations to {paths[split]} ({', '.join(f'{t} {mix[t]}' for t in topics if mix[t])})")
    print_fn(f"seed {args.seed}; format {args.format}; train and eval share no opening turn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
