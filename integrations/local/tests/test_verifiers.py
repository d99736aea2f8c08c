"""Answer verifiers: each on right, wrong and garbage answers; the tensor path over a batch;
option validation through the kernel; the one-line error when an optional package is missing."""
from __future__ import annotations

import signal
import sys
import types
from fractions import Fraction

import pytest
import torch

from opdplug.config import from_dict
from opdplug.errors import ConfigError
from opdplug.hookspecs import hookimpl
from opdplug.types import PRODUCER_STUDENT, Prompt
from opdplug_local.models import collate
from opdplug_local.verifiers import (
    VERIFIERS, Boxed, ExactMatch, FinalNumber, JsonSchema, MathEquiv, RegexMatch, TextVerifier,
    extract_json, find_numbers, last_boxed, parse_number, register_verifiers,
)

GARBAGE = ["", "   ", "\x00\x01\ufffd", "}{}{\\boxed{", "-", "$", "1/0", "```json\n{```", "NaN", "\\boxed{}"]
BAD_META = [{}, {"answer": None}, None, {"other": "1"}, "not a dict"]


def every_verifier() -> list[TextVerifier]:
    return [
        ExactMatch(), FinalNumber(), Boxed(), RegexMatch(pattern=r"(?P<a>\d+)", group="a"),
        JsonSchema(schema={"type": "object"}), JsonSchema(schema_key="schema"), MathEquiv(),
    ]


# ----------------------------------------------------------------------------- helpers
def test_find_and_parse_numbers():
    assert find_numbers("1,234 and -3, 2.50 for $12; 3/4 of .5") == [
        Fraction(1234), Fraction(-3), Fraction(5, 2), Fraction(12), Fraction(3, 4), Fraction(1, 2)]
    assert find_numbers("3/4", fractions=False) == [3, 4]
    assert find_numbers("5-3=2") == [5, 3, 2]  # a minus after a number is an operator
    assert find_numbers("x = \u22127") == [-7]  # the Unicode minus sign
    assert find_numbers("1/0 then 1,2,3") == [1, 2, 3]  # zero denominator skipped; a list is not 123
    assert parse_number(" $1,234.00 ") == 1234 and parse_number("50%") == 50 and parse_number("7.") == 7
    assert parse_number("\\frac{3}{4}") == Fraction(3, 4) and parse_number("-\\dfrac{1}{2}") == Fraction(-1, 2)
    assert parse_number(12) == 12 and parse_number(2.5) == Fraction(5, 2)
    for bad in ("", "12 apples", "1 2", "abc", True, float("nan"), "\\frac{1}{0}"):
        assert parse_number(bad) is None


def test_last_boxed_and_extract_json():
    assert last_boxed(r"\boxed{1} then \boxed{\frac{a}{b^{2}}} done") == r"\frac{a}{b^{2}}"
    assert last_boxed(r"\fbox{x}") == "x" and last_boxed(r"so \boxed 5$") == "5"
    assert last_boxed(r"\boxed{unclosed") is None and last_boxed("nothing") is None
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('Sure:\n```json\n{"a": [1, 2]}\n```\nbye') == {"a": [1, 2]}
    assert extract_json('noise {bad} then {"b": true} tail') == {"b": True}
    with pytest.raises(ValueError):
        extract_json("no json { here")


# ----------------------------------------------------------------------------- verifiers
def test_exact_match():
    v = ExactMatch()
    assert v.check("  Paris\n", {"answer": "paris"}) == 1.0
    assert v.check("New   York", {"answer": "new york"}) == 1.0
    assert v.check("Paris.", {"answer": "Paris"}) == 0.0
    assert ExactMatch(strip_punctuation=True).check("Paris.", {"answer": "Paris"}) == 1.0
    assert ExactMatch(ignore_case=False).check("paris", {"answer": "Paris"}) == 0.0
    assert ExactMatch(collapse_whitespace=False).check("New  York", {"answer": "New York"}) == 0.0
    assert v.check("London", {"answer": "Paris"}) == 0.0
    assert v.check("42", {"answer": 42}) == 1.0  # a numeric reference is read as its str
    assert ExactMatch(answer_key="label").check("yes", {"label": "YES"}) == 1.0


@pytest.mark.parametrize("text, answer", [
    ("So she has 1,234 apples.", "1234"),
    ("The temperature is -3 degrees.", "-3"),
    ("It costs 2.50 dollars", "2.5"),
    ("Total: $12", "12"),
    ("The answer is 3/4.", "0.75"),
    ("First 5, then 7, so 9", "9"),
    ("12 - 5 = 7", "7"),
    ("#### 72", "$72.00"),
    ("The answer is 8", 8),
])
def test_final_number_right(text, answer):
    assert FinalNumber().check(text, {"answer": answer}) == 1.0


@pytest.mark.parametrize("text, answer", [
    ("Not 8: the answer is 9", "8"),  # the LAST number counts
    ("I have no idea", "8"),
    ("12 - 5 = 7", "-5"),
    ("1/2", "1"),
])
def test_final_number_wrong(text, answer):
    assert FinalNumber().check(text, {"answer": answer}) == 0.0


def test_final_number_options():
    assert FinalNumber(fractions=False).check("3/4", {"answer": "4"}) == 1.0
    assert FinalNumber().check("3/4", {"answer": "4"}) == 0.0
    assert FinalNumber(tolerance=0.01).check("3.333", {"answer": "10/3"}) == 1.0
    assert FinalNumber().check("3.333", {"answer": "10/3"}) == 0.0
    gsm = FinalNumber(marker="####")
    assert gsm.check("5 + 3 = 8 #### 8 and 9 more words", {"answer": "8"}) == 0.0  # last number after the marker
    assert gsm.check("5 + 3 = 8\n#### 8", {"answer": "8"}) == 1.0
    assert gsm.check("5 + 3 = 8", {"answer": "8"}) == 0.0  # no marker: no answer
    assert FinalNumber().check("8", {"answer": "eight"}) == 0.0  # a reference that is no number


def test_boxed():
    v = Boxed()
    assert v.check(r"Thus $\boxed{\frac{1}{2}}$.", {"answer": "0.5"}) == 1.0
    assert v.check(r"\boxed{1,000}", {"answer": "1000"}) == 1.0
    assert v.check(r"\boxed{x^{2} + 1}", {"answer": "x^2+1"}) == 1.0
    assert v.check(r"\boxed{\left( 1, 2 \right)}", {"answer": "(1,2)"}) == 1.0
    assert v.check(r"\boxed{\text{Paris}}", {"answer": "Paris"}) == 1.0
    assert v.check(r"\boxed{3} but really \boxed{4}", {"answer": "3"}) == 0.0
    assert v.check("the answer is 4", {"answer": "4"}) == 0.0  # nothing boxed
    assert v.check(r"\boxed{4}", {"answer": r"so the result is \boxed{4}."}) == 1.0  # a boxed reference
    assert Boxed(numeric=False).check(r"\boxed{0.5}", {"answer": "1/2"}) == 0.0
    assert Boxed(ignore_case=True).check(r"\boxed{PARIS}", {"answer": "paris"}) == 1.0
    assert v.check(r"\boxed{PARIS}", {"answer": "paris"}) == 0.0


def test_regex():
    v = RegexMatch(pattern=r"answer is (?P<ans>-?[\d,.]+)", group="ans")
    assert v.check("the answer is 5, no wait, the answer is 6", {"answer": "6"}) == 1.0
    assert RegexMatch(pattern=v.pattern, group="ans", last=False).check(
        "the answer is 5, no wait, the answer is 6", {"answer": "6"}) == 0.0
    assert v.check("the answer is 1,000", {"answer": "1000"}) == 1.0  # numeric comparison
    assert v.check("I think 6", {"answer": "6"}) == 0.0
    present = RegexMatch(pattern=r"^\s*(yes|no)\b")
    assert present.check("yes, because", {}) == 1.0  # no group: a match is enough, no reference needed
    assert present.check("maybe", {}) == 0.0
    full = RegexMatch(pattern=r"[A-D]", fullmatch=True)
    assert full.check(" B\n", {}) == 1.0 and full.check("B because", {}) == 0.0
    word = RegexMatch(pattern=r"capital is (?P<c>\w+)", group="c", ignore_case=True)
    assert word.check("The CAPITAL is PARIS", {"answer": "paris"}) == 1.0
    assert word.check("capital is Rome", {}) == 0.0  # a group to compare but no reference


def test_json_schema():
    schema = {"type": "object", "required": ["name", "age"],
              "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}}
    v = JsonSchema(schema=schema)
    assert v.check('{"name": "Ann", "age": 3}', {}) == 1.0
    assert v.check('Here you go:\n```json\n{"name": "Ann", "age": 3}\n```', {}) == 1.0
    assert v.check('Sure! {"name": "Ann", "age": 3} Anything else?', {}) == 1.0
    assert v.check('{"name": "Ann", "age": -1}', {}) == 0.0
    assert v.check('{"name": "Ann"}', {}) == 0.0
    assert v.check("name: Ann, age: 3", {}) == 0.0
    per_prompt = JsonSchema(schema_key="schema")
    meta = {"schema": '{"type": "array", "items": {"type": "number"}}'}
    assert per_prompt.check("[1, 2.5]", meta) == 1.0
    assert per_prompt.check('["a"]', meta) == 0.0
    assert per_prompt.check("[1]", {"schema": {"type": "array"}}) == 1.0  # a dict in the meta works too
    assert per_prompt.check("[1]", {}) == 0.0  # the column is missing
    assert per_prompt.check("[1]", {"schema": "{not json"}) == 0.0
    assert per_prompt.check("[1]", {"schema": '{"type": 12}'}) == 0.0  # an invalid schema
    assert JsonSchema().check('{"anything": 1}', {}) == 1.0  # no schema: any JSON
    assert JsonSchema().check("not json", {}) == 0.0
    dates = JsonSchema(schema={"type": "string", "format": "date"}, check_formats=True)
    assert dates.check('"2024-01-31"', {}) == 1.0 and dates.check('"31/01/2024"', {}) == 0.0


def test_math_equiv():
    v = MathEquiv()
    assert v.check(r"The answer is $\frac{1}{2}$", {"answer": "0.5"}) == 1.0
    assert v.check(r"so $\boxed{\sqrt{4}}$", {"answer": "2"}) == 1.0
    assert v.check(r"$x = \frac{2}{4}$", {"answer": r"\frac{1}{2}"}) == 1.0
    assert v.check("The answer is 7", {"answer": 7}) == 1.0
    assert v.check(r"$\frac{1}{3}$", {"answer": "0.5"}) == 0.0
    assert v.check("no numbers here", {"answer": "7"}) == 0.0


def test_math_equiv_keeps_an_outer_timer():
    """math-verify's SIGALRM timeouts cancel whatever timer was armed (pytest-timeout's);
    the verifier re-arms it."""
    before = signal.getitimer(signal.ITIMER_REAL)[0]
    old_handler = None
    if before == 0:
        old_handler = signal.signal(signal.SIGALRM, lambda *a: None)
        signal.setitimer(signal.ITIMER_REAL, 300)
    try:
        assert MathEquiv().check("$2$", {"answer": "2"}) == 1.0
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0
    finally:
        if old_handler is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)


@pytest.mark.parametrize("verifier", every_verifier(), ids=lambda v: type(v).__name__)
def test_garbage_and_missing_references_score_zero(verifier):
    for text in GARBAGE:
        assert verifier.check(text, {"answer": "1", "schema": "{}"}) in (0.0, 1.0)
    for text in ["1", r"\boxed{1}", '{"a": 1}', *GARBAGE]:
        for meta in BAD_META:
            if isinstance(verifier, JsonSchema) and verifier.schema:
                continue  # needs no reference
            assert verifier.check(text, meta) == 0.0, (text, meta)
    assert verifier.check(None, {"answer": "1"}) == 0.0
    assert verifier.check(b"1", {"answer": "1"}) == 0.0


def test_check_never_raises():
    class Broken(TextVerifier):
        def score(self, text, meta):
            raise RuntimeError("boom")

    class Infinite(TextVerifier):
        def score(self, text, meta):
            return float("inf")

    assert Broken().check("x", {"answer": "x"}) == 0.0
    assert Infinite().check("x", {"answer": "x"}) == 0.0


# ----------------------------------------------------------------------------- the tensor path
class CharTokenizer:
    """One token per character (id = code point + 2); 0 is padding and 1 is EOS."""

    pad_token_id, eos_token_id = 0, 1

    def encode(self, text: str) -> list[int]:
        return [ord(c) + 2 for c in text]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        special = {0: "<pad>", 1: "<eos>"}
        return "".join(("" if skip_special_tokens else special[i]) if i in special else chr(i - 2) for i in ids)


def make_batch(tok, rows):
    """rows: (prompt text, completion text, meta); completions end with EOS."""
    prompts = [Prompt(prompt_ids=tuple(tok.encode(p)), meta=m) for p, _, m in rows]
    completions = [tok.encode(c) + [tok.eos_token_id] for _, c, _ in rows]
    return collate(prompts, completions, producer=PRODUCER_STUDENT, pad_id=tok.pad_token_id)


def test_tensor_path_decodes_only_completions():
    tok = CharTokenizer()
    ctx = types.SimpleNamespace(tokenizer=tok)
    batch = make_batch(tok, [
        ("Q: 99 + 1 = ?", "It is 100.", {"answer": "100"}),
        ("Q: 5 + 5 = ?", "I think 11", {"answer": "10"}),
        ("Q: 7 = ?", "", {"answer": "7"}),  # the prompt's 7 must not count
        ("Q: 2 + 2 = ?", "four... no, 4", {}),  # no reference
        ("Q: 3 - 1 = ?", "2", {"answer": "2"}),
    ])
    rewards = FinalNumber()(ctx, batch)
    assert rewards.dtype == torch.float32 and rewards.shape == (5,)
    assert rewards.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    # ExactMatch sees exactly the completion: no prompt, no EOS, no padding.
    exact = ExactMatch(ignore_case=False)(ctx, make_batch(tok, [("Prompt", "It is 100.", {"answer": "It is 100."}), ("P", "x", {"answer": "x"})]))
    assert exact.tolist() == [1.0, 1.0]
    assert ExactMatch()(ctx, batch.select(torch.tensor([4]))).tolist() == [1.0]


def test_tensor_path_with_a_real_tokenizer():
    from opdplug.testing.models import build_bpe_tokenizer

    tok = build_bpe_tokenizer(template=None)
    rows = [("Tom has 3 apples and buys 5 more.", " The answer is 8.", {"answer": "8"}),
            ("Ann has 2 pens.", " The answer is 3.", {"answer": "2"})]
    prompts = [Prompt(prompt_ids=tuple(tok.encode(p)), meta=m) for p, _, m in rows]
    completions = [tok.encode(c) + [tok.eos_token_id] for _, c, _ in rows]
    batch = collate(prompts, completions, producer=PRODUCER_STUDENT, pad_id=tok.eos_token_id)
    rewards = FinalNumber()(types.SimpleNamespace(tokenizer=tok), batch)
    assert rewards.tolist() == [1.0, 0.0]


def test_tensor_path_needs_a_tokenizer():
    tok = CharTokenizer()
    batch = make_batch(tok, [("q", "1", {"answer": "1"})])
    with pytest.raises(ConfigError, match="ctx.tokenizer"):
        FinalNumber()(types.SimpleNamespace(tokenizer=None), batch)


# ----------------------------------------------------------------------------- registration, options
def test_register_verifiers_registers_every_name():
    seen = {}
    register_verifiers(lambda name, obj, default=False: seen.setdefault(name, obj))
    assert seen == VERIFIERS
    assert sorted(seen) == ["boxed", "exact_match", "final_number", "json_schema", "math_equiv", "regex"]


def test_registry_builds_them_with_validated_options(opd_manager):
    class Plugin:
        @hookimpl
        def opd_register_verifiers(self, register):
            register_verifiers(lambda name, obj: register(f"test_{name}", obj))

    registry = opd_manager(Plugin(), autoload=False).registry
    built = registry.build("verifiers", "test_final_number", {"tolerance": 1}, "credit.verifier")
    assert built == FinalNumber(tolerance=1.0)
    regex = registry.build("verifiers", "test_regex", {"pattern": r"is (?P<a>\d+)", "group": "a"}, "credit.verifier")
    assert regex.check("it is 4", {"answer": "4"}) == 1.0
    schema = registry.build("verifiers", "test_json_schema", {"schema": {"type": "object"}}, "credit.verifier")
    assert schema.check("{}", {}) == 1.0


@pytest.mark.parametrize("cls, options, message", [
    (FinalNumber, {"tolernce": 1}, "unknown key 'tolernce'"),
    (FinalNumber, {"tolerance": "a lot"}, "must be a number"),
    (FinalNumber, {"tolerance": -1}, "tolerance must be >= 0"),
    (ExactMatch, {"ignore_case": "yes"}, "true or false"),
    (Boxed, {"tolerance": -0.5}, "tolerance must be >= 0"),
    (RegexMatch, {}, "needs a pattern"),
    (RegexMatch, {"pattern": "(unclosed"}, "not a valid regular expression"),
    (RegexMatch, {"pattern": r"(?P<x>\d)", "group": "y"}, "no named group 'y'"),
    (JsonSchema, {"schema": {"type": 12}}, "not a valid JSON schema"),
    (JsonSchema, {"schema": {"type": "object"}, "schema_key": "s"}, "not both"),
    (JsonSchema, {"schema": "{}"}, "must be a table"),
    (MathEquiv, {"timeout_seconds": -1}, "timeout_seconds must be >= 0"),
])
def test_option_validation(cls, options, message):
    with pytest.raises(ConfigError, match=message) as info:
        from_dict(cls, options, "[credit.verifier options]")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("module, pip_name, make", [
    ("math_verify", "math-verify", lambda: MathEquiv()),
    ("jsonschema", "jsonschema", lambda: JsonSchema(schema={"type": "object"})),
    ("jsonschema", "jsonschema", lambda: JsonSchema(schema_key="schema")),
])
def test_missing_package_is_a_one_line_config_error(monkeypatch, module, pip_name, make):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ConfigError) as info:
        make()
    message = str(info.value)
    assert f"pip install {pip_name}" in message and "\n" not in message


def test_json_without_a_schema_needs_no_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    assert JsonSchema().check('{"a": 1}', {}) == 1.0
