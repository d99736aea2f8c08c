"""Model directories and a run context for the cross-tokenizer tests: byte-level BPE tokenizers
built locally, Llama / Qwen2 models with random weights, a small chat dataset."""
from __future__ import annotations

import json
from pathlib import Path

from opdplug.testing.models import DEFAULT_CORPUS, build_bpe_tokenizer, build_model_dir

CORPUS = list(DEFAULT_CORPUS) + [f"What is {a} plus {b}? The answer is {a + b}." for a in range(12) for b in range(12)]


def drop_last_merges(tokenizer, n: int):
    """The tokenizer with its last ``n`` BPE merges removed: its tokenization of any text is an
    intermediate state of the original's, so every original token splits into whole tokens of
    this one (the vocabulary is kept; the removed merges' tokens are simply never produced)."""
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    data["model"]["merges"] = data["model"]["merges"][:-n]
    out = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)),
                                  eos_token=tokenizer.eos_token, bos_token=tokenizer.bos_token,
                                  clean_up_tokenization_spaces=False)
    out.chat_template = tokenizer.chat_template
    return out


def write_dataset(path: Path, n: int = 24) -> Path:
    rows = [{"prompt": f"What is {i % 7} plus {i % 5}?", "answer": str(i % 7 + i % 5)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_pair(tmp: Path, teacher_tok=None, *, student_arch="llama", teacher_arch="qwen2"):
    """(student dir, teacher dir, dataset file): the teacher's tokenizer is ``teacher_tok``
    (default: the student's own)."""
    student_tok = build_bpe_tokenizer(CORPUS, vocab_size=420, template="chatml")
    student = build_model_dir(tmp / "student", student_arch, student_tok, hidden_size=32)
    teacher = build_model_dir(tmp / "teacher", teacher_arch, teacher_tok or student_tok, hidden_size=48)
    return student, teacher, write_dataset(tmp / "data.jsonl")


def config_data(tmp: Path, student_dir: Path, teacher_dir: Path, data: Path, **sections) -> dict:
    out = {
        "run": {"output_dir": str(tmp / "run"), "steps": 2, "batch_size": 4, "progress": False, "resume": False},
        "student": {"path": str(student_dir)},
        "teacher": {"path": str(teacher_dir), "scorer": "cross_tokenizer", "top_k": 8},
        "task": {"name": "dataset", "options": {"path": str(data), "eval_fraction": 0.25, "verifier": "final_number"}},
        "rollout": {"max_new_tokens": 12},
        "loss": {"support": "sampled", "estimator": "k2"},
    }
    for name, table in sections.items():
        out.setdefault(name, {}).update(table)
    return out
