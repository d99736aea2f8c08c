"""Word problems: determinism, correct answers (recomputed from the prompt), disjoint train and
eval, valid JSONL, short texts, the CLI."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import pytest

from opdplug_local import wordproblems as wp
from opdplug_local.verifiers import FinalNumber

RECOMPUTE = {
    "add": lambda a, b: a + b,
    "subtract": lambda a, b: a - b,
    "multiply": lambda a, b: a * b,
    "add_then_subtract": lambda a, b, c: a + b - c,
    "multiply_then_subtract": lambda a, b, c: a * b - c,
}


@pytest.fixture(scope="module")
def problems():
    return wp.generate(3000, seed=0, topics=wp.TOPICS)


def test_deterministic_in_the_seed():
    a = wp.generate(300, seed=7)
    assert a == wp.generate(300, seed=7)
    assert a != wp.generate(300, seed=8)
    assert wp.generate(100, seed=7) == a[:100]  # a prefix of a longer draw
    assert wp.generate(0, seed=7) == []


def test_answers_are_right(problems):
    verifier = FinalNumber()
    for p in problems:
        numbers = [int(x) for x in re.findall(r"\d+", p["prompt"])]
        answer = RECOMPUTE[p["topic"]](*numbers)
        assert p["answer"] == str(answer), p
        assert 0 <= answer <= wp.MAX_ANSWER
        assert p["solution"].endswith(f"The answer is {answer}."), p
        steps = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)\.", p["solution"])
        assert steps and len(steps) == p["solution"].count("="), p
        for x, op, y, z in steps:
            assert {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[op] == int(z), p
            assert 0 <= int(z) <= wp.MAX_ANSWER
        assert verifier.check(p["solution"], {"answer": p["answer"]}) == 1.0


def test_text_is_natural_and_varied(problems):
    prompts = [p["prompt"] for p in problems]
    assert len(set(prompts)) == len(prompts)  # distinct
    singular_or_plural = {s for s, _ in wp.OBJECTS} | {pl for _, pl in wp.OBJECTS}
    for text in prompts:
        assert "{" not in text and "}" not in text and "  " not in text
        assert not re.search(r"\bare 1 ", text) and not re.search(r"\bis (?!1 )\d+ ", text)
        for m in re.finditer(r"\b(\d+) ([a-z]+)\b", text):
            if m.group(2) in singular_or_plural:  # "1 apple", "5 apples"
                assert (m.group(1) == "1") == (m.group(2) in {s for s, _ in wp.OBJECTS}), text
    topics = Counter(p["topic"] for p in problems)
    assert set(topics) == set(wp.TOPICS) and min(topics.values()) > len(problems) / len(wp.TOPICS) / 2
    shapes = {  # each template as a regular expression: every prompt fits one template of its topic
        (topic, i): re.compile(re.sub(r"\\\{\w+\\\}", lambda m: ".+?", re.escape(template)))
        for topic, templates in wp.TEMPLATES.items() for i, template in enumerate(templates)
    }
    used = Counter()
    for p in problems:
        fits = [key for key, shape in shapes.items() if key[0] == p["topic"] and shape.fullmatch(p["prompt"])]
        assert len(fits) == 1, (p, fits)
        used[fits[0]] += 1
    assert set(used) == set(shapes)
    assert len({p["prompt"].split()[0] for p in problems}) > 10  # many names (and "There", "Each")
    assert sum(p["answer"] == "0" for p in problems) < len(problems) / 50


def test_default_topics_and_topic_choice():
    default = wp.generate(500, seed=1)
    assert {p["topic"] for p in default} == set(wp.DEFAULT_TOPICS)
    only = wp.generate(50, seed=1, topics=["multiply"])
    assert {p["topic"] for p in only} == {"multiply"}
    with pytest.raises(ValueError, match="unknown topic"):
        wp.generate(5, seed=0, topics=["divide"])
    with pytest.raises(ValueError):
        wp.generate(5, seed=0, topics=[])
    with pytest.raises(ValueError):
        wp.generate(5, seed=0, split="test")


def test_short_for_a_small_byte_level_bpe(problems):
    from opdplug.testing.models import build_bpe_tokenizer

    default = [p for p in problems if p["topic"] in wp.DEFAULT_TOPICS]
    tok = build_bpe_tokenizer([p["prompt"] + " " + p["solution"] for p in default], vocab_size=1024, template=None)
    assert max(len(tok.encode(p["prompt"])) for p in default) < 40
    assert max(len(tok.encode(" " + p["solution"])) for p in default) < 20
    assert max(len(tok.encode(" " + p["solution"])) for p in problems) < 30  # two-step ones too


def test_train_and_eval_are_disjoint_jsonl(tmp_path):
    paths = wp.write_jsonl(tmp_path / "data", 1000, seed=3, eval_fraction=0.1)
    assert paths == {"train": tmp_path / "data" / "train.jsonl", "eval": tmp_path / "data" / "eval.jsonl"}
    rows = {}
    for split, path in paths.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        rows[split] = [json.loads(line) for line in lines]
        for row in rows[split]:
            assert set(row) == {"prompt", "answer", "solution", "topic"}
            assert all(isinstance(v, str) for v in row.values())
            assert re.fullmatch(r"\d+", row["answer"])
            assert wp.split_of(row["prompt"]) == split
    assert len(rows["train"]) == 900 and len(rows["eval"]) == 100
    train = {r["prompt"] for r in rows["train"]}
    assert len(train) == 900 and not train & {r["prompt"] for r in rows["eval"]}
    # The eval pool is a property of the prompt: another seed's eval never meets this train.
    other = wp.generate(200, seed=4, split="eval")
    assert not train & {r["prompt"] for r in other}
    assert wp.read_jsonl(paths["eval"]) == rows["eval"]
    assert not list((tmp_path / "data").glob("*.tmp"))


def test_write_jsonl_checks_the_fraction(tmp_path):
    with pytest.raises(ValueError):
        wp.write_jsonl(tmp_path, 10, eval_fraction=1.5)
    paths = wp.write_jsonl(tmp_path, 10, seed=0, eval_fraction=0.0)
    assert len(wp.read_jsonl(paths["train"])) == 10 and wp.read_jsonl(paths["eval"]) == []


def test_main_writes_and_reports(tmp_path):
    lines = []
    assert wp.main(["--out", str(tmp_path / "d"), "--train", "300", "--eval", "30", "--seed", "2"], print_fn=lines.append) == 0
    assert lines[0].startswith(f"wrote 300 train problems to {tmp_path / 'd' / 'train.jsonl'}")
    assert lines[1].startswith(f"wrote 30 eval problems to {tmp_path / 'd' / 'eval.jsonl'}")
    assert wp.read_jsonl(tmp_path / "d" / "train.jsonl") == wp.generate(300, seed=2, split="train")
    with pytest.raises(SystemExit):
        wp.main(["--out", str(tmp_path), "--topics", "divide"], print_fn=lines.append)
    with pytest.raises(SystemExit):
        wp.main(["--out", str(tmp_path), "--train", "-1"], print_fn=lines.append)


def test_module_cli(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "opdplug_local.wordproblems", "--out", str(tmp_path), "--train", "50", "--eval", "5",
         "--seed", "0", "--topics", "add,multiply_then_subtract"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert "wrote 50 train problems" in out and "wrote 5 eval problems" in out
    assert {r["topic"] for r in wp.read_jsonl(tmp_path / "train.jsonl")} == {"add", "multiply_then_subtract"}
