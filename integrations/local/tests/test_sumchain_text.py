"""SumChain written as text rows: the same instances and answers as the word-level task, splits
that never overlap, and rows the dataset task's ``final_number`` verifier (marker ``;``) reads."""
from __future__ import annotations

import json

import pytest

from opdplug_local.sumchain_text import WORD_LABELS, instance, write_sumchain_text
from opdplug_local.tasks import running_sums, split_of
from opdplug_local.verifiers import FinalNumber


def test_a_row_spells_each_step_as_label_digit_running_sum():
    row = instance([3, 5, 1, 7])
    assert row == {"prompt": "alpha 3 bravo 5 charlie 1 delta 7",
                   "solution": "alpha 3 3 bravo 5 8 charlie 1 9 delta 7 6 ; 6", "answer": "6", "length": 4}
    assert instance([2, 9], labels=("a", "b"))["solution"] == "a 2 2 b 9 1 ; 1"


def test_bad_digits_or_lengths_are_one_clear_error():
    with pytest.raises(ValueError, match="1..16 digits in 0..9"):
        instance([])
    with pytest.raises(ValueError, match="1..16 digits"):
        instance([10])
    with pytest.raises(ValueError, match="min_len <= max_len"):
        write_sumchain_text("unused", 1, 1, min_len=5, max_len=2)


def test_files_hold_disjoint_splits_with_right_answers(tmp_path):
    files = write_sumchain_text(tmp_path, 300, 40, seed=3, min_len=2, max_len=6)
    rows = {s: [json.loads(line) for line in files[s].read_text().splitlines()] for s in ("train", "eval")}
    assert len(rows["train"]) == 300 and len(rows["eval"]) == 40
    assert not list(tmp_path.glob("*.tmp"))
    for split, split_rows in rows.items():
        for r in split_rows:
            digits = [int(w) for w in r["prompt"].split()[1::2]]
            assert 2 <= len(digits) == r["length"] <= 6
            assert split_of(digits) == split
            assert r["answer"] == str(running_sums(digits)[-1])
    assert write_sumchain_text(tmp_path / "again", 300, 40, seed=3, min_len=2, max_len=6)["train"].read_text() == \
        files["train"].read_text()


def test_final_number_after_the_marker_checks_the_answer():
    row, verifier = instance([4, 4, 4]), FinalNumber(marker=";")
    assert verifier.check(row["solution"], row) == 1.0
    assert verifier.check(row["solution"][:-1] + "3", row) == 0.0
    assert verifier.check("alpha 4 4 bravo 4 8 charlie 4 2", row) == 0.0  # cut off before ";"
    assert len(WORD_LABELS) == 16 and len(set(WORD_LABELS)) == 16
