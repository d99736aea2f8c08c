"""The tool-call format, its parser (never raises) and the calculator (no eval)."""
from __future__ import annotations

import json
import random

import pytest

from opdplug_agents import calculator
from opdplug_agents.tools import (
    MESSAGES,
    Arg,
    ToolCall,
    ToolSpec,
    format_call,
    parse_call,
    pretokenize,
    toolset,
    vocabulary,
)

TOOLS = toolset(
    ToolSpec("move", (Arg("dir", "string"),)),
    ToolSpec("swap", (Arg("i", "integer"),)),
    ToolSpec("pick", (Arg("item", "string"), Arg("count", "integer", required=False))),
    ToolSpec("done"),
)


# ----------------------------------------------------------------------------- format
def test_canonical_format_round_trips():
    text = format_call("move", dir="north")
    assert text == '{"tool": "move", "args": {"dir": "north"}}'
    call = parse_call(text, TOOLS)
    assert call == ToolCall("move", {"dir": "north"})
    assert call.text(TOOLS) == text
    assert parse_call(format_call("done"), TOOLS) == ToolCall("done", {})


def test_parser_is_lenient_where_the_format_allows():
    assert parse_call('  {"tool": "swap", "args": {"i": 3}}  ', TOOLS) == ToolCall("swap", {"i": 3})
    assert parse_call('{"args": {"i": -1}, "tool": "swap"}', TOOLS) == ToolCall("swap", {"i": -1})
    assert parse_call('{"tool": "done"}', TOOLS) == ToolCall("done", {})  # args omitted
    assert parse_call('{"tool":"pick","args":{"item":"key"}}', TOOLS) == ToolCall("pick", {"item": "key"})
    call = parse_call('{"tool": "pick", "args": {"count": 2, "item": "key"}}', TOOLS)
    assert call.text(TOOLS) == '{"tool": "pick", "args": {"item": "key", "count": 2}}'  # schema order


BAD = [
    ("", MESSAGES["empty"]),
    ("   ", MESSAGES["empty"]),
    (None, MESSAGES["not_text"]),
    (7, MESSAGES["not_text"]),
    (b'{"tool": "done"}', MESSAGES["not_text"]),
    ('{"tool": "done"', MESSAGES["malformed"]),
    ("move north", MESSAGES["malformed"]),
    ("{'tool': 'done'}", MESSAGES["malformed"]),
    ('{"tool": "swap", "args": {"i": NaN}}', MESSAGES["malformed"]),
    ('{"tool": "swap", "args": {"i": 1' + "0" * 5000 + "}}", MESSAGES["too_long"]),
    ("[" * 90 + "]" * 90, MESSAGES["not_object"]),
    ('{"tool": "done"}\n{"tool": "done"}', MESSAGES["multi_line"]),
    ('{"tool":\n"done"}', MESSAGES["multi_line"]),
    ('{"tool": "done", "args": {}} ' + " x" * 100, MESSAGES["too_long"]),
    ('["move", "north"]', MESSAGES["not_object"]),
    ('"move"', MESSAGES["not_object"]),
    ("42", MESSAGES["not_object"]),
    ('{"tool": "done", "tool": "move"}', MESSAGES["duplicate"]),
    ('{"args": {}}', MESSAGES["keys"]),
    ('{"tool": "done", "args": {}, "why": "x"}', MESSAGES["keys"]),
    ('{"tool": 3, "args": {}}', MESSAGES["tool_type"]),
    ('{"tool": "fly", "args": {}}', "error : unknown tool , use move swap pick done"),
    ('{"tool": "move", "args": ["north"]}', MESSAGES["args_type"]),
    ('{"tool": "move", "args": {}}', "error : tool move needs arg dir"),
    ('{"tool": "pick", "args": {"count": 1}}', "error : tool pick needs arg item"),
    ('{"tool": "move", "args": {"dir": "north", "speed": 2}}', "error : tool move got an unknown arg , it takes dir"),
    ('{"tool": "done", "args": {"now": 1}}', "error : tool done got an unknown arg , it takes nothing"),
    ('{"tool": "move", "args": {"dir": 1}}', "error : arg dir of tool move must be a string"),
    ('{"tool": "move", "args": {"dir": null}}', "error : arg dir of tool move must be a string"),
    ('{"tool": "swap", "args": {"i": "1"}}', "error : arg i of tool swap must be an integer"),
    ('{"tool": "swap", "args": {"i": 1.0}}', "error : arg i of tool swap must be an integer"),
    ('{"tool": "swap", "args": {"i": true}}', "error : arg i of tool swap must be an integer"),
    ('{"tool": "pick", "args": {"item": "a", "count": [1]}}', "error : arg count of tool pick must be an integer"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_calls_give_the_right_message(text, message):
    assert parse_call(text, TOOLS) == message


def test_deep_nesting_does_not_raise():
    assert parse_call("[" * 100000, TOOLS, max_chars=10**6) == MESSAGES["malformed"]
    assert parse_call('{"a":' * 50000 + "1" + "}" * 50000, TOOLS, max_chars=10**6) == MESSAGES["malformed"]


def _mutations(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(3)
        pos = rng.randrange(len(chars) + 1)
        if op == 0 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif op == 1:
            chars.insert(pos, rng.choice('{}[]":,. 0123456789-aeinrtx\\'))
        elif chars:
            i = min(pos, len(chars) - 1)
            chars[i] = rng.choice('{}[]":, 01-ntuel')
    return "".join(chars)


def test_fuzz_never_raises_and_errors_stay_in_vocabulary():
    rng = random.Random(0)
    vocab = set(vocabulary(TOOLS))
    valid = [format_call("move", dir="north"), format_call("swap", i=2), format_call("pick", item="a", count=1),
             format_call("done")]
    seen_ok = seen_err = 0
    for n in range(3000):
        text = _mutations(rng, rng.choice(valid)) if n % 3 else "".join(
            rng.choice('{}[]":,tolargs 0123456789') for _ in range(rng.randint(0, 40))
        )
        result = parse_call(text, TOOLS)
        if isinstance(result, ToolCall):
            seen_ok += 1
            assert result.tool in TOOLS
        else:
            seen_err += 1
            assert result.startswith("error : ")
            assert set(pretokenize(result)) <= vocab, result
    assert seen_ok > 50 and seen_err > 1000


def test_vocabulary_holds_the_json_punctuation_of_canonical_calls():
    vocab = set(vocabulary(TOOLS))
    for text in [format_call("move", dir="north"), format_call("swap", i=2), format_call("done"),
                 format_call("pick", item="key"), format_call("pick", item="key", count=3)]:
        missing = [t for t in pretokenize(text) if t not in vocab and t not in ("north", "2", "key", "3")]
        assert not missing, (text, missing)
    assert {'{"', '":', '"', '",', '"}}', "}}", "{}}", "tool", "args"} <= vocab
    assert all(pretokenize(w) == [w] for w in vocab)


def test_pretokenize_matches_the_tokenizers_library():
    pre_tokenizers = pytest.importorskip("tokenizers.pre_tokenizers")
    whitespace = pre_tokenizers.Whitespace()
    samples = [format_call("move", dir="north"), format_call("swap", i=12), format_call("done"),
               'x {"a":[1, -2.5e3]} __ a_b !?" end', "row 0 : . # @ * ; you are at row 1 col 2"]
    for text in samples:
        assert pretokenize(text) == [t for t, _ in whitespace.pre_tokenize_str(text)]


def test_schema_is_validated():
    with pytest.raises(ValueError, match="type must be"):
        Arg("x", "float")
    with pytest.raises(ValueError, match="one word"):
        ToolSpec("two words")
    with pytest.raises(ValueError, match="declared twice"):
        toolset(ToolSpec("a"), ToolSpec("a"))


# ----------------------------------------------------------------------------- calculator
@pytest.mark.parametrize(
    "expr,value",
    [
        ("7", 7),
        ("7 + 3 + 5", 15),
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("10 - 4 - 3", 3),
        ("100 // 7 // 2", 7),
        ("-7 // 2", -4),
        ("7 % -3", -2),
        ("--3", 3),
        ("-(2 - 5) * 2", 6),
        ("  1+2*3-4  ", 3),
        ("17 % 5 * 3", 6),
    ],
)
def test_calculator_values(expr, value):
    assert calculator.evaluate(expr) == value


@pytest.mark.parametrize(
    "expr,message",
    [
        ("", calculator.BAD_EXPRESSION),
        ("1 +", calculator.BAD_EXPRESSION),
        ("(1 + 2", calculator.BAD_EXPRESSION),
        ("1 + 2)", calculator.BAD_EXPRESSION),
        ("2 ** 3", calculator.BAD_EXPRESSION),
        ("1 / 2", calculator.BAD_EXPRESSION),
        ("1.5 + 1", calculator.BAD_EXPRESSION),
        ("__import__('os')", calculator.BAD_EXPRESSION),
        ("abs(-1)", calculator.BAD_EXPRESSION),
        ("\u0663 + 1", calculator.BAD_EXPRESSION),
        ("(" * 30 + "1" + ")" * 30, calculator.BAD_EXPRESSION),
        ("-" * 60 + "1", calculator.BAD_EXPRESSION),
        ("1 + " * 30 + "1", calculator.BAD_EXPRESSION),  # longer than MAX_CHARS
        ("5 // 0", calculator.DIVISION_BY_ZERO),
        ("5 % (2 - 2)", calculator.DIVISION_BY_ZERO),
        ("1234567890", calculator.TOO_BIG),
        ("999999999 * 999999999", calculator.TOO_BIG),
    ],
)
def test_calculator_rejects_with_a_fixed_message(expr, message):
    with pytest.raises(calculator.CalcError) as info:
        calculator.evaluate(expr)
    assert str(info.value) == message


def test_calculator_never_runs_code(monkeypatch, tmp_path):
    """Python is only ever a bad expression: the calculator parses, it never hands text to
    eval, exec or compile (patched here to fail), and code with a side effect does not run."""
    import builtins

    def forbidden(*args, **kwargs):
        raise AssertionError("the calculator ran code")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    assert calculator.evaluate("7 + 3 * (2 - 5)") == -2
    marker = tmp_path / "ran"
    for code in (f"__import__('pathlib').Path({str(marker)!r}).touch()", "open('x')", "[1][0]", "1 if 1 else 2", "(1, 2)"):
        with pytest.raises(calculator.CalcError):
            calculator.evaluate(code)
    assert not marker.exists()


def test_canonical_calls_are_json():
    assert json.loads(format_call("pick", item="k", count=2)) == {"tool": "pick", "args": {"item": "k", "count": 2}}
