"""Answer verifiers, chosen by name: outcome rewards (``[credit] verifier = "final_number"``) and
the scoring of dataset tasks.

Every verifier is a frozen dataclass whose fields are its options, and offers two entry points:

* ``verifier(ctx, batch) -> rewards_B``: decodes each row's completion (the tokens of
  ``loss_mask_B_L``) with ``ctx.tokenizer`` and returns ``check`` per row as a float32 tensor;
* ``verifier.check(completion_text, prompt_meta) -> float``: 1.0 for a right answer, 0.0 for a
  wrong one. It never raises: garbage, a missing reference and any internal error score 0.0.

The reference answer is ``meta[answer_key]`` (``"answer"`` by default; numbers are accepted and
read as their ``str``). Registered names: ``exact_match``, ``final_number``, ``boxed``, ``regex``,
``json_schema`` (needs ``jsonschema``) and ``math_equiv`` (needs ``math-verify``); the last two
fail at construction, with a one-line ``ConfigError``, when their package is missing.
"""
from __future__ import annotations

import importlib
import json
import math
import re
import signal
import string
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any, Callable, Mapping, Optional

import torch

from opdplug.errors import ConfigError

__all__ = [
    "TextVerifier", "ExactMatch", "FinalNumber", "Boxed", "RegexMatch", "JsonSchema", "MathEquiv",
    "VERIFIERS", "register_verifiers", "parse_number", "find_numbers", "last_boxed",
    "extract_json",
]


# ----------------------------------------------------------------------------- helpers
def _require(module: str, pip_name: str, who: str) -> Any:
    """``import module``, or a one-line ``ConfigError`` telling how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"the {who} verifier needs the {pip_name} package: pip install {pip_name} "
            f"(or pip install 'opdplug-local[verifiers]')"
        ) from None


_SIGN = r"[-\u2212]"  # ASCII hyphen-minus or the Unicode minus sign
_DIGITS = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
# A sign only counts when it does not follow a word or a number ("5-3" is 5 and 3, not 5 and -3).
_NUMBER = re.compile(rf"(?<![\w.])(?P<sign>{_SIGN})?\$?(?P<num>{_DIGITS})")
_NUMBER_FRAC = re.compile(rf"(?<![\w.])(?P<sign>{_SIGN})?\$?(?P<num>{_DIGITS})(?:\s*/\s*(?P<den>\d+)(?!\.?\d))?")
_LATEX_FRAC = re.compile(r"^(?P<sign>-)?\\[dt]?frac\{(?P<num>[^{}]+)\}\{(?P<den>[^{}]+)\}$")


def _to_fraction(sign: Optional[str], num: str, den: Optional[str]) -> Optional[Fraction]:
    value = Fraction(num.replace(",", ""))
    if den is not None:
        if int(den) == 0:
            return None
        value /= int(den)
    return -value if sign else value


def find_numbers(text: str, fractions: bool = True) -> list[Fraction]:
    """Every number in ``text``, in order, as exact fractions: ``1,234``, ``-3``, ``2.50``,
    ``$12``, ``.5`` and (``fractions``) ``3/4``. A fraction with a zero denominator is skipped."""
    out = []
    for m in (_NUMBER_FRAC if fractions else _NUMBER).finditer(text):
        value = _to_fraction(m.group("sign"), m.group("num"), m.groupdict().get("den"))
        if value is not None:
            out.append(value)
    return out


def parse_number(text: Any, fractions: bool = True) -> Optional[Fraction]:
    """``text`` as one number (the whole string, surrounding spaces, ``$``, a trailing ``%`` or
    ``.`` and ``\\frac{a}{b}`` allowed), or None if it is not exactly one number."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return Fraction(text)
    if isinstance(text, float):
        return Fraction(text) if math.isfinite(text) else None
    s = str(text).strip().strip("$").strip()
    s = s.removesuffix(".").removesuffix("\\%").removesuffix("%").strip()
    m = _LATEX_FRAC.match(s.replace(" ", ""))
    if m and fractions:
        num, den = parse_number(m.group("num"), False), parse_number(m.group("den"), False)
        if num is None or den is None or den == 0:
            return None
        return -(num / den) if m.group("sign") else num / den
    m = (_NUMBER_FRAC if fractions else _NUMBER).fullmatch(s)
    if m is None:
        return None
    return _to_fraction(m.group("sign"), m.group("num"), m.groupdict().get("den"))


def _numbers_equal(a: Fraction, b: Fraction, tolerance: float) -> bool:
    return a == b if tolerance <= 0 else abs(float(a) - float(b)) <= tolerance


def _normalise(text: str, ignore_case: bool, collapse_whitespace: bool, strip_punctuation: bool) -> str:
    s = text.strip()
    if collapse_whitespace:
        s = " ".join(s.split())
    if strip_punctuation:
        s = s.strip(string.punctuation + " ")
    if ignore_case:
        s = s.casefold()
    return s


def last_boxed(text: str) -> Optional[str]:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, nested braces
    included; ``\\boxed 5`` gives ``5``. None if there is none or its braces never close."""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\b", text)]
    if not starts:
        return None
    end = starts[-1].end()
    rest = text[end:]
    stripped = rest.lstrip()
    if not stripped.startswith("{"):
        m = re.match(r"\s+([^\s$]+)", rest)
        return m.group(1) if m else None
    i = end + (len(rest) - len(stripped))
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{" and (j == 0 or text[j - 1] != "\\"):
            depth += 1
        elif text[j] == "}" and text[j - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}")


def _normalise_latex(s: str) -> str:
    """Formatting-only differences removed: spaces, ``$``, ``\\left``/``\\right``, thin spaces,
    ``\\dfrac``/``\\tfrac``, ``\\text{..}`` wrappers, ``^\\circ``, a trailing period."""
    s = _TEXT_WRAPPERS.sub(r"\1", s)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""),
                     ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("^\\circ", ""), ("^{\\circ}", ""),
                     ("$", ""), ("\\%", "%")):
        s = s.replace(old, new)
    s = "".join(s.split())
    s = re.sub(r"([\^_])\{(\w)\}", r"\1\2", s)  # x^{2} -> x^2
    return s.removesuffix(".")


_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_+-]*[ \t]*\n(.*?)```", re.DOTALL)


def extract_json(text: str, max_tries: int = 64) -> Any:
    """The JSON value ``text`` holds: the whole text, else the first fenced code block that
    parses, else the first ``{...}``/``[...]`` that parses (at most ``max_tries`` starts).
    Raises ``ValueError`` when there is none."""
    s = text.strip()
    try:
        return json.loads(s)
    except ValueError:
        pass
    for m in _FENCE.finditer(text):
        try:
            return json.loads(m.group(1).strip())
        except ValueError:
            continue
    decoder = json.JSONDecoder()
    tries = 0
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                return decoder.raw_decode(text, i)[0]
            except ValueError:
                tries += 1
                if tries >= max_tries:
                    break
    raise ValueError("no JSON value found")


# ----------------------------------------------------------------------------- the base
@dataclass(frozen=True)
class TextVerifier:
    """Base of the text verifiers: subclasses implement ``score(text, meta) -> float`` (which
    may raise: ``check`` turns any error into 0.0)."""

    answer_key: str = "answer"
    """The prompt-meta column holding the reference answer."""

    def reference(self, meta: Optional[Mapping]) -> Optional[str]:
        """The reference answer as a string, or None when the meta has none."""
        if not isinstance(meta, Mapping):
            return None
        value = meta.get(self.answer_key)
        if value is None or isinstance(value, bool):
            return None
        return value if isinstance(value, str) else str(value)

    def score(self, text: str, meta: Mapping) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, text: Any, meta: Optional[Mapping] = None) -> float:
        """The reward of ``text`` (a completion) for the prompt described by ``meta``, in
        [0, 1]; never raises (garbage, a missing reference and any error score 0.0)."""
        try:
            if not isinstance(text, str):
                return 0.0
            value = float(self.score(text, meta if isinstance(meta, Mapping) else {}))
        except Exception:  # noqa: BLE001 - a verifier must never take a run down
            return 0.0
        return value if math.isfinite(value) else 0.0

    def completion_texts(self, ctx: Any, batch: Any) -> list[str]:
        """Each row's completion tokens (``loss_mask_B_L``) decoded without special tokens."""
        tokenizer = getattr(ctx, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError(f"the {type(self).__name__} verifier decodes completions with ctx.tokenizer, which is not set")
        texts = []
        for i in range(int(batch.input_ids_B_L.shape[0])):
            ids = batch.input_ids_B_L[i][batch.loss_mask_B_L[i].bool()].tolist()
            try:
                texts.append(tokenizer.decode(ids, skip_special_tokens=True))
            except Exception:  # noqa: BLE001 - an undecodable row is a wrong answer
                texts.append("")
        return texts

    def __call__(self, ctx: Any, batch: Any) -> torch.Tensor:
        """One reward per row of ``batch`` (float32 [B], on the CPU)."""
        prompts = tuple(batch.prompts or ())
        rewards = [
            self.check(text, prompts[i].meta if i < len(prompts) else {})
            for i, text in enumerate(self.completion_texts(ctx, batch))
        ]
        return torch.tensor(rewards, dtype=torch.float32)


# ----------------------------------------------------------------------------- verifiers
@dataclass(frozen=True)
class ExactMatch(TextVerifier):
    """``exact_match``: the whole completion equals the reference, after normalisation."""

    ignore_case: bool = True
    """Compare case-insensitively."""
    collapse_whitespace: bool = True
    """Strip both ends and turn every run of whitespace into one space (ends are always stripped)."""
    strip_punctuation: bool = False
    """Also strip punctuation at both ends ("Paris." matches "Paris")."""

    def score(self, text: str, meta: Mapping) -> float:
        ref = self.reference(meta)
        if ref is None:
            return 0.0
        norm = lambda s: _normalise(s, self.ignore_case, self.collapse_whitespace, self.strip_punctuation)  # noqa: E731
        return float(norm(text) == norm(ref))


@dataclass(frozen=True)
class FinalNumber(TextVerifier):
    """``final_number``: the last number in the completion equals the reference numerically
    (``1,234`` = ``1234``, ``2.50`` = ``2.5``, ``$12`` = ``12``, ``-3``, ``3/4`` = ``0.75``)."""

    fractions: bool = True
    """Read ``a/b`` as one number (otherwise ``3/4`` is 3 then 4, and ends in 4)."""
    tolerance: float = 0.0
    """Absolute tolerance (0: exact comparison of the decimal values)."""
    marker: str = ""
    """If set (e.g. ``"####"`` or ``"The answer is"``), only the text after its last occurrence
    counts, and a completion without it scores 0."""

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise ConfigError(f"final_number: tolerance must be >= 0, got {self.tolerance}")

    def score(self, text: str, meta: Mapping) -> float:
        ref = parse_number(self.reference(meta) or "", self.fractions)
        if ref is None:
            return 0.0
        if self.marker:
            at = text.rfind(self.marker)
            if at < 0:
                return 0.0
            text = text[at + len(self.marker):]
        numbers = find_numbers(text, self.fractions)
        return float(bool(numbers) and _numbers_equal(numbers[-1], ref, self.tolerance))


@dataclass(frozen=True)
class Boxed(TextVerifier):
    """``boxed``: the content of the last ``\\boxed{...}`` equals the reference, numerically when
    both read as numbers, else as text with formatting differences removed. A reference that
    itself holds a ``\\boxed{}`` (a worked solution) is reduced to its boxed content."""

    numeric: bool = True
    """Compare numerically when both sides parse as numbers (``\\frac{1}{2}`` = ``0.5``)."""
    ignore_case: bool = False
    """Compare the text case-insensitively."""
    tolerance: float = 0.0
    """Absolute tolerance of numeric comparisons."""

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise ConfigError(f"boxed: tolerance must be >= 0, got {self.tolerance}")

    def score(self, text: str, meta: Mapping) -> float:
        ref = self.reference(meta)
        if ref is None:
            return 0.0
        got = last_boxed(text)
        if got is None:
            return 0.0
        if "\\boxed" in ref or "\\fbox" in ref:
            ref = last_boxed(ref)
            if ref is None:
                return 0.0
        a, b = _normalise_latex(got), _normalise_latex(ref)
        if not a:
            return 0.0
        if self.numeric:
            x, y = parse_number(a), parse_number(b)
            if x is not None and y is not None:
                return float(_numbers_equal(x, y, self.tolerance))
        if self.ignore_case:
            a, b = a.casefold(), b.casefold()
        return float(a == b)


@dataclass(frozen=True)
class RegexMatch(TextVerifier):
    """``regex``: 1 if ``pattern`` matches the completion; with ``group``, 1 only if that named
    group of the (last) match also equals the reference (numerically when both are numbers)."""

    pattern: str = ""
    """A Python regular expression (required)."""
    group: str = ""
    """A named group of ``pattern`` to compare with the reference ("" : a match is enough)."""
    fullmatch: bool = False
    """The pattern must match the whole (stripped) completion, not just somewhere in it."""
    ignore_case: bool = False
    """Match, and compare the group, case-insensitively."""
    last: bool = True
    """Compare the group of the last match (False: the first)."""
    numeric: bool = True
    """Compare the group numerically when it and the reference both parse as numbers."""

    def __post_init__(self) -> None:
        if not self.pattern:
            raise ConfigError("regex verifier needs a pattern option, e.g. pattern = 'answer is (?P<answer>-?\\d+)'")
        try:
            compiled = re.compile(self.pattern, re.IGNORECASE if self.ignore_case else 0)
        except re.error as exc:
            raise ConfigError(f"regex verifier: pattern {self.pattern!r} is not a valid regular expression: {exc}") from None
        if self.group and self.group not in compiled.groupindex:
            have = ", ".join(compiled.groupindex) or "none"
            raise ConfigError(f"regex verifier: pattern has no named group {self.group!r} (named groups: {have})")
        object.__setattr__(self, "_compiled", compiled)

    def score(self, text: str, meta: Mapping) -> float:
        compiled: re.Pattern = self._compiled  # type: ignore[attr-defined]
        if self.fullmatch:
            m = compiled.fullmatch(text.strip())
            matches = [m] if m else []
        elif self.group:
            matches = list(compiled.finditer(text))
        else:
            return float(compiled.search(text) is not None)
        if not matches:
            return 0.0
        if not self.group:
            return 1.0
        ref = self.reference(meta)
        got = (matches[-1] if self.last else matches[0]).group(self.group)
        if ref is None or got is None:
            return 0.0
        if self.numeric:
            x, y = parse_number(got), parse_number(ref)
            if x is not None and y is not None:
                return float(x == y)
        norm = lambda s: _normalise(s, self.ignore_case, True, False)  # noqa: E731
        return float(norm(got) == norm(ref))


@lru_cache(maxsize=256)
def _validator_for_text(schema_text: str, check_formats: bool) -> Any:
    return _make_validator(json.loads(schema_text), check_formats)


def _make_validator(schema: Any, check_formats: bool) -> Any:
    jsonschema = importlib.import_module("jsonschema")
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER if check_formats else None)


@dataclass(frozen=True)
class JsonSchema(TextVerifier):
    """``json_schema``: the completion (or the first JSON code block or object in it) parses as
    JSON and validates against the schema: ``schema`` (a table in the config), else the JSON
    schema string (or dict) in the prompt-meta column ``schema_key``. With neither, any valid
    JSON passes. Needs ``jsonschema`` once a schema is configured."""

    schema: dict = field(default_factory=dict)
    """The JSON schema every completion must satisfy (empty: use ``schema_key``)."""
    schema_key: str = ""
    """The prompt-meta column holding a per-prompt schema (used when ``schema`` is empty)."""
    check_formats: bool = False
    """Also check ``format`` keywords (``date``, ``email``, ...)."""

    def __post_init__(self) -> None:
        if self.schema and self.schema_key:
            raise ConfigError("json_schema verifier: give schema or schema_key, not both")
        if self.schema or self.schema_key:
            _require("jsonschema", "jsonschema", "json_schema")
        if self.schema:
            try:
                validator = _make_validator(self.schema, self.check_formats)
            except Exception as exc:  # jsonschema.SchemaError and friends
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(f"json_schema verifier: the schema option is not a valid JSON schema: {first}") from None
            object.__setattr__(self, "_validator", validator)

    def _validator_of(self, meta: Mapping) -> Any:
        if self.schema:
            return self._validator  # type: ignore[attr-defined]
        raw = meta.get(self.schema_key)
        if raw is None:
            raise ValueError(f"prompt meta has no {self.schema_key!r}")
        if isinstance(raw, str):
            return _validator_for_text(raw, self.check_formats)
        return _validator_for_text(json.dumps(raw, sort_keys=True), self.check_formats)

    def score(self, text: str, meta: Mapping) -> float:
        validator = self._validator_of(meta) if (self.schema or self.schema_key) else None
        value = extract_json(text)
        if validator is None:
            return 1.0
        return float(validator.is_valid(value))


@dataclass(frozen=True)
class MathEquiv(TextVerifier):
    """``math_equiv``: the completion's final answer is symbolically equal to the reference
    (``\\frac{1}{2}`` = ``0.5``, ``\\sqrt{4}`` = ``2``, sets, intervals, matrices), by the
    ``math-verify`` package (``from math_verify import parse, verify``)."""

    timeout_seconds: int = 5
    """Per parse/compare time limit (SIGALRM: only on the main thread; elsewhere no limit)."""
    float_rounding: int = 6
    """Decimal places numbers are rounded to before comparing."""

    def __post_init__(self) -> None:
        if self.timeout_seconds < 0:
            raise ConfigError(f"math_equiv: timeout_seconds must be >= 0, got {self.timeout_seconds}")
        module = _require("math_verify", "math-verify", "math_equiv")
        object.__setattr__(self, "_parse", module.parse)
        object.__setattr__(self, "_verify", module.verify)

    def _with_outer_timer(self, fn: Callable[[], Any]) -> Any:
        """math-verify's timeouts use SIGALRM and cancel whatever timer was armed (pytest-timeout's,
        a watchdog's): re-arm it afterwards with its remaining time."""
        outer, _ = signal.getitimer(signal.ITIMER_REAL)
        start = time.monotonic()
        try:
            return fn()
        finally:
            if outer > 0:
                signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-3))

    def score(self, text: str, meta: Mapping) -> float:
        ref = self.reference(meta)
        if ref is None or not text.strip():
            return 0.0
        main = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
        limit = (self.timeout_seconds or None) if main else None

        def run() -> bool:
            gold = self._parse(ref, parsing_timeout=limit)  # type: ignore[attr-defined]
            if not gold:
                gold = self._parse(f"${ref}$", parsing_timeout=limit)  # type: ignore[attr-defined]
            if not gold:
                return False
            pred = self._parse(text, parsing_timeout=limit)  # type: ignore[attr-defined]
            if not pred:
                return False
            return bool(self._verify(gold, pred, float_rounding=self.float_rounding, timeout_seconds=limit))  # type: ignore[attr-defined]

        return float(self._with_outer_timer(run) if limit else run())


VERIFIERS: dict[str, type[TextVerifier]] = {
    "exact_match": ExactMatch,
    "final_number": FinalNumber,
    "boxed": Boxed,
    "regex": RegexMatch,
    "json_schema": JsonSchema,
    "math_equiv": MathEquiv,
}
"""Registered name -> verifier class."""


def register_verifiers(register: Callable[..., None]) -> None:
    """Register every verifier of this module under its name (for ``opd_register_verifiers``)."""
    for name, cls in VERIFIERS.items():
        register(name, cls)
