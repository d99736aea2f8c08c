"""Multi-teacher OPD through the real entry points: ``[[teachers]]`` routed by a dataset column,
a weighted mixture, per-teacher metrics, a teacher of another family beside one of the student's,
and the one-line errors."""
from __future__ import annotations

import json

import pytest
import torch

from opdplug.cli import main
from opdplug.config import dump_toml, parse_config
from opdplug.manager import make_plugin_manager
from opdplug.prepare import setup, teardown
from opdplug.testing.models import build_bpe_tokenizer, build_model_dir

from crosstok_toys import config_data, make_pair

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A student, a teacher with its tokenizer, a second teacher of another family, and rows
    of two domains."""
    tmp = tmp_path_factory.mktemp("multi")
    student, teacher, _ = make_pair(tmp)
    other_tok = build_bpe_tokenizer([f"{a} times {b} is {a * b}." for a in range(12) for b in range(12)],
                                    vocab_size=330, template="llama3")
    other = build_model_dir(tmp / "other", "qwen3", other_tok, hidden_size=40)
    rows = [{"prompt": f"What is {i % 7} plus {i % 5}?", "answer": str(i % 7 + i % 5), "domain": "add"} if i % 2 else
            {"prompt": f"What is {i % 4} times {i % 6}?", "answer": str((i % 4) * (i % 6)), "domain": "mul"} for i in range(24)]
    data = tmp / "two_domains.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp, student, teacher, other, data


def multi_config(tmp, student, teacher, other, data, *, router="column", router_options=None, **sections):
    cfg = config_data(tmp, student, teacher, data, **sections)
    cfg["teacher"] = {"scorer": "multi_teacher", "top_k": 4,
                      "options": {"router": router, "router_options": router_options or
                                  {"column": "domain", "routes": {"add": "adder", "mul": "multiplier"}}}}
    cfg["teachers"] = [{"name": "adder", "path": str(teacher)}, {"name": "multiplier", "path": str(other)}]
    return cfg


def student_batch(ctx, n: int, seed: int, max_new_tokens: int):
    """The student's on-policy samples of ``n`` training prompts, seeded."""
    from opdplug_local.models import model_rollout
    from opdplug.types import PRODUCER_STUDENT

    prompts = ctx.task.prompts(n, seed=seed, split="train")
    return model_rollout(ctx.student_module(), prompts, producer=PRODUCER_STUDENT, max_new_tokens=max_new_tokens,
                         temperature=1.0, top_p=1.0, tokenizer=ctx.tokenizer,
                         generator=torch.Generator().manual_seed(seed), on_policy=True)


def test_rows_go_to_the_teacher_of_their_domain(world):
    tmp, student, teacher, other, data = world
    manager = make_plugin_manager()
    ctx = setup(parse_config(multi_config(tmp, student, teacher, other, data), manager.plugin_tables()), manager)
    try:
        batch = student_batch(ctx, 6, seed=0, max_new_tokens=8)
        scorer = ctx.component("scorers", "multi_teacher", ctx.config.teacher.options, "teacher.scorer")
        with torch.no_grad():
            scores = scorer(ctx, batch)
            adder_scorer, view = scorer.state["teachers"]["adder"]
            direct = adder_scorer(view, batch)  # the exact same-tokenizer path, every row
        add_rows = [b for b, p in enumerate(batch.prompts) if p.meta["domain"] == "add"]
        mask = batch.loss_mask_B_L.bool()
        for b in add_rows:
            torch.testing.assert_close(scores.token_logprobs_B_L[b][mask[b]], direct.token_logprobs_B_L[b][mask[b]])
        m = scorer.metrics()
        assert m["teacher/adder/rows"] == len(add_rows) and m["teacher/multiplier/rows"] == 6 - len(add_rows)
        assert "teacher/multiplier/xtok/one_to_one" in m and "teacher/adder/xtok/one_to_one" not in m
    finally:
        teardown(ctx)


def test_a_mixture_scores_the_mixture_probability(world):
    tmp, student, teacher, _, data = world
    manager = make_plugin_manager()
    cfg = multi_config(tmp, student, teacher, teacher, data, router="mixture",
                       router_options={"weights": {"adder": 3, "multiplier": 1}})
    ctx = setup(parse_config(cfg, manager.plugin_tables()), manager)
    try:
        batch = student_batch(ctx, 3, seed=1, max_new_tokens=6)
        scorer = ctx.component("scorers", "multi_teacher", ctx.config.teacher.options, "teacher.scorer")
        with torch.no_grad():
            mixed = scorer(ctx, batch)
            one = scorer.state["teachers"]["adder"][0](scorer.state["teachers"]["adder"][1], batch)
        mask = batch.loss_mask_B_L.bool()
        # both teachers are the same model here, so the mixture is that model: 0.75 p + 0.25 p = p
        torch.testing.assert_close(mixed.token_logprobs_B_L[mask], one.token_logprobs_B_L[mask], atol=1e-5, rtol=1e-5)
    finally:
        teardown(ctx)


def test_a_short_routed_run_logs_each_teacher(world, tmp_path):
    from opdplug.loop import train

    _, student, teacher, other, data = world
    manager = make_plugin_manager()
    cfg = multi_config(tmp_path, student, teacher, other, data)
    train(parse_config(cfg, manager.plugin_tables()), manager)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "teacher/adder/rows" in r]
    assert len(steps) == 2
    assert sum(r["teacher/adder/rows"] + r["teacher/multiplier/rows"] for r in steps) == 8
    resolved = (tmp_path / "run" / "config.toml")
    if resolved.exists():  # the resolved config keeps the array of tables
        assert resolved.read_text().count("[[teachers]]") == 2


@pytest.mark.parametrize("command", ["check", "train"])
def test_a_teacher_routed_to_but_not_defined_is_one_line(world, tmp_path, capsys, command):
    _, student, teacher, other, data = world
    cfg = multi_config(tmp_path, student, teacher, other, data,
                       router_options={"column": "domain", "routes": {"add": "adder", "mul": "physicist"}})
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    assert main([command, str(path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'physicist' is routed to but not defined" in err[0]
    assert not (tmp_path / "run").exists()


def test_check_reports_each_teachers_alignment_before_training(world, tmp_path, capsys):
    _, student, teacher, other, data = world
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(multi_config(tmp_path, student, teacher, other, data)))
    assert main(["check", str(path)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["teacher_adder_rows"] > 0 and report["teacher_multiplier_rows"] > 0
    # the other family's teacher: its alignment statistics (the same family's: none)
    assert 0.0 < report["teacher_multiplier_alignment_one_to_one"] <= 1.0
    assert report["teacher_multiplier_alignment_mean_chunk_tokens"] >= 1.0
    assert 0.0 < report["teacher_multiplier_alignment_vocab_overlap"] < 1.0
    assert not any(key.startswith("teacher_adder_alignment") for key in report)  # same tokenizer: no alignment
    assert not (tmp_path / "run").exists()


def test_a_domain_without_a_route_is_one_line(world, tmp_path, capsys):
    _, student, teacher, other, data = world
    cfg = multi_config(tmp_path, student, teacher, other, data,
                       router_options={"column": "domain", "routes": {"add": "adder"}},
                       run={"output_dir": str(tmp_path / "run"), "steps": 1, "batch_size": 8, "progress": False, "resume": False})
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    assert main(["train", str(path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no teacher is routed for domain = 'mul'" in err[0]


@pytest.mark.parametrize("pair", ["same_and_other", "two_other"])
def test_xtok_project_trains_with_teachers_of_other_families(world, tmp_path, pair):
    """Each row's teacher projects its top-k onto the student's vocabulary (a same-family
    teacher sends its own top-k): every trained token has a teacher distribution."""
    from opdplug.loop import train

    _, student, teacher, other, data = world
    first = teacher if pair == "same_and_other" else other
    cfg = multi_config(tmp_path, student, first, other, data, loss={"support": "xtok_project", "divergence": "reverse_kl"})
    train(parse_config(cfg, make_plugin_manager().plugin_tables()), make_plugin_manager())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 2 and all(r["loss"] == r["loss"] for r in steps)
    assert all(r["xtok_unprojected_tokens"] == 0 for r in steps)
    assert sum(r["teacher/adder/rows"] + r["teacher/multiplier/rows"] for r in steps) == 8
    assert "teacher/multiplier/xtok/one_to_one" in steps[0]


def test_one_route_to_a_teacher_of_another_family_gives_its_own_xtok_project_loss(world):
    """Routed through multi_teacher, a single cross-family teacher's xtok_project loss and
    gradients are those of that teacher scoring the batch itself."""

    tmp, student, teacher, other, data = world
    manager = make_plugin_manager()
    cfg = multi_config(tmp, student, teacher, other, data, router="mixture", router_options={"weights": {"multiplier": 1}},
                       loss={"support": "xtok_project", "divergence": "reverse_kl"})
    ctx = setup(parse_config(cfg, manager.plugin_tables()), manager)
    try:
        batch = student_batch(ctx, 6, seed=2, max_new_tokens=10)
        scorer = ctx.component("scorers", "multi_teacher", ctx.config.teacher.options, "teacher.scorer")
        alone, view = scorer.state["teachers"]["multiplier"]
        with torch.no_grad():
            routed = scorer(ctx, batch)
            direct = alone(view, batch)
        assert direct.student_distribution is not None and routed.student_distribution is not None
        support = ctx.registry.build("supports", "xtok_project", {}, "loss.support")
        fn = ctx.registry.build("divergences", "reverse_kl", {}, "loss.divergence")
        params = [p for p in ctx.student_module().parameters() if p.requires_grad]
        mask = batch.loss_mask_B_L.bool()
        results = []
        for scores in (routed, direct):
            student_out = ctx.manager.hook.opd_student_forward(ctx=ctx, batch=batch)
            values = support(fn, student_out, scores, batch, mask, top_k=4, chunk_size=7).values_B_L
            results.append((values.detach(), torch.autograd.grad(values.sum(), params, allow_unused=True)))
        (v_routed, g_routed), (v_direct, g_direct) = results
        assert bool((v_direct[mask] != 0).any())
        torch.testing.assert_close(v_routed, v_direct, atol=1e-6, rtol=0)
        for a, b in zip(g_routed, g_direct):
            if a is None or b is None:
                assert a is None and b is None
            else:
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    finally:
        teardown(ctx)


@pytest.mark.parametrize("router,router_options", [
    ("mixture", {"weights": {"adder": 1, "multiplier": 1}}),
    ("column", {"column": "domain", "routes": {"add": "adder", "mul": {"adder": 1, "multiplier": 2}}}),
])
def test_a_mixture_with_a_teacher_of_another_family_is_one_line_before_step_0(world, tmp_path, capsys, router,
                                                                               router_options):
    _, student, teacher, other, data = world
    cfg = multi_config(tmp_path, student, teacher, other, data, router=router, router_options=router_options)
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    assert main(["train", str(path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "teacher 'multiplier' has another" in err[0]
    assert not (tmp_path / "run").exists()


def test_xtok_project_with_a_teacher_that_is_not_byte_level_names_it_in_one_line(world, tmp_path, capsys):
    from opdplug.testing.models import build_sentencepiece_tokenizer

    _, student, teacher, _, data = world
    pieces = build_sentencepiece_tokenizer([f"{a} times {b} is {a * b}." for a in range(12) for b in range(12)],
                                           vocab_size=200, template="llama3")
    other = build_model_dir(tmp_path / "pieces", "qwen2", pieces, hidden_size=40)
    cfg = multi_config(tmp_path, student, teacher, other, data, loss={"support": "xtok_project", "divergence": "reverse_kl"})
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    capsys.readouterr()
    assert main(["train", str(path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the teacher's tokenizer is not byte-level (teacher 'multiplier')" in err[0]
    assert not (tmp_path / "run").exists()
