"""Bad input to cross-tokenizer OPD through ``opdplug train``: one line on stderr, a non-zero
exit, no traceback and no run directory; and a row the teacher cannot align is skipped and
counted while the run goes on."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from opdplug.cli import main
from opdplug.config import dump_toml
from opdplug.hookspecs import hookimpl
from opdplug.testing.models import build_bpe_tokenizer, build_model_dir, build_sentencepiece_tokenizer

from crosstok_toys import CORPUS, config_data, make_pair, write_dataset

pytest.importorskip("transformers")

RUN = {"steps": 1, "batch_size": 2, "progress": False, "resume": False, "threads": 1}


def train_fails_in_one_line(tmp, cfg, capsys) -> str:
    """Run ``opdplug train`` on ``cfg``; the one line it printed (after checking the rest)."""
    cfg["run"] = {**RUN, "output_dir": str(tmp / "run")}
    path = tmp / "c.toml"
    path.write_text(dump_toml(cfg))
    capsys.readouterr()  # what building the model directories printed
    assert main(["train", str(path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert not (tmp / "run").exists()
    return err[0]


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_xtok_project_with_a_tokenizer_that_is_not_byte_level_is_one_line(tmp_path, capsys, side):
    byte_level = build_bpe_tokenizer(CORPUS, vocab_size=420, template="chatml")
    pieces = build_sentencepiece_tokenizer(CORPUS, vocab_size=300, template="llama3")
    student_tok, teacher_tok = (pieces, byte_level) if side == "student" else (byte_level, pieces)
    student = build_model_dir(tmp_path / "student", "llama", student_tok, hidden_size=32)
    teacher = build_model_dir(tmp_path / "teacher", "qwen2", teacher_tok, hidden_size=48)
    cfg = config_data(tmp_path, student, teacher, write_dataset(tmp_path / "data.jsonl"),
                      loss={"support": "xtok_project", "divergence": "reverse_kl"})
    line = train_fails_in_one_line(tmp_path, cfg, capsys)
    assert f"the {side}'s tokenizer is not byte-level" in line and "'xtok_project'" in line and "xtok_topk" in line


@dataclass(frozen=True)
class TopKOnly:
    """A scorer that sends only the teacher's top-k, as a server does (``sglang``)."""

    def __call__(self, ctx, batch):
        from opdplug_local.scorers import LocalScorer

        return LocalScorer()(ctx, batch).replace(hidden_B_L_H=None, lm_head_V_H=None)


class TopKOnlyPlugin:
    @staticmethod
    @hookimpl
    def opd_register_scorers(register):
        register("topk_only", TopKOnly)


@pytest.fixture
def with_topk_only_scorer(monkeypatch):
    """``opdplug train`` with the ``topk_only`` scorer registered beside the installed plugins."""
    import opdplug.manager

    make = opdplug.manager.make_plugin_manager
    monkeypatch.setattr(opdplug.manager, "make_plugin_manager", lambda plugins=(), **kw: make([*plugins, TopKOnlyPlugin], **kw))


@pytest.mark.parametrize("support", ["xtok_full", "xtok_full_uld"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["cross_tokenizer", "same_tokenizer"])
def test_a_full_support_with_a_scorer_that_sends_only_the_top_k_is_one_line(tmp_path, capsys, with_topk_only_scorer,
                                                                             support, wrapped):
    teacher_tok = build_bpe_tokenizer(CORPUS[::2], vocab_size=300, template="llama3") if wrapped else None
    student, teacher, data = make_pair(tmp_path, teacher_tok)
    cfg = config_data(tmp_path, student, teacher, data, loss={"support": support, "divergence": "reverse_kl"})
    cfg["teacher"].update({"scorer": "cross_tokenizer", "options": {"scorer": "topk_only"}} if wrapped else
                          {"scorer": "topk_only"})
    line = train_fails_in_one_line(tmp_path, cfg, capsys)
    assert f"loss.support = {support!r}" in line and "sends only its top-k" in line and "xtok_project" in line


# A Llama-2-style template that refuses a system turn: the dataset's system prompt cannot be
# rendered for this teacher.
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


@pytest.mark.parametrize("template", [None, NO_SYSTEM_TEMPLATE], ids=["no_template", "template_raises"])
def test_a_teacher_template_that_cannot_render_the_conversation_is_one_line(tmp_path, capsys, template):
    teacher_tok = build_bpe_tokenizer(CORPUS[::2], vocab_size=300, template=None)
    if template:
        teacher_tok.chat_template = template
    student, teacher, data = make_pair(tmp_path, teacher_tok)
    cfg = config_data(tmp_path, student, teacher, data)
    cfg["task"]["options"]["system_prompt"] = "You are a careful calculator."
    line = train_fails_in_one_line(tmp_path, cfg, capsys)
    assert "chat template" in line
    if template:
        assert "System role not supported" in line


def test_rows_the_teacher_cannot_align_are_skipped_and_counted_and_the_run_goes_on(tmp_path, capsys):
    # A SentencePiece teacher that never saw most characters and has no byte tokens: the untrained
    # student's completions (bytes that are not UTF-8, characters the teacher writes as <unk>)
    # cannot be reproduced by it.
    teacher_tok = build_sentencepiece_tokenizer(["What is 1 plus 2? The answer is 3."], vocab_size=60, template="llama3")
    student, teacher, data = make_pair(tmp_path, teacher_tok)
    cfg = config_data(tmp_path, student, teacher, data,
                      run={**RUN, "steps": 2, "batch_size": 4, "output_dir": str(tmp_path / "run")})
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    capsys.readouterr()
    assert main(["train", str(path)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "xtok/rows_skipped" in r]
    assert len(steps) == 2 and all(r["xtok/rows_skipped"] >= 1 and r["loss"] == r["loss"] for r in steps)
