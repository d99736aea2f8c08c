"""Two vocabularies side by side: which student token has a teacher token with the identical
string, and which token ends an assistant turn in each chat template."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch

from opdplug_local.tokenization import END_OF_TURN_TOKENS

from .spans import TokenBytes, is_byte_level

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def id_strings(tokenizer) -> list[Optional[bytes]]:
    """Per id, the bytes the token stands for in running text; None for special tokens and
    pieces that stand for no fixed bytes."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    n = len(tokenizer)
    out: list[Optional[bytes]] = [None] * n
    if is_byte_level(tokenizer):
        table = TokenBytes(tokenizer)
        for i in range(n):
            if i not in special:
                out[i] = table.of(i)
        return out
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    for i, piece in enumerate(pieces):
        if i in special or piece is None:
            continue
        byte = _BYTE_PIECE.match(piece)
        out[i] = bytes([int(byte.group(1), 16)]) if byte else piece.replace("\u2581", " ").encode("utf-8")
    return out


def end_of_turn_id(tokenizer) -> int:
    """The id that ends an assistant turn in the tokenizer's chat template (its EOS without one)."""
    vocab = tokenizer.get_vocab()
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\x00END\x00"}], tokenize=False)
            after = text.split("\x00END\x00", 1)[1]
            for name in sorted((t for t in END_OF_TURN_TOKENS if t in vocab), key=lambda t: after.find(t) if t in after else 1 << 30):
                if name in after:
                    return int(vocab[name])
        except Exception:  # noqa: BLE001 - a template that cannot render this falls back to EOS
            pass
    if tokenizer.eos_token_id is None:
        raise ValueError("the teacher's tokenizer has no EOS token and its chat template no end-of-turn token")
    return int(tokenizer.eos_token_id)


@dataclass(frozen=True)
class VocabMap:
    """Student ids and the teacher ids with the identical string (end-of-turn ids paired too)."""

    student_ids_M: torch.Tensor
    """Student ids that have a teacher twin, ascending (long)."""
    teacher_ids_M: torch.Tensor
    """The twin of each, in the teacher's vocabulary (long)."""
    teacher_to_student_Vt: torch.Tensor
    """Per teacher id, its student twin or -1 (long)."""
    student_vocab: int
    """Size of the student's vocabulary."""

    @property
    def overlap(self) -> float:
        """Share of the student's vocabulary with a teacher twin."""
        return self.student_ids_M.numel() / max(self.student_vocab, 1)

    def pairs_2_M(self) -> torch.Tensor:
        return torch.stack([self.student_ids_M, self.teacher_ids_M])


def build_vocab_map(student_tok, teacher_tok, student_end: int, teacher_end: int) -> VocabMap:
    """Pair every student token with the teacher token of the identical string."""
    teacher_by_bytes: dict[bytes, int] = {}
    for i, b in enumerate(id_strings(teacher_tok)):
        if b is not None:
            teacher_by_bytes.setdefault(b, i)
    pairs = {student_end: teacher_end}
    for i, b in enumerate(id_strings(student_tok)):
        if b is not None and b in teacher_by_bytes and i not in pairs:
            pairs[i] = teacher_by_bytes[b]
    used_teacher: set[int] = set()
    s_ids, t_ids = [], []
    for s in sorted(pairs):  # keep the map one-to-one
        if pairs[s] not in used_teacher:
            used_teacher.add(pairs[s])
            s_ids.append(s)
            t_ids.append(pairs[s])
    t2s = torch.full((max(len(teacher_tok), max(t_ids, default=0) + 1),), -1, dtype=torch.long)
    t2s[torch.tensor(t_ids, dtype=torch.long)] = torch.tensor(s_ids, dtype=torch.long)
    return VocabMap(student_ids_M=torch.tensor(s_ids, dtype=torch.long), teacher_ids_M=torch.tensor(t_ids, dtype=torch.long),
                    teacher_to_student_Vt=t2s, student_vocab=len(student_tok))
