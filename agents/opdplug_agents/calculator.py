"""Integer arithmetic for the ``calc`` tool, by a hand-written parser: no ``eval``, no ``ast``.

Grammar (precedence climbing; ``//`` and ``%`` are Python's floor division and modulo)::

    expr  := unary (op unary)*          op: + - (level 1), * // % (level 2), left-associative
    unary := "-" unary | atom
    atom  := integer | "(" expr ")"

Limits keep it cheap whatever the model writes: at most ``MAX_CHARS`` characters, integers of at
most ``MAX_DIGITS`` digits, parentheses nested at most ``MAX_DEPTH`` deep, and every intermediate
value within ``MAX_ABS``. Errors raise ``CalcError`` whose message is one of a few fixed phrases.
"""
from __future__ import annotations

import operator
import re
from typing import Callable

MAX_CHARS = 100
MAX_DIGITS = 9
MAX_DEPTH = 16
MAX_ABS = 10**12

# Binary operators: symbol -> (precedence, function).
BINARY: dict[str, tuple[int, Callable[[int, int], int]]] = {
    "+": (1, operator.add),
    "-": (1, operator.sub),
    "*": (2, operator.mul),
    "//": (2, operator.floordiv),
    "%": (2, operator.mod),
}
_TOKEN = re.compile(r"\s*(?:([0-9]+)|(//|[-+*%()]))")  # ASCII digits only

BAD_EXPRESSION = "bad expression"
DIVISION_BY_ZERO = "division by zero"
TOO_BIG = "number too big"
MESSAGES = (BAD_EXPRESSION, DIVISION_BY_ZERO, TOO_BIG)
"""Every message a ``CalcError`` can carry."""


class CalcError(ValueError):
    """An expression the calculator refuses; ``str(error)`` is one of ``MESSAGES``."""


def _tokens(expr: str) -> list[str]:
    """Numbers and operator symbols of ``expr``; anything else is a ``CalcError``."""
    out, pos, end = [], 0, len(expr.rstrip())
    while pos < end:
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise CalcError(BAD_EXPRESSION)
        number, symbol = m.groups()
        if number is not None and len(number) > MAX_DIGITS:
            raise CalcError(TOO_BIG)
        out.append(number if number is not None else symbol)
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise CalcError(BAD_EXPRESSION)
        self.pos += 1
        return token

    def expr(self, min_level: int = 1, depth: int = 0) -> int:
        left = self.unary(depth)
        while (op := self.peek()) in BINARY and BINARY[op][0] >= min_level:
            self.take()
            level, fn = BINARY[op]
            right = self.expr(level + 1, depth)  # higher level binds tighter: left-associative
            if op in ("//", "%") and right == 0:
                raise CalcError(DIVISION_BY_ZERO)
            left = _checked(fn(left, right))
        return left

    def unary(self, depth: int) -> int:
        # A chain of minus signs could recurse without bound: count it as nesting too.
        if depth > MAX_DEPTH:
            raise CalcError(BAD_EXPRESSION)
        token = self.take()
        if token == "-":
            return _checked(-self.unary(depth + 1))
        if token == "(":
            value = self.expr(1, depth + 1)
            if self.take() != ")":
                raise CalcError(BAD_EXPRESSION)
            return value
        if token[0] in "0123456789":
            return int(token)
        raise CalcError(BAD_EXPRESSION)


def _checked(value: int) -> int:
    if abs(value) > MAX_ABS:
        raise CalcError(TOO_BIG)
    return value


def evaluate(expr: str) -> int:
    """The integer value of ``expr`` (e.g. ``"7 + 3 * (2 - 5)"`` -> ``-2``).

    :raises CalcError: on anything else (syntax, division by zero, sizes beyond the limits).
    """
    if not isinstance(expr, str) or len(expr) > MAX_CHARS:
        raise CalcError(BAD_EXPRESSION)
    parser = _Parser(_tokens(expr))
    value = parser.expr()
    if parser.peek() is not None:
        raise CalcError(BAD_EXPRESSION)
    return value
