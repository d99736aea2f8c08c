"""Arithmetic word problems, generated offline and deterministically: a small dataset a tiny
teacher can learn (SFT on ``solution``) and a tiny student can be distilled on, on a CPU.

Every problem is one JSON line::

    {"prompt": "Mia has 23 marbles. She gets 15 more. How many marbles does Mia have now?",
     "answer": "38", "solution": "23 + 15 = 38. The answer is 38.", "topic": "add"}

Topics: ``add``, ``subtract``, ``multiply`` (single-digit factors), and the two-step
``add_then_subtract`` and ``multiply_then_subtract`` (off by default). Every answer and
intermediate result is in 0..99; the prompt's numbers appear in the order the solution uses
them. A few templates per topic, with varied names, objects and containers, keep the text natural
while the vocabulary stays small: with a byte-level BPE of a few hundred tokens a prompt is
under ~40 tokens and a solution under ~20.

Train and eval are disjoint by construction: a problem belongs to the eval pool iff a hash of
its prompt text says so (1 problem in ``EVAL_POOL_MOD``), whatever the seed or the counts asked
for, so an eval file never shares a prompt with any train file.

    python -m opdplug_local.wordproblems --out data/ --train 20000 --eval 500 --seed 0
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

MAX_ANSWER = 99
"""Every answer (and every intermediate result) is in 0..MAX_ANSWER."""
EVAL_POOL_MOD = 20
"""A prompt whose hash is 0 modulo this is in the eval pool (1 in 20 of all problems)."""
DEFAULT_TOPICS = ("add", "subtract", "multiply")
TOPICS = ("add", "subtract", "multiply", "add_then_subtract", "multiply_then_subtract")

NAMES = (
    ("Ann", "She"), ("Ben", "He"), ("Mia", "She"), ("Tom", "He"), ("Lily", "She"), ("Sam", "He"),
    ("Emma", "She"), ("Leo", "He"), ("Zoe", "She"), ("Max", "He"), ("Ava", "She"), ("Noah", "He"),
    ("Ivy", "She"), ("Jack", "He"), ("Rosa", "She"), ("Omar", "He"), ("Nina", "She"), ("Eli", "He"),
    ("Sara", "She"), ("Hugo", "He"), ("Lena", "She"), ("Raj", "He"), ("Kate", "She"), ("Luis", "He"),
)
"""(name, subject pronoun)."""

OBJECTS = (
    ("apple", "apples"), ("pencil", "pencils"), ("marble", "marbles"), ("sticker", "stickers"),
    ("book", "books"), ("cookie", "cookies"), ("shell", "shells"), ("card", "cards"),
    ("coin", "coins"), ("flower", "flowers"), ("stamp", "stamps"), ("egg", "eggs"),
    ("orange", "oranges"), ("balloon", "balloons"), ("crayon", "crayons"), ("button", "buttons"),
    ("cupcake", "cupcakes"), ("rock", "rocks"), ("ribbon", "ribbons"), ("kite", "kites"),
)
"""(singular, plural)."""

CONTAINERS = (
    ("box", "boxes"), ("bag", "bags"), ("basket", "baskets"), ("jar", "jars"), ("pack", "packs"),
    ("tray", "trays"), ("bowl", "bowls"), ("cup", "cups"),
)
"""(singular, plural): where objects are kept (multiplication: groups of equal size)."""

# Templates. Fields: {N} a name, {be} "is"/"are" agreeing with {qa}, {P} its pronoun, {M} another name, {qa}/{qb} "<count> <object>"
# (singular when the count is 1), {a} {b} {c} bare numbers, {o} the object's plural, {cs}/{cp} a
# container, singular/plural. The numbers appear in the order the solution uses them.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "add": (
        "{N} has {qa}. {P} gets {b} more. How many {o} does {N} have now?",
        "{N} found {qa} on Monday and {qb} on Tuesday. How many {o} did {N} find?",
        "There {be} {qa} in a {cs}. {N} puts in {b} more. How many {o} are in the {cs} now?",
        "{N} has {qa} and {M} has {qb}. How many {o} do they have together?",
    ),
    "subtract": (
        "{N} has {qa}. {P} gives {b} to {M}. How many {o} does {N} have left?",
        "There {be} {qa} in a {cs}. {N} takes out {b}. How many {o} are left in the {cs}?",
        "{N} had {qa} and lost {b} of them. How many {o} does {N} have now?",
        "{N} has {qa} and {M} has {qb}. How many more {o} does {N} have than {M}?",
    ),
    "multiply": (
        "{N} has {a} {cp} with {b} {o} in each {cs}. How many {o} does {N} have?",
        "{N} buys {a} {cp} of {o}. Each {cs} holds {b} {o}. How many {o} does {N} buy?",
        "Each of {N}'s {a} friends brings {b} {o}. How many {o} do they bring in all?",
    ),
    "add_then_subtract": (
        "{N} has {qa}. {P} gets {b} more and gives {c} to {M}. How many {o} does {N} have now?",
        "There {be} {qa} in a {cs}. {N} adds {b} and {M} takes {c}. How many {o} are in the {cs}?",
    ),
    "multiply_then_subtract": (
        "{N} has {a} {cp} with {b} {o} in each {cs}. {P} gives {c} away. How many {o} are left?",
        "{N} buys {a} {cp} of {o} with {b} in each. {P} loses {c}. How many {o} does {N} have now?",
    ),
}


def _count(n: int, obj: tuple[str, str]) -> str:
    return f"{n} {obj[0] if n == 1 else obj[1]}"


def _operands(topic: str, rng: random.Random) -> tuple[list[int], list[str]]:
    """The numbers of one problem and the solution's steps (each ``"x op y = z."``)."""
    # Sums and differences draw the answer first, so answers are spread evenly over their range.
    if topic == "add":
        total = rng.randint(2, MAX_ANSWER)
        a = rng.randint(1, total - 1)
        b = total - a
        return [a, b], [f"{a} + {b} = {total}."]
    if topic == "subtract":
        left = rng.randint(1, MAX_ANSWER - 1)
        b = rng.randint(1, MAX_ANSWER - left)
        a = left + b
        return [a, b], [f"{a} - {b} = {left}."]
    if topic == "multiply":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return [a, b], [f"{a} * {b} = {a * b}."]
    if topic == "add_then_subtract":
        a = rng.randint(1, MAX_ANSWER - 2)
        b = rng.randint(1, MAX_ANSWER - 1 - a)
        c = rng.randint(1, a + b - 1)
        return [a, b, c], [f"{a} + {b} = {a + b}.", f"{a + b} - {c} = {a + b - c}."]
    if topic == "multiply_then_subtract":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        c = rng.randint(1, a * b - 1)
        return [a, b, c], [f"{a} * {b} = {a * b}.", f"{a * b} - {c} = {a * b - c}."]
    raise ValueError(f"unknown topic {topic!r}; choose from {', '.join(TOPICS)}")


def _result(steps: Sequence[str]) -> int:
    return int(steps[-1].rstrip(".").rsplit("=", 1)[1])


def make_problem(rng: random.Random, topic: str) -> dict:
    """One problem of ``topic`` drawn from ``rng``: ``{"prompt", "answer", "solution", "topic"}``."""
    numbers, steps = _operands(topic, rng)
    template = rng.choice(TEMPLATES[topic])
    (name, pronoun), (other, _) = rng.sample(NAMES, 2)
    obj = rng.choice(OBJECTS)
    container = rng.choice(CONTAINERS)
    a, b, c = (numbers + [0, 0])[:3]
    prompt = template.format(
        N=name, P=pronoun, M=other, be="is" if a == 1 else "are", a=a, b=b, c=c, qa=_count(a, obj), qb=_count(b, obj), o=obj[1],
        cs=container[0], cp=container[1],
    )
    answer = _result(steps)
    return {"prompt": prompt, "answer": str(answer), "solution": " ".join([*steps, f"The answer is {answer}."]),
            "topic": topic}


def split_of(prompt: str) -> str:
    """``"eval"`` or ``"train"``: which pool a prompt belongs to (a hash of its text, stable
    across processes, Python versions and seeds)."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return "eval" if int.from_bytes(digest[:8], "little") % EVAL_POOL_MOD == 0 else "train"


def _check_topics(topics: Iterable[str]) -> tuple[str, ...]:
    topics = tuple(topics)
    if not topics:
        raise ValueError("topics must not be empty")
    unknown = [t for t in topics if t not in TOPICS]
    if unknown:
        raise ValueError(f"unknown topic {unknown[0]!r}; choose from {', '.join(TOPICS)}")
    return topics


def iter_problems(seed: int, topics: Iterable[str] = DEFAULT_TOPICS, split: Optional[str] = None) -> Iterator[dict]:
    """An endless stream of distinct problems, deterministic in ``seed`` (topics drawn uniformly);
    with ``split`` only those of the ``"train"`` or ``"eval"`` pool."""
    topics = _check_topics(topics)
    if split not in (None, "train", "eval"):
        raise ValueError(f"split must be 'train', 'eval' or None, got {split!r}")
    # A string seed is hashed by random.Random with SHA-512: stable across processes.
    rng = random.Random(f"wordproblems:{seed}")
    seen: set[str] = set()
    misses = 0
    while True:
        problem = make_problem(rng, rng.choice(topics))
        prompt = problem["prompt"]
        if prompt in seen or (split is not None and split_of(prompt) != split):
            misses += 1
            if misses > 100_000 + 100 * len(seen):  # only reachable if the space ran out
                raise ValueError(f"no more distinct problems of topics {', '.join(topics)} (made {len(seen)})")
            continue
        seen.add(prompt)
        yield problem


def generate(n: int, seed: int = 0, topics: Iterable[str] = DEFAULT_TOPICS, split: Optional[str] = None) -> list[dict]:
    """``n`` distinct problems, deterministic in ``seed`` (``generate(n)`` is a prefix of
    ``generate(n + k)``); ``split`` keeps only the ``"train"`` or ``"eval"`` pool."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    stream = iter_problems(seed, topics, split)
    return [next(stream) for _ in range(n)]


def _write_rows(path: Path, rows: Sequence[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_splits(out: str | os.PathLike, n_train: int, n_eval: int, seed: int = 0,
                 topics: Iterable[str] = DEFAULT_TOPICS) -> dict[str, Path]:
    """Write ``out/train.jsonl`` (``n_train`` problems) and ``out/eval.jsonl`` (``n_eval``),
    disjoint (see ``split_of``); returns ``{"train": path, "eval": path}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / "train.jsonl", "eval": out / "eval.jsonl"}
    _write_rows(paths["train"], generate(n_train, seed, topics, split="train"))
    _write_rows(paths["eval"], generate(n_eval, seed, topics, split="eval"))
    return paths


def write_jsonl(path: str | os.PathLike, n: int, seed: int = 0, eval_fraction: float = 0.025,
                topics: Iterable[str] = DEFAULT_TOPICS) -> dict[str, Path]:
    """Write ``n`` problems into the directory ``path``: ``round(n * eval_fraction)`` to
    ``eval.jsonl``, the rest to ``train.jsonl``; returns ``{"train": path, "eval": path}``."""
    if not 0 <= eval_fraction <= 1:
        raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    n_eval = round(n * eval_fraction)
    return write_splits(path, n - n_eval, n_eval, seed, topics)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: Optional[Sequence[str]] = None, print_fn: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m opdplug_local.wordproblems",
        description="Write arithmetic word problems (train.jsonl, eval.jsonl) with answers and worked solutions.")
    parser.add_argument("--out", default="data", help="output directory (default: data)")
    parser.add_argument("--train", type=int, default=20000, help="train problems (default: 20000)")
    parser.add_argument("--eval", type=int, default=500, help="eval problems (default: 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--topics", default=",".join(DEFAULT_TOPICS),
                        help=f"comma-separated topics among {', '.join(TOPICS)} (default: {','.join(DEFAULT_TOPICS)})")
    args = parser.parse_args(argv)
    if args.train < 0 or args.eval < 0:
        parser.error("--train and --eval must be >= 0")
    try:
        topics = _check_topics(t.strip() for t in args.topics.split(",") if t.strip())
    except ValueError as exc:
        parser.error(f"--topics: {exc}")
    paths = write_splits(args.out, args.train, args.eval, args.seed, topics)
    for split, path in paths.items():
        rows = read_jsonl(path)
        mix = Counter(r["topic"] for r in rows)
        detail = ", ".join(f"{t} {mix[t]}" for t in topics if mix[t])
        print_fn(f"wrote {len(rows)} {split} problems to {path}" + (f" ({detail})" if detail else ""))
    print_fn(f"seed {args.seed}; answers 0..{MAX_ANSWER}; train and eval share no prompt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
