"""Tokenizers as they come: loading the one a model directory declares, checking that teacher and
student turn text into the same ids, and the ids that end a completion or pad a batch."""
from __future__ import annotations

import json
from pathlib import Path

from opdplug.errors import ConfigError, PreflightError


GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
"""``tokenizer_class`` values meaning "exactly what tokenizer.json says"."""


def load_tokenizer(path: str):
    """The tokenizer a model directory declares.

    A directory whose ``tokenizer_config.json`` names the generic class (a tokenizer built with
    the ``tokenizers`` library and saved as it is) is loaded as exactly that: ``AutoTokenizer``
    in transformers 5 would substitute the model type's own class (``Qwen2Tokenizer`` for a
    Qwen2 config), whose pre-tokenizer splits text differently from the saved ``tokenizer.json``:
    same vocabulary, other ids for the same text.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    declared = ""
    config = Path(path) / "tokenizer_config.json"
    if config.is_file() and (Path(path) / "tokenizer.json").is_file():
        try:
            declared = json.loads(config.read_text()).get("tokenizer_class") or ""
        except ValueError:
            declared = ""
    try:
        if declared in GENERIC_TOKENIZER_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # a missing or broken tokenizer beside the weights
        raise ConfigError(f"the tokenizer of {path!r} could not be loaded: {type(exc).__name__}: "
                          f"{(str(exc).splitlines() or [''])[0]}") from None


PROBE_TEXTS = (
    "Tom has 13 apples and buys 35 more. How many? 13 + 35 = 48.",
    "  Leading spaces,\ttabs\nand new lines; 3.14159, -42, 1,000,000 and 2025-12-04.",
    "def f(x):\n    return {\"key\": [x, 'y']}  # code",
    "Ünïcödé, emoji 🙂, 中文, Ελληνικά.",
)
"""Texts whose ids teacher and student must agree on: digits, whitespace, code, non-ASCII."""


def tokenization_probes(tokenizer) -> list[str]:
    """``PROBE_TEXTS``, and a short conversation in the tokenizer's chat template if it has one."""
    texts = list(PROBE_TEXTS)
    if getattr(tokenizer, "chat_template", None):
        try:
            texts.append(tokenizer.apply_chat_template(
                [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROBE_TEXTS[0]}],
                tokenize=False, add_generation_prompt=True))
        except Exception:  # noqa: BLE001 - a template that cannot render this is checked where it is used
            pass
    return texts


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_tokenizers(student_tok, teacher_tok) -> None:
    """Token-level losses compare distributions id by id: the vocabularies must be identical."""
    a, b = student_tok.get_vocab(), teacher_tok.get_vocab()
    if a != b:
        only_s = sorted(set(a) - set(b))
        only_t = sorted(set(b) - set(a))
        moved = sorted(t for t in set(a) & set(b) if a[t] != b[t])
        detail = (
            f"{len(only_s)} tokens only in the student's, {len(only_t)} only in the teacher's, "
            f"{len(moved)} with different ids"
        )
        example = (only_s or only_t or moved)[0]
        raise PreflightError(
            f"teacher and student tokenizers differ ({detail}, e.g. {example!r}); token-level "
            f"distillation needs the same vocabulary: use a teacher from the student's model family"
        )
    for text in tokenization_probes(student_tok):
        mine, theirs = _ids(student_tok, text), _ids(teacher_tok, text)
        if mine != theirs:
            raise PreflightError(
                f"teacher and student tokenizers have the same vocabulary but split text differently "
                f"({text[:40]!r}: {mine[:8]} vs {theirs[:8]}; the student's is {type(student_tok).__name__}, the "
                f"teacher's {type(teacher_tok).__name__}); save both with the same tokenizer.json and tokenizer_class"
            )
    # The pad token may differ (a Qwen2 tokenizer class declares one where a Llama one has
    # none): padding is masked everywhere and never scored.
    for name in ("bos_token_id", "eos_token_id"):
        if getattr(student_tok, name) != getattr(teacher_tok, name):
            raise PreflightError(
                f"teacher and student tokenizers disagree on {name} "
                f"({getattr(teacher_tok, name)} vs {getattr(student_tok, name)}); save both with the same special tokens"
            )


END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>", "<|end|>")
"""End-of-turn / end-of-text markers of common chat templates; a completion stops at any of them
that the vocabulary holds as a special token."""


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS, each id of the model's
    ``generation_config.eos_token_id`` (an int or a list), and the end-of-turn special tokens of
    common chat templates that the tokenizer has. EOS first (it is also the padding fallback)."""
    ids: list[int] = []

    def add(value) -> None:
        for i in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(i, int) and i >= 0 and i not in ids:
                ids.append(i)

    add(tokenizer.eos_token_id)
    config = getattr(model, "generation_config", None)
    if config is not None:
        add(config.eos_token_id)
    specials = set(getattr(tokenizer, "all_special_tokens", ()) or ()) | set(getattr(tokenizer, "added_tokens_encoder", {}) or {})
    for token in END_OF_TURN_TOKENS:
        if token in specials:
            add(tokenizer.convert_tokens_to_ids(token))
    return ids


def pad_id_of(tokenizer) -> int:
    """The pad id, or for a tokenizer without one (common for Llama-family models) the EOS id:
    padding is masked everywhere, any id does."""
    for i in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if i is not None:
            return int(i)
    return 0
