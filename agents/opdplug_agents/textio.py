"""The token interface between the text/tool environments and word-level models.

Sequence layout
---------------
One episode is one token sequence, kept exactly as written (never re-tokenized)::

    <bos> obs_0 ACT act_0 <eos> obs_1 ACT act_1 <eos> ... obs_n ACT act_n <eos>

* ``<bos>``: the tokenizer's BOS (left out when the tokenizer has none).
* ``obs_t``: the words of turn t's observation, one id per pre-token (``encode_observation``).
* ``ACT`` (``MARKER``): a fixed word, in no environment's vocabulary, that cues the action.
  Observation tokens never contain it, which is what makes the layout parseable.
* ``act_t``: the action's ids exactly as the actor wrote them (``encode_action`` for text such as
  an expert's), ended by ``<eos>``. A model action that hits its token budget without ``<eos>``
  is still sent to the environment; an ``<eos>`` written by the environment (no loss, producer
  ENV) then closes it, so every action span ends with exactly one ``<eos>``.
* The next observation follows the ``<eos>`` directly. The observation after the last action is
  not part of the sequence (nothing is predicted from it).

The prompt of an episode is ``<bos> obs_0 ACT``; its completion starts with ``act_0``.

Text <-> tokens
---------------
Observations are words separated by spaces, each one pre-token of the tiny tokenizer's
``Whitespace`` pre-tokenizer (``tools.pretokenize``). Actions are JSON tool calls; their
pre-tokens are runs of word characters or runs of punctuation, so ``{"tool": "move", ...``
becomes ``{"`` ``tool`` ``":`` ``"`` ``move`` .... ``decode_action`` joins pre-tokens with no
space, except between two word pre-tokens (which only whitespace can have separated, ``\\w+``
being greedy): ``{"tool":"move","args":{"dir":"north"}}``, compact JSON that ``parse_call``
reads as the canonical call, because no value an environment expects depends on the spaces
inside it (the calculator ignores them).
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

from .registries import env_class
from .tools import pretokenize

MARKER = "ACT"
"""The word between an observation and the action it cues (upper case: every environment's
vocabulary is lower case, and ``agent_words`` checks that none contains it)."""

_WORD_EDGE = re.compile(r"\w")


def agent_words(env_names: Iterable[str], registry=None) -> list[str]:
    """Every word a model needs for the environments ``env_names``: the union of their
    vocabularies (observations and expert actions), sorted, then ``MARKER``.

    Sorted, so the same environments always give the same token ids.

    :param env_names: registered environment names.
    :param registry: where the names are registered (default: the installed plugins').
    :raises ConfigError: an environment no plugin registered.
    :raises ValueError: an environment whose vocabulary holds ``MARKER``.
    """
    words: set[str] = set()
    for name in env_names:
        vocab = env_class(name, registry).vocabulary()
        if MARKER in vocab:
            raise ValueError(f"environment {name!r} uses the action marker {MARKER!r} as a word; rename that word")
        words.update(vocab)
    return [*sorted(words), MARKER]


def marker_id(tokenizer) -> int:
    """The id of ``MARKER`` in ``tokenizer``; a one-line ``ValueError`` if it has none."""
    vocab = tokenizer.get_vocab()
    if MARKER not in vocab:
        raise ValueError(f"the tokenizer has no action marker {MARKER!r}; build it with agent_words()")
    return vocab[MARKER]


def _encode_words(tokenizer, words: Sequence[str], what: str) -> list[int]:
    vocab = tokenizer.get_vocab()
    out = []
    for word in words:
        if word not in vocab:
            raise ValueError(f"{what} has the word {word!r}, which the tokenizer does not know")
        out.append(vocab[word])
    return out


def encode_observation(tokenizer, text: str, env: str = "") -> list[int]:
    """The exact ids of an observation's words (no BOS, no marker).

    :param env: the environment's name, for the error message.
    :raises ValueError: (one line) naming the first word the tokenizer does not know and the env.
    """
    # Looked up word by word instead of calling the tokenizer: an unknown word must fail loudly,
    # never become <unk>.
    return _encode_words(tokenizer, pretokenize(text), f"an observation of {env or 'the environment'}")


def encode_action(tokenizer, text: str, env: str = "") -> list[int]:
    """The ids of an action text (e.g. an expert's call), ``<eos>`` appended.

    :raises ValueError: (one line) naming a word the tokenizer does not know and the env.
    """
    ids = _encode_words(tokenizer, pretokenize(text), f"an action in {env or 'the environment'}")
    return [*ids, tokenizer.eos_token_id]


def join_pretokens(tokens: Sequence[str]) -> str:
    """Pre-tokens back to text: no space, except between two pre-tokens that meet with word
    characters on both sides (``["7", "+", "3"]`` -> ``"7+3"``, ``["ann", "bob"]`` -> ``"ann bob"``)."""
    out: list[str] = []
    for tok in tokens:
        if out and out[-1] and tok and _WORD_EDGE.match(out[-1][-1]) and _WORD_EDGE.match(tok[0]):
            out.append(" ")
        out.append(tok)
    return "".join(out)


def decode_action(tokenizer, ids: Sequence[int]) -> str:
    """The action text of action token ids: everything before the first ``<eos>`` (if any),
    joined by ``join_pretokens``. Special tokens a model may write (``<bos>``, ``<pad>``) stay
    in the text, which the environment then rejects as malformed."""
    ids = [int(i) for i in ids]
    eos = tokenizer.eos_token_id
    if eos in ids:
        ids = ids[: ids.index(eos)]
    return join_pretokens(tokenizer.convert_ids_to_tokens(ids))


def split_actions(tokenizer, completion_ids: Sequence[int]) -> list[list[int]]:
    """The action spans of a completion (ids after a prompt that ends with the marker), each
    without its ``<eos>``.

    Two layouts are read:

    * the full layout (the completion holds the marker): an action runs to the first ``<eos>``
      (always present, see the module docstring), the observation after it to the next marker;
      a trailing span without ``<eos>`` is an action cut off by the end of the sequence;
    * actions only (no marker, e.g. the loss-masked tokens of a batch): spans split on ``<eos>``.
      An action that was truncated in the episode then runs into the next one.
    """
    ids = [int(i) for i in completion_ids]
    eos, marker = tokenizer.eos_token_id, marker_id(tokenizer)
    full_layout = marker in ids
    actions: list[list[int]] = []
    pos = 0
    while pos < len(ids):
        end = ids.index(eos, pos) if eos in ids[pos:] else len(ids)
        actions.append(ids[pos:end])
        pos = end + 1
        if full_layout and pos < len(ids):
            # Observation words never include the marker: the first one after the eos ends it.
            if marker not in ids[pos:]:
                break  # a trailing observation with no action after it
            pos = ids.index(marker, pos) + 1
    return actions


class WordCodec:
    """The word-level codec of ``opdplug_agents.dialogue``: the layout of this module, for the
    built-in tiny models whose vocabulary is the environments' words (``agent_words``)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.bos_ids = (tokenizer.bos_token_id,) if tokenizer.bos_token_id is not None else ()

    def observation_ids(self, env, text: str, first: bool) -> tuple[int, ...]:
        """The observation's word ids, then the marker (the same for the first turn)."""
        return (*encode_observation(self.tokenizer, text, getattr(env, "name", "")), marker_id(self.tokenizer))

    def expert_action_ids(self, env, text: str) -> list[int]:
        """``encode_action``: the words of the canonical call, then ``<eos>``."""
        return encode_action(self.tokenizer, text, getattr(env, "name", ""))

    def action_text(self, env, ids) -> str:
        """``decode_action``."""
        return decode_action(self.tokenizer, ids)

    def split_actions(self, completion_ids, env=None) -> list[list[int]]:
        """``split_actions`` (``env`` is not needed: the marker delimits turns)."""
        return split_actions(self.tokenizer, completion_ids)
