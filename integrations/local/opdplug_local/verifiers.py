"""Answer verifiers chosen by name, for outcome rewards (``[credit] verifier = "final_number"``)
and dataset tasks: frozen dataclasses (fields are options) called ``verifier(ctx, batch) ->
rewards_B`` (each row's ``loss_mask_B_L`` tokens decoded by ``ctx.tokenizer``, float32 [B]) or
``verifier.check(completion_text, prompt_meta) -> float`` (1.0 right, 0.0 wrong; never raises).
The reference is ``meta[answer_key]``. ``json_schema`` needs ``jsonschema`` and ``math_equiv``
``math-verify``: without it, building them is a one-line ``ConfigError``.
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


def _require(module: str, pip_name: str, who: str) -> Any:
    """``import module``, or a one-line ``ConfigError`` telling how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"the {who} verifier needs the {pip_name} package: pip install {pip_name} "
                          f"(or pip install 'opdplug-local[verifiers]')") from None


def _nonnegative(who: str, name: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{who} verifier: {name} must be >= 0, got {value}")


# A sign counts only when it does not follow a word or a number ("5-3" is 5 and 3, not 5 and -3);
# "-" or the Unicode minus; "1,234" needs groups of three ("1,2,3" is three numbers).
_NUMBER_HEAD = r"(?<![\w.])(?P<sign>[-\u2212])?\$?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_NUMBER = re.compile(_NUMBER_HEAD)
_NUMBER_FRAC = re.compile(_NUMBER_HEAD + r"(?:\s*/\s*(?P<den>\d+)(?!\.?\d))?")
_LATEX_FRAC = re.compile(r"^(?P<sign>-)?\\[dt]?frac\{(?P<num>[^{}]+)\}\{(?P<den>[^{}]+)\}$")


def _to_fraction(m: re.Match) -> Optional[Fraction]:
    value, den = Fraction(m.group("num").replace(",", "")), int(m.groupdict().get("den") or 1)
    return None if den == 0 else (-value if m.group("sign") else value) / den


def find_numbers(text: str, fractions: bool = True) -> list[Fraction]:
    """Every number in ``text``, in order, as exact fractions: ``1,234``, ``-3``, ``2.50``,
    ``$12``, ``.5`` and (``fractions``) ``3/4``. A fraction with a zero denominator is skipped."""
    values = (_to_fraction(m) for m in (_NUMBER_FRAC if fractions else _NUMBER).finditer(text))
    return [v for v in values if v is not None]


def parse_number(text: Any, fractions: bool = True) -> Optional[Fraction]:
    """``text`` as one number (the whole string; spaces, ``$``, a trailing ``%`` or ``.`` and
    ``\\frac{a}{b}`` allowed), or None if it is not exactly one number."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return Fraction(text) if math.isfinite(text) else None
    s = str(text).strip().strip("$").strip().removesuffix(".").removesuffix("\\%").removesuffix("%").strip()
    m = _LATEX_FRAC.match(s.replace(" ", ""))
    if m and fractions:
        num, den = parse_number(m.group("num"), False), parse_number(m.group("den"), False)
        return None if num is None or not den else (-(num / den) if m.group("sign") else num / den)
    m = (_NUMBER_FRAC if fractions else _NUMBER).fullmatch(s)
    return _to_fraction(m) if m else None


def _same_number(a: Any, b: Any, tolerance: float = 0.0) -> Optional[bool]:
    """Whether ``a`` and ``b`` are equal numbers; None unless both parse as numbers."""
    x, y = parse_number(a), parse_number(b)
    if x is None or y is None:
        return None
    return x == y if tolerance <= 0 else abs(x - y) <= tolerance


def _normalise(text: str, ignore_case: bool, collapse_whitespace: bool = True, strip_punctuation: bool = False) -> str:
    s = " ".join(text.split()) if collapse_whitespace else text.strip()
    s = s.strip(string.punctuation + " ") if strip_punctuation else s
    return s.casefold() if ignore_case else s


def last_boxed(text: str) -> Optional[str]:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, nested braces
    included; ``\\boxed 5`` gives ``5``. None if there is none or its braces never close."""
    starts = list(re.finditer(r"\\(?:boxed|fbox)\b", text))
    if not starts:
        return None
    end = starts[-1].end()
    if not text[end:].lstrip().startswith("{"):
        m = re.match(r"\s+([^\s$]+)", text[end:])
        return m.group(1) if m else None
    i, depth = text.index("{", end), 0
    for j in range(i, len(text)):
        if text[j] in "{}" and text[j - 1] != "\\":
            depth += 1 if text[j] == "{" else -1
            if depth == 0:
                return text[i + 1 : j]
    return None


_LATEX_NOISE = (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\dfrac", "\\frac"),
                ("\\tfrac", "\\frac"), ("^\\circ", ""), ("^{\\circ}", ""), ("$", ""), ("\\%", "%"))


def _normalise_latex(s: str) -> str:
    """Formatting-only differences removed: spaces, ``$``, ``\\left``/``\\right``, thin spaces,
    ``\\dfrac``/``\\tfrac``, ``\\text{..}`` wrappers, ``^\\circ``, ``x^{2}`` braces, a final period."""
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}", r"\1", s)
    for old, new in _LATEX_NOISE:
        s = s.replace(old, new)
    return re.sub(r"([\^_])\{(\w)\}", r"\1\2", "".join(s.split())).removesuffix(".")


_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_+-]*[ \t]*\n(.*?)```", re.DOTALL)


def extract_json(text: str, max_tries: int = 64) -> Any:
    """The JSON value ``text`` holds: the whole text, else the first fenced code block that
    parses, else the first ``{...}``/``[...]`` that parses (trying at most ``max_tries`` starts).
    Raises ``ValueError`` when there is none."""
    for candidate in (text.strip(), *(m.group(1).strip() for m in _FENCE.finditer(text))):
        try:
            return json.loads(candidate)
        except ValueError:
            pass
    decoder, tries = json.JSONDecoder(), 0
    for i, ch in enumerate(text):
        if ch in "{[" and tries < max_tries:
            tries += 1
            try:
                return decoder.raw_decode(text, i)[0]
            except ValueError:
                pass
    raise ValueError("no JSON value found")


@dataclass(frozen=True)
class TextVerifier:
    """Base of the text verifiers: subclasses implement ``score(text, meta) -> float``, which
    may raise (``check`` turns any error into 0.0)."""

    answer_key: str = "answer"
    """The prompt-meta column holding the reference answer."""

    def reference(self, meta: Optional[Mapping]) -> Optional[str]:
        """The reference answer as a string, or None when the meta has none."""
        value = meta.get(self.answer_key) if isinstance(meta, Mapping) else None
        return None if value is None or isinstance(value, bool) else str(value)

    def score(self, text: str, meta: Mapping) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, text: Any, meta: Optional[Mapping] = None) -> float:
        """The reward of the completion ``text`` for the prompt described by ``meta``, in [0, 1];
        never raises (garbage, a missing reference and any error score 0.0)."""
        try:
            value = float(self.score(text, meta if isinstance(meta, Mapping) else {})) if isinstance(text, str) else 0.0
        except Exception:  # noqa: BLE001 - a verifier must never take a run down
            return 0.0
        return value if math.isfinite(value) else 0.0

    def __call__(self, ctx: Any, batch: Any) -> torch.Tensor:
        """One reward per row of ``batch`` (float32 [B], on the CPU): ``check`` of the row's
        completion (its ``loss_mask_B_L`` tokens decoded without special tokens)."""
        tokenizer, prompts = getattr(ctx, "tokenizer", None), tuple(batch.prompts or ())
        if tokenizer is None:
            raise ConfigError(f"the {type(self).__name__} verifier decodes completions with ctx.tokenizer, which is not set")
        rewards = []
        for i in range(int(batch.input_ids_B_L.shape[0])):
            try:
                text = tokenizer.decode(batch.input_ids_B_L[i][batch.loss_mask_B_L[i].bool()].tolist(), skip_special_tokens=True)
            except Exception:  # noqa: BLE001 - an undecodable row is a wrong answer
                text = None
            rewards.append(self.check(text, prompts[i].meta if i < len(prompts) else {}))
        return torch.tensor(rewards, dtype=torch.float32)


@dataclass(frozen=True)
class ExactMatch(TextVerifier):
    """``exact_match``: the whole completion equals the reference, after normalisation."""

    ignore_case: bool = True
    """Compare case-insensitively."""
    collapse_whitespace: bool = True
    """Turn every run of whitespace into one space (both ends are always stripped)."""
    strip_punctuation: bool = False
    """Also strip punctuation at both ends ("Paris." matches "Paris")."""

    def score(self, text: str, meta: Mapping) -> float:
        ref = self.reference(meta)
        options = (self.ignore_case, self.collapse_whitespace, self.strip_punctuation)
        return float(ref is not None and _normalise(text, *options) == _normalise(ref, *options))


@dataclass(frozen=True)
class FinalNumber(TextVerifier):
    """``final_number``: the last number in the completion equals the reference numerically
    (``1,234`` = ``1234``, ``2.50`` = ``2.5``, ``$12`` = ``12``, ``-3``, ``3/4`` = ``0.75``)."""

    fractions: bool = True
    """Read ``a/b`` as one number (otherwise ``3/4`` is 3 then 4, and ends in 4)."""
    tolerance: float = 0.0
    """Absolute tolerance (0: exact comparison)."""
    marker: str = ""
    """If set (e.g. ``"####"``, ``"The answer is"``), only the text after its last occurrence
    counts, and a completion without it scores 0."""

    def __post_init__(self) -> None:
        _nonnegative("final_number", "tolerance", self.tolerance)

    def score(self, text: str, meta: Mapping) -> float:
        ref = parse_number(self.reference(meta) or "", self.fractions)
        if ref is None or (self.marker and self.marker not in text):
            return 0.0
        numbers = find_numbers(text[text.rfind(self.marker) + len(self.marker):] if self.marker else text, self.fractions)
        return float(bool(numbers) and bool(_same_number(numbers[-1], ref, self.tolerance)))


@dataclass(frozen=True)
class Boxed(TextVerifier):
    """``boxed``: the content of the last ``\\boxed{...}`` equals the reference, numerically when
    both read as numbers, else as text with formatting differences removed. A reference that
    holds a ``\\boxed{}`` itself (a worked solution) is reduced to its boxed content."""

    numeric: bool = True
    """Compare numerically when both sides parse as numbers (``\\frac{1}{2}`` = ``0.5``)."""
    ignore_case: bool = False
    """Compare the text case-insensitively."""
    tolerance: float = 0.0
    """Absolute tolerance of numeric comparisons."""

    def __post_init__(self) -> None:
        _nonnegative("boxed", "tolerance", self.tolerance)

    def score(self, text: str, meta: Mapping) -> float:
        ref, got = self.reference(meta), last_boxed(text)
        if ref is not None and ("\\boxed" in ref or "\\fbox" in ref):
            ref = last_boxed(ref)
        if ref is None or got is None or not _normalise_latex(got):
            return 0.0
        a, b = _normalise_latex(got), _normalise_latex(ref)
        same = _same_number(a, b, self.tolerance) if self.numeric else None
        return float(same if same is not None else _normalise(a, self.ignore_case) == _normalise(b, self.ignore_case))


@dataclass(frozen=True)
class RegexMatch(TextVerifier):
    """``regex``: 1 if ``pattern`` matches the completion; with ``group``, 1 only if that named
    group of the (last) match also equals the reference (numerically when both are numbers)."""

    pattern: str = ""
    """A Python regular expression (required)."""
    group: str = ""
    """A named group of ``pattern`` to compare with the reference ("": a match is enough)."""
    fullmatch: bool = False
    """The pattern must match the whole (stripped) completion, not just somewhere in it."""
    ignore_case: bool = False
    """Match, and compare the group, case-insensitively."""
    last: bool = True
    """Compare the group of the last match (False: of the first)."""
    numeric: bool = True
    """Compare the group numerically when it and the reference both parse as numbers."""

    def __post_init__(self) -> None:
        if not self.pattern:
            raise ConfigError("the regex verifier needs a pattern option, e.g. pattern = 'answer is (?P<answer>-?\\d+)'")
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
        matches = [m for m in ([compiled.fullmatch(text.strip())] if self.fullmatch else compiled.finditer(text)) if m]
        if not matches or not self.group:
            return float(bool(matches))
        ref, got = self.reference(meta), (matches[-1] if self.last else matches[0]).group(self.group)
        if ref is None or got is None:
            return 0.0
        same = _same_number(got, ref) if self.numeric else None
        return float(same if same is not None else _normalise(got, self.ignore_case) == _normalise(ref, self.ignore_case))


def _make_validator(schema: Any, check_formats: bool) -> Any:
    """A jsonschema validator of ``schema`` (its draft from ``$schema``), the schema checked first."""
    cls = importlib.import_module("jsonschema").validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER if check_formats else None)


@lru_cache(maxsize=256)
def _validator_for_text(schema_text: str, check_formats: bool) -> Any:
    return _make_validator(json.loads(schema_text), check_formats)


@dataclass(frozen=True)
class JsonSchema(TextVerifier):
    """``json_schema``: the completion (or the first JSON code block or object in it) parses as
    JSON and validates against ``schema`` (a table in the config), else against the schema (a
    JSON string or a dict) in the prompt-meta column ``schema_key``. With neither, any valid JSON
    passes. Needs ``jsonschema`` once a schema is configured."""

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
                object.__setattr__(self, "_validator", _make_validator(self.schema, self.check_formats))
            except Exception as exc:  # jsonschema.SchemaError and friends
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ConfigError(f"json_schema verifier: the schema option is not a valid JSON schema: {first}") from None

    def score(self, text: str, meta: Mapping) -> float:
        validator = None
        if self.schema:
            validator = self._validator  # type: ignore[attr-defined]
        elif self.schema_key:
            raw = meta[self.schema_key]  # a missing column raises: 0.0
            validator = _validator_for_text(raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True), self.check_formats)
        value = extract_json(text)
        return 1.0 if validator is None else float(validator.is_valid(value))


@dataclass(frozen=True)
class MathEquiv(TextVerifier):
    """``math_equiv``: the completion's final answer is symbolically equal to the reference
    (``\\frac{1}{2}`` = ``0.5``, ``\\sqrt{4}`` = ``2``, sets, intervals, matrices), by the
    ``math-verify`` package (``from math_verify import parse, verify``)."""

    timeout_seconds: int = 5
    """Per parse/compare time limit (SIGALRM: on the main thread only; elsewhere no limit; 0: none)."""
    float_rounding: int = 6
    """Decimal places numbers are rounded to before comparing."""

    def __post_init__(self) -> None:
        _nonnegative("math_equiv", "timeout_seconds", self.timeout_seconds)
        module = _require("math_verify", "math-verify", "math_equiv")
        object.__setattr__(self, "_parse", module.parse)
        object.__setattr__(self, "_verify", module.verify)

    @staticmethod
    def _keeping_outer_timer(fn: Callable[[], Any]) -> Any:
        """math-verify's timeouts use SIGALRM and cancel whatever timer was armed (pytest-timeout's,
        a watchdog's): re-arm it afterwards with the time it had left."""
        outer, start = signal.getitimer(signal.ITIMER_REAL)[0], time.monotonic()
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
        parse = lambda s: self._parse(s, parsing_timeout=limit)  # type: ignore[attr-defined]  # noqa: E731

        def run() -> bool:
            gold = parse(ref) or parse(f"${ref}$")
            pred = parse(text) if gold else None
            return bool(pred) and bool(self._verify(gold, pred, float_rounding=self.float_rounding,  # type: ignore[attr-defined]
                                                    timeout_seconds=limit))

        return float(self._keeping_outer_timer(run) if limit else run())


VERIFIERS: dict[str, type[TextVerifier]] = {
    "exact_match": ExactMatch, "final_number": FinalNumber, "boxed": Boxed, "regex": RegexMatch,
    "json_schema": JsonSchema, "math_equiv": MathEquiv,
}  # registered name -> verifier class


def register_verifiers(register: Callable[..., None]) -> None:
    """Register every verifier of this module under its name (for ``opd_register_verifiers``)."""
    for name, cls in VERIFIERS.items():
        register(name, cls)
