"""SumChain: determinism, split disjointness, reference format, verifier robustness."""
from __future__ import annotations

import itertools

import pytest

from opdplug_local import tiny
from opdplug_local.tasks import SumChain, SumChainOptions, Task, register_builtin_tasks, split_of


@pytest.fixture(scope="module")
def task():
    return SumChain()


def test_protocol_and_registration(task):
    assert isinstance(task, Task)
    seen = {}
    register_builtin_tasks(lambda name, obj: seen.setdefault(name, obj))
    assert seen == {"sumchain": SumChain}
    made = SumChain(**{"min_len": 3, "max_len": 5})
    assert made.options == SumChainOptions(min_len=3, max_len=5)
    tok = tiny.build_tokenizer(["extra", *SumChain.words()])  # a shared, larger vocabulary
    shared = SumChain(tok, {"max_len": 4})
    assert shared.options.max_len == 4 and shared.tokenizer is tok
    with pytest.raises(ValueError):
        SumChainOptions(min_len=5, max_len=4)
    with pytest.raises(ValueError):
        SumChain(tiny.build_tokenizer(["a", "b"]))


def test_format_matches_the_spec(task):
    p = task.make_prompt([3, 5, 1, 7])
    tok = task.tokenizer
    assert tok.decode(list(p.prompt_ids)) == "<bos> a 3 b 5 c 1 d 7 ="
    assert tok.decode(list(p.reference_ids)) == "a 3 3 b 5 8 c 1 9 d 7 6 ; 6 <eos>"
    assert tok.decode(list(p.privileged_ids)) == "; 6"
    assert p.meta == {"answer": 6, "length": 4, "digits": [3, 5, 1, 7]}
    assert len(p.reference_ids) == task.max_new_tokens(4)
    terse = SumChain(echo_digits=False)
    q = terse.make_prompt([3, 5, 1, 7])
    assert q.prompt_ids == p.prompt_ids and q.privileged_ids == p.privileged_ids
    assert tok.decode(list(q.reference_ids)) == "a 3 b 8 c 9 d 6 ; 6 <eos>"
    assert len(q.reference_ids) == terse.max_new_tokens(4)
    assert terse.verify(q, list(q.reference_ids)) == 1.0


def test_prompts_deterministic_and_lengths(task):
    a = task.prompts(50, seed=3, split="train")
    b = task.prompts(50, seed=3, split="train")
    c = task.prompts(50, seed=4, split="train")
    assert a == b and [x.meta for x in a] == [x.meta for x in b]
    assert a != c
    lengths = {x.meta["length"] for x in a}
    assert lengths <= set(range(2, 9)) and len(lengths) > 3
    fixed = task.prompts(20, seed=0, split="eval", length=6)
    assert all(x.meta["length"] == 6 for x in fixed)
    shifted = SumChain(seed_offset=1).prompts(50, seed=3, split="train")
    assert [x.meta for x in shifted] != [x.meta for x in a]


def test_splits_never_overlap(task):
    train = {tuple(p.meta["digits"]) for s in range(3) for p in task.prompts(400, seed=s, split="train")}
    evals = {tuple(p.meta["digits"]) for s in range(3) for p in task.prompts(400, seed=s, split="eval")}
    assert train and evals and not train & evals
    for p in task.prompts(30, seed=0, split="eval", length=2):
        assert split_of(p.meta["digits"]) == "eval"
    # Exhaustively at T = 2: every instance belongs to exactly one split, about a tenth to eval.
    all2 = list(itertools.product(range(10), repeat=2))
    n_eval = sum(split_of(list(d)) == "eval" for d in all2)
    assert 3 <= n_eval <= 25


def test_verify_reference_corruptions_and_garbage(task):
    eos, pad = task.eos_id, task.tokenizer.pad_token_id
    for p in task.prompts(30, seed=1, split="eval"):
        ref = list(p.reference_ids)
        assert task.verify(p, ref) == 1.0
        assert task.verify(p, ref + [pad, pad]) == 1.0  # right padding after EOS is ignored
        assert task.first_error(p, ref) is None
        wrong = ref.copy()
        wrong[-2] = task._id[str((p.meta["answer"] + 1) % 10)]
        assert task.verify(p, wrong) == 0.0
        assert task.first_error(p, wrong) == len(ref) - 2
        assert task.verify(p, ref[:-1]) == 0.0  # no EOS
        assert task.verify(p, ref[:-3] + [eos]) == 0.0  # answer missing
    p = task.prompts(1, seed=0, split="train")[0]
    for garbage in ([], [eos], [10**9, -5, eos], ["x", None], None, [2.5], [eos, eos], list(range(40))):
        assert task.verify(p, garbage) == 0.0
    assert task.verify(p, [task._id[";"], task._id[str(p.meta["answer"])], eos]) == 1.0
    assert task.verify(type(p)(prompt_ids=p.prompt_ids), list(p.reference_ids)) == 0.0  # no meta
