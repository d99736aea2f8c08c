"""Cross-tokenizer OPD end to end, through the real entry points: a Llama-3-template teacher with
its own byte-level BPE vocabulary trains a ChatML student; ``opdplug check`` reports the
alignment first; bad input is one line."""
from __future__ import annotations

import json

import pytest

from opdplug.cli import main
from opdplug.config import dump_toml
from opdplug.testing.models import build_bpe_tokenizer

from crosstok_toys import CORPUS, config_data, make_pair

pytest.importorskip("transformers")

OTHER_CORPUS = [f"{a} + {b} = {a + b}; the sum of {a} and {b} is {a + b}." for a in range(15) for b in range(9)] + [
    "A different family writes different merges, sizes and chat templates.",
]


@pytest.fixture(scope="module")
def family_pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xtok")
    teacher_tok = build_bpe_tokenizer(OTHER_CORPUS, vocab_size=350, template="llama3")
    return tmp, make_pair(tmp, teacher_tok, teacher_arch="qwen3")


def write(tmp, name, data) -> str:
    path = tmp / name
    path.write_text(dump_toml(data))
    return str(path)


def test_a_teacher_from_another_family_trains_the_student(family_pair, tmp_path):
    from opdplug.loop import train
    from opdplug.manager import make_plugin_manager
    from opdplug.config import parse_config

    _, (student, teacher, data) = family_pair
    manager = make_plugin_manager()
    cfg = config_data(tmp_path, student, teacher, data, loss={"support": "sampled", "estimator": "k2"},
                      run={"output_dir": str(tmp_path / "run"), "steps": 2, "batch_size": 4, "progress": False, "resume": False})
    result = train(parse_config(cfg, manager.plugin_tables()), manager)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "xtok/one_to_one" in r]
    assert len(steps) == 2 and result is not None
    for r in steps:
        assert 0.0 < r["xtok/one_to_one"] <= 1.0 and r["xtok/mean_chunk_tokens"] >= 1.0
        assert 0.0 < r["xtok/vocab_overlap"] < 1.0  # different vocabularies that share some strings


@pytest.mark.parametrize("support", ["xtok_topk", "xtok_full_uld", "uld", "xtok_project"])
def test_every_cross_vocabulary_support_runs(family_pair, tmp_path, support):
    from opdplug.loop import train
    from opdplug.manager import make_plugin_manager
    from opdplug.config import parse_config

    _, (student, teacher, data) = family_pair
    manager = make_plugin_manager()
    cfg = config_data(tmp_path, student, teacher, data, loss={"support": support, "divergence": "reverse_kl", "estimator": "k2"},
                      run={"output_dir": str(tmp_path / "run"), "steps": 1, "batch_size": 4, "progress": False, "resume": False})
    train(parse_config(cfg, manager.plugin_tables()), manager)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r and r["loss"] == r["loss"] for r in rows)  # finite, not NaN
    if support == "xtok_project":  # every trained token has a teacher distribution, inside chunks too
        assert all(r.get("xtok_unprojected_tokens", 0) == 0 for r in rows if "loss" in r)


def test_check_reports_the_alignment_before_training(family_pair, tmp_path, capsys):
    _, (student, teacher, data) = family_pair
    path = write(tmp_path, "c.toml", config_data(tmp_path, student, teacher, data))
    assert main(["check", path]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["tokenizers"] == "aligned by the scorer"
    assert 0.0 < report["alignment_one_to_one"] <= 1.0
    assert 0.0 < report["alignment_vocab_overlap"] < 1.0
    assert "alignment_mean_chunk_tokens" in report


def test_a_supports_that_compares_ids_is_refused_in_one_line(family_pair, tmp_path, capsys):
    _, (student, teacher, data) = family_pair
    path = write(tmp_path, "c.toml", config_data(tmp_path, student, teacher, data, loss={"support": "teacher_topk"},
                                                 run={"output_dir": str(tmp_path / "run"), "steps": 1, "batch_size": 2,
                                                      "progress": False, "resume": False}))
    assert main(["train", path]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another tokenizer" in err[0] and "xtok_topk" in err[0]


@pytest.mark.parametrize("support", ["xtok_project", "xtok_topk"])
def test_a_support_that_reads_the_teachers_top_k_without_one_is_refused_in_one_line(family_pair, tmp_path, capsys, support):
    _, (student, teacher, data) = family_pair
    cfg = config_data(tmp_path, student, teacher, data, loss={"support": support, "divergence": "reverse_kl"},
                      run={"output_dir": str(tmp_path / "run"), "steps": 1, "batch_size": 2, "progress": False,
                           "resume": False})
    cfg["teacher"]["top_k"] = 0
    path = write(tmp_path, "c.toml", cfg)
    assert main(["check", path]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "teacher.top_k > 0" in err[0] and support in err[0]
    assert not (tmp_path / "run").exists()


def test_a_teacher_template_that_cannot_render_is_one_line(tmp_path, capsys):
    teacher_tok = build_bpe_tokenizer(OTHER_CORPUS, vocab_size=300, template=None)  # no chat template
    student, teacher, data = make_pair(tmp_path, teacher_tok)
    path = write(tmp_path, "c.toml", config_data(tmp_path, student, teacher, data))
    assert main(["check", path]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chat template" in err[0]


def test_rows_the_teacher_cannot_reproduce_are_skipped_and_counted(family_pair):
    import torch
    from opdplug_local.models import collate, pad_id_of
    from opdplug.config import parse_config
    from opdplug.manager import make_plugin_manager
    from opdplug.prepare import setup, teardown
    from opdplug.types import PRODUCER_STUDENT

    tmp, (student, teacher, data) = family_pair
    manager = make_plugin_manager()
    ctx = setup(parse_config(config_data(tmp, student, teacher, data), manager.plugin_tables()), manager)
    try:
        tok = ctx.tokenizer
        prompts = ctx.task.prompts(2, seed=0, split="train")
        emoji = tok("🙂", add_special_tokens=False)["input_ids"]
        assert len(emoji) > 1  # byte pieces: cutting after the first is inside the character
        rows = [tok("The answer is 8.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id], emoji[:1]]
        batch = collate(prompts, rows, producer=PRODUCER_STUDENT, pad_id=pad_id_of(tok), on_policy=True)
        scorer = ctx.component("scorers", "cross_tokenizer", ctx.config.teacher.options, "teacher.scorer")
        with torch.no_grad():  # a byte-level teacher writes the cut character as byte tokens
            assert bool(scorer(ctx, batch).scored_B_L[1].any())
        scorer.state["teacher_byte_ids"] = {}  # as a teacher without byte tokens (sentencepiece, no fallback)
        scorer.metrics()
        with torch.no_grad():
            scores = scorer(ctx, batch)
        assert bool(scores.scored_B_L[0].any()) and not bool(scores.scored_B_L[1].any())
        assert scorer.metrics()["xtok/rows_skipped"] == 1.0
    finally:
        teardown(ctx)
