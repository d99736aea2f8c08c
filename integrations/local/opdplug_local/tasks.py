"""Prompt sources: the ``Task`` protocol and the built-in synthetic reasoning task, SumChain.

A task turns seeds into ``Prompt`` objects (token ids plus what a verifier needs) and scores
completions. Tasks are registered by name through ``opd_register_tasks``; the registered object is
a factory called as ``factory(tokenizer, options)`` or ``factory(**options)``, and the classes here
accept both.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Protocol, Union, runtime_checkable

from opdplug.types import Prompt

Split = Literal["train", "eval"]


@runtime_checkable
class Task(Protocol):
    """What the training loop and evaluators need from a prompt source."""

    name: str
    """Registry name of the task, e.g. ``"sumchain"``."""
    tokenizer: Any
    """The tokenizer the task's token ids are written in."""

    def words(self) -> list[str]:
        """Every word the task's prompts and completions use (for ``tiny.build_tokenizer``)."""
        ...

    def prompts(
        self, n: int, *, seed: int, split: Split, length: Optional[int] = None
    ) -> list[Prompt]:
        """``n`` prompts of ``split``, deterministic in ``seed``; ``length`` fixes the difficulty,
        None draws it uniformly from the task's range. Train and eval never share an instance."""
        ...

    def verify(self, prompt: Prompt, completion_ids: list[int]) -> float:
        """1.0 if the completion's final answer is right, else 0.0. Never raises."""
        ...

    def max_new_tokens(self, length: int) -> int:
        """Generation budget for prompts of this ``length``."""
        ...


# ----------------------------------------------------------------------------- SumChain
LABELS: tuple[str, ...] = tuple("abcdefghijklmnop")
"""Step labels, one per step; their count bounds the chain length (16)."""
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
EQUALS = "="
ANSWER_SEP = ";"


@dataclass(frozen=True)
class SumChainOptions:
    """Config of the ``sumchain`` task (TOML table ``[task]`` options)."""

    min_len: int = 2
    """Fewest steps T of a chain when ``prompts(length=None)`` draws lengths (>= 1)."""
    max_len: int = 8
    """Most steps T of a chain when lengths are drawn (<= 16, the number of labels)."""
    seed_offset: int = 0
    """Added to every seed, to get a different prompt stream from the same run seed."""
    echo_digits: bool = True
    """Write each step as ``label digit sum`` (the looked-up prompt digit spelled out before the
    running sum) rather than the terser ``label sum``. Separating the lookup from the addition is
    what lets the tiny teacher learn the task in minutes on a CPU: with ``label sum`` a 4-layer
    model was still at chance after 400 steps, with ``label digit sum`` it is at >99% after 800."""
    eval_fraction_mod: int = 10
    """An instance is in the eval split iff hash(digits) % eval_fraction_mod == 0 (1/10 by default).
    Determined by the digits alone, so train and eval never overlap whatever the seed."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.max_len <= len(LABELS):
            raise ValueError(
                f"sumchain needs 1 <= min_len <= max_len <= {len(LABELS)}, "
                f"got min_len={self.min_len}, max_len={self.max_len}"
            )
        if self.eval_fraction_mod < 2:
            raise ValueError(f"eval_fraction_mod must be >= 2, got {self.eval_fraction_mod}")


def split_of(digits: list[int], eval_fraction_mod: int = 10) -> Split:
    """The split an instance belongs to, from its digits alone (stable across runs and machines)."""
    digest = hashlib.sha256(("sumchain:" + "".join(map(str, digits))).encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") % eval_fraction_mod == 0 else "train"


def running_sums(digits: list[int]) -> list[int]:
    """Prefix sums of ``digits`` modulo 10: the value written at each step of the reference."""
    out, total = [], 0
    for d in digits:
        total = (total + d) % 10
        out.append(total)
    return out


class SumChain:
    """Multi-step modular addition: length T = number of steps sets the difficulty.

    Prompt (T = 4):     ``<bos> a 3 b 5 c 1 d 7 =``
    Reference:          ``a 3 3 b 5 8 c 1 9 d 7 6 ; 6 <eos>``     (default, ``echo_digits``)
    Terse reference:    ``a 3 b 8 c 9 d 6 ; 6 <eos>``             (``echo_digits=False``)

    Step i writes its label (a local pattern), the digit with that label in the prompt (content
    lookup), then the running sum mod 10 of the digits so far: that digit plus the sum written at
    the previous step. A wrong step corrupts every later one, so errors compound with T
    and training on teacher-forced references alone suffers from exposure bias. The final answer
    follows ``;``; ``verify`` checks only it (and that the completion ends with EOS).
    """

    name = "sumchain"
    options_class = SumChainOptions  # the core validates [task.options] against it

    def __init__(
        self,
        tokenizer: Any = None,
        options: Union[SumChainOptions, dict, None] = None,
        **option_kwargs: Any,
    ) -> None:
        """Build the task.

        :param tokenizer: a tokenizer knowing ``words()`` (e.g. ``tiny.build_tokenizer``);
            None builds the task's own word-level tokenizer.
        :param options: a ``SumChainOptions`` or a dict of its fields.
        :param option_kwargs: ``SumChainOptions`` fields given directly (``SumChain(max_len=6)``).
        """
        if isinstance(options, SumChainOptions):
            options = dataclasses.asdict(options)
        self.options = SumChainOptions(**{**(options or {}), **option_kwargs})
        if tokenizer is None:
            from .tiny import build_tokenizer  # local import: tasks do not need torch otherwise

            tokenizer = build_tokenizer(self.words())
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        missing = [w for w in self.words() if w not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks sumchain words {missing}")
        self._id = {w: vocab[w] for w in self.words()}
        self._word = {i: w for w, i in self._id.items()}
        self.bos_id: Optional[int] = tokenizer.bos_token_id
        self.eos_id: int = tokenizer.eos_token_id
        self._digit_of_id = {self._id[d]: int(d) for d in DIGITS}

    # -- vocabulary ------------------------------------------------------------------------
    @staticmethod
    def words() -> list[str]:
        """Labels a..p, digits 0..9, ``=`` and ``;``."""
        return [*LABELS, *DIGITS, EQUALS, ANSWER_SEP]

    # -- text ------------------------------------------------------------------------------
    @staticmethod
    def prompt_words(digits: list[int]) -> list[str]:
        """``a 3 b 5 ... =`` for ``digits``, without BOS."""
        out = []
        for label, d in zip(LABELS, digits):
            out += [label, str(d)]
        return out + [EQUALS]

    def reference_words(self, digits: list[int]) -> list[str]:
        """``a 3 3 b 5 8 ... ; 6`` for ``digits`` (``a 3 b 8 ... ; 6`` without ``echo_digits``), no EOS."""
        sums = running_sums(digits)
        out = []
        for label, d, s in zip(LABELS, digits, sums):
            out += [label, str(d), str(s)] if self.options.echo_digits else [label, str(s)]
        return out + [ANSWER_SEP, str(sums[-1])]

    def make_prompt(self, digits: list[int]) -> Prompt:
        """The ``Prompt`` for one digit sequence (either split; see ``split_of``)."""
        if not 1 <= len(digits) <= len(LABELS) or any(not 0 <= d <= 9 for d in digits):
            raise ValueError(f"sumchain digits must be 1..{len(LABELS)} values in 0..9: {digits}")
        prompt_ids = [self._id[w] for w in self.prompt_words(digits)]
        if self.bos_id is not None:
            prompt_ids = [self.bos_id, *prompt_ids]
        ref_words = self.reference_words(digits)
        reference_ids = [self._id[w] for w in ref_words] + [self.eos_id]
        answer = running_sums(digits)[-1]
        return Prompt(
            prompt_ids=tuple(prompt_ids),
            reference_ids=tuple(reference_ids),
            privileged_ids=(self._id[ANSWER_SEP], self._id[str(answer)]),
            meta={"answer": answer, "length": len(digits), "digits": list(digits)},
        )

    # -- sampling --------------------------------------------------------------------------
    def prompts(
        self, n: int, *, seed: int, split: Split = "train", length: Optional[int] = None
    ) -> list[Prompt]:
        """``n`` prompts of ``split``, deterministic in ``(seed, split, length, seed_offset)``.

        Digit sequences are drawn uniformly (lengths uniform in ``[min_len, max_len]`` when
        ``length`` is None) and rejection-sampled into ``split``, so the eval split is a fixed
        tenth of all sequences of each length. Short lengths have few instances (100 at T = 2)
        and repeat within a large ``n``; that is fine for training and evaluation alike.
        """
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if length is not None and not 1 <= length <= len(LABELS):
            raise ValueError(f"length must be in 1..{len(LABELS)}, got {length}")
        opts = self.options
        # A string seed is hashed by random.Random with SHA-512: stable across processes.
        rng = random.Random(f"sumchain:{seed + opts.seed_offset}:{split}:{length}")
        out: list[Prompt] = []
        tries = 0
        while len(out) < n:
            t = length if length is not None else rng.randint(opts.min_len, opts.max_len)
            digits = [rng.randrange(10) for _ in range(t)]
            tries += 1
            if split_of(digits, opts.eval_fraction_mod) == split:
                out.append(self.make_prompt(digits))
            elif tries > 1000 * (n + 10):
                # Only reachable for tiny spaces (T = 1 has 10 instances, maybe none in eval).
                raise ValueError(f"sumchain has no {split!r} instances of length {length}")
        return out

    def max_new_tokens(self, length: int) -> int:
        """Exactly the reference's length, ``3 T + 3`` (``2 T + 3`` without ``echo_digits``: steps,
        ``;``, answer, EOS): a model that has not finished by then is wrong anyway, and a tight
        budget keeps rollouts cheap."""
        return (3 if self.options.echo_digits else 2) * length + 3

    # -- scoring ---------------------------------------------------------------------------
    def _completion_words(self, completion_ids: Any) -> Optional[list[Optional[str]]]:
        """Words before the first EOS (None for ids outside the task's words), or None if the
        completion has no EOS."""
        ids = [int(i) for i in completion_ids]
        if self.eos_id not in ids:
            return None
        return [self._word.get(i) for i in ids[: ids.index(self.eos_id)]]

    def verify(self, prompt: Prompt, completion_ids: Any) -> float:
        """1.0 iff the completion ends ``; <answer> <eos>`` with the right answer, else 0.0.

        Anything after the first EOS (e.g. padding) is ignored; intermediate steps are not
        checked (see ``first_error`` for that). Never raises: garbage scores 0.0.
        """
        try:
            words = self._completion_words(completion_ids)
            if words is None or len(words) < 2 or words[-2] != ANSWER_SEP:
                return 0.0
            return 1.0 if words[-1] == str(int(prompt.meta["answer"])) else 0.0
        except Exception:  # noqa: BLE001 - a verifier must never take a run down
            return 0.0

    def first_error(self, prompt: Prompt, completion_ids: Any) -> Optional[int]:
        """Index (into ``completion_ids``) of the first token differing from the reference, or
        None if the completion equals the reference up to and including its EOS.

        SumChain has a unique correct completion, so this locates the earliest wrong step exactly
        (used by step-level credit and SCoRe-style correction).
        """
        ids = [int(i) for i in completion_ids]
        ref = list(prompt.reference_ids)
        for i, r in enumerate(ref):
            if i >= len(ids) or ids[i] != r:
                return i
        return None


def register_builtin_tasks(register: Callable[[str, Any], None]) -> None:
    """Register opdplug's built-in tasks: ``sumchain`` -> ``SumChain``."""
    register("sumchain", SumChain)
