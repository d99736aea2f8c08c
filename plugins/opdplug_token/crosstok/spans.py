"""Aligning two tokenizations of one text by their byte spans.

The student wrote ids ``s_1 .. s_n``; the teacher's tokenizer writes ``t_1 .. t_m`` for the same
text. Each token covers a byte span of the text's UTF-8 encoding; a *boundary* is a byte offset
where a token ends. The boundaries both sides share cut the text into *chunks*: the smallest
runs of tokens that cover the same bytes on both sides. A chunk of one student token and one
teacher token is one-to-one; one student token over several teacher tokens is exact by the chain
rule (its teacher log-prob is the sum over the teacher tokens); several student tokens against
several teacher tokens are only comparable as a whole.

Byte offsets come from each token's bytes where the tokenizer is byte-level (GPT-2 style: Llama 3,
Qwen, most BPE tokenizers), else from decoding growing prefixes: a prefix whose text is not a
prefix of the whole text (a token that ends inside a UTF-8 character) gives no boundary there,
so such tokens simply join a longer chunk.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode alphabet back to bytes (the byte-level BPE convention)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, codes)}


def is_byte_level(tokenizer) -> bool:
    """True when the tokenizer's decoder is the byte-level one (each token string maps to bytes)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except ValueError:
        return False
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders", []) or []]
    return "ByteLevel" in kinds


class TokenBytes:
    """The bytes of each id of one tokenizer, for byte-level tokenizers (cached per id)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.added = {int(i): str(t) for i, t in added.items()}
        self._cache: dict[int, Optional[bytes]] = {}
        self._decoder = _byte_decoder()

    def of(self, token_id: int) -> Optional[bytes]:
        """The token's bytes; None when its string is not in the byte alphabet."""
        if token_id not in self._cache:
            if token_id in self.added:  # added tokens are stored as plain text, not byte-mapped
                self._cache[token_id] = self.added[token_id].encode("utf-8")
            else:
                piece = self.tokenizer.convert_ids_to_tokens(int(token_id))
                try:
                    self._cache[token_id] = bytes(self._decoder[c] for c in piece)
                except (KeyError, TypeError):
                    self._cache[token_id] = None
        return self._cache[token_id]


def single_byte_ids(tokenizer) -> dict[int, int]:
    """Byte value -> the id of the byte-level token for that one byte (all 256 are there)."""
    encoder = {b: c for c, b in _byte_decoder().items()}
    vocab = tokenizer.get_vocab()
    return {b: vocab[encoder[b]] for b in range(256) if encoder[b] in vocab}


def boundaries(tokenizer, ids: Sequence[int], token_bytes: Optional[TokenBytes] = None) -> tuple[bytes, list[Optional[int]]]:
    """The text of ``ids`` (UTF-8 bytes) and, per token, the byte offset where it ends (None: not
    a clean boundary, e.g. inside a character or where decoding is not prefix-stable)."""
    if token_bytes is not None:
        pieces = [token_bytes.of(i) for i in ids]
        if all(p is not None for p in pieces):
            ends, total = [], 0
            for p in pieces:
                total += len(p)
                ends.append(total)
            return b"".join(pieces), ends
    text = tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    ends: list[Optional[int]] = []
    for k in range(1, len(ids) + 1):
        prefix = tokenizer.decode(list(ids[:k]), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        ends.append(len(prefix.encode("utf-8")) if text.startswith(prefix) and "\ufffd" not in prefix[-1:] else None)
    if ends:
        ends[-1] = len(text.encode("utf-8"))
    return text.encode("utf-8"), ends


@dataclass(frozen=True)
class Alignment:
    """Two tokenizations of one text, cut into chunks at their shared boundaries."""

    student_chunk_N: tuple[int, ...]
    """Chunk index of each student token (non-decreasing, from 0)."""
    teacher_chunk_M: tuple[int, ...]
    """Chunk index of each teacher token."""
    num_chunks: int
    """How many chunks the text was cut into."""

    def one_to_one(self) -> int:
        """Student tokens that are alone in their chunk with exactly one teacher token."""
        s = _counts(self.student_chunk_N, self.num_chunks)
        t = _counts(self.teacher_chunk_M, self.num_chunks)
        return sum(1 for c in range(self.num_chunks) if s[c] == 1 and t[c] == 1)

    def student_covered(self) -> int:
        """Student tokens alone in their chunk (one or more whole teacher tokens under them)."""
        s = _counts(self.student_chunk_N, self.num_chunks)
        return sum(1 for c in range(self.num_chunks) if s[c] == 1)


def _counts(chunk_of: Sequence[int], n: int) -> list[int]:
    out = [0] * n
    for c in chunk_of:
        out[c] += 1
    return out


def align(student_ends: Sequence[Optional[int]], teacher_ends: Sequence[Optional[int]]) -> Alignment:
    """Chunks from the two sides' token end offsets (same text, so the last ends agree)."""
    shared = {e for e in student_ends if e is not None} & {e for e in teacher_ends if e is not None}

    def chunks(ends: Sequence[Optional[int]]) -> tuple[int, ...]:
        out, c = [], 0
        for e in ends:
            out.append(c)
            if e is not None and e in shared:
                c += 1
        return tuple(out)

    s, t = chunks(student_ends), chunks(teacher_ends)
    return Alignment(student_chunk_N=s, teacher_chunk_M=t, num_chunks=len(shared))


def covering_tokens(student_ends: list, teacher_ends: list, text: bytes) -> tuple:
    """For each student token, ``(k, prefix)``: the teacher token ``k`` its first byte falls in
    and the bytes of that teacher token before it; all None when a side has a boundary inside a
    character (``None`` in its ends). The scorer keeps it as ``_Row.cover``."""
    if any(e is None for e in student_ends) or any(e is None for e in teacher_ends):
        return tuple(None for _ in student_ends)
    out, k, start = [], 0, 0
    t_starts = [0] + list(teacher_ends[:-1])
    for end in student_ends:
        while k < len(teacher_ends) - 1 and teacher_ends[k] <= start:
            k += 1
        out.append((k, text[t_starts[k]:start]) if teacher_ends else None)
        start = end
    return tuple(out)
