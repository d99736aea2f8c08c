"""The ``sglang`` scorer through the installed plugin.

Every test runs against the in-process stand-in server (default suite) and against a real SGLang
server (the ``sglang`` lane, ``make test-sglang``), both serving the same tiny teacher.
"""
import json

import pytest
import torch

from opdplug.errors import PreflightError, RemoteError
from opdplug_local.models import model_rollout, score_with_model
from opdplug.loop import setup, train
from opdplug.types import PRODUCER_STUDENT
from opdplug_sglang.testing.fault_proxy import FaultProxy


def _batch(ctx, n=6, seed=0):
    prompts = ctx.task.prompts(n, seed=seed, split="train")
    return model_rollout(ctx.student_module(), prompts, producer=PRODUCER_STUDENT, max_new_tokens=8, temperature=1.0,
                         top_p=1.0, tokenizer=ctx.tokenizer, generator=torch.Generator().manual_seed(seed), on_policy=True)


def _sglang(url, **options):
    return {"scorer": "sglang", "path": "", "top_k": 4, "options": {"urls": [url], "batch_size": 2, **options}}


def test_scores_match_the_local_teacher_top_k_and_student_top_k(opd_run, teacher_server, tiny_models):
    config, manager = opd_run(teacher=_sglang(teacher_server.url, student_topk=3))
    ctx = setup(config, manager)
    assert ctx.teacher is None  # nothing of the teacher is loaded in the trainer
    batch = _batch(ctx)
    scorer = ctx.component("scorers", "sglang", config.teacher.options, "teacher.scorer")
    got = scorer(ctx, batch)

    from opdplug_local.models import load_model

    teacher = load_model(str(tiny_models.teacher_dir), "teacher")
    want = score_with_model(teacher, batch, temperature=1.0, top_k=4)
    mask = batch.loss_mask_B_L.bool()
    assert torch.allclose(got.token_logprobs_B_L, want.token_logprobs_B_L, atol=1e-4)
    assert torch.equal(got.topk_ids_B_L_K[mask], want.topk_ids_B_L_K[mask])
    assert torch.allclose(got.topk_logprobs_B_L_K[mask], want.topk_logprobs_B_L_K[mask], atol=1e-4)
    assert torch.allclose(got.tail_logmass_B_L[mask], want.tail_logmass_B_L[mask], atol=1e-4)
    assert not got.is_dense

    # the teacher's log-probs on the student's own top-3 ids, at every completion position
    s_ids = got.chosen_ids_B_L_K
    student_top = score_with_model(ctx.student_module(), batch, temperature=1.0, top_k=3).topk_ids_B_L_K
    assert torch.equal(s_ids[mask], student_top[mask])
    full = torch.log_softmax(teacher(batch.input_ids_B_L, attention_mask=batch.attention_mask_B_L).logits.float(), -1)
    want_lp = torch.zeros_like(got.chosen_logprobs_B_L_K)
    want_lp[:, 1:] = full[:, :-1].gather(-1, s_ids[:, 1:])
    assert torch.allclose(got.chosen_logprobs_B_L_K[mask], want_lp[mask], atol=1e-4)


def test_cache_answers_repeated_sequences_without_the_server(opd_run, teacher_server, tmp_path):
    with FaultProxy(teacher_server.url) as counter:
        config, manager = opd_run(teacher=_sglang(counter.url, cache_dir=str(tmp_path / "cache")))
        ctx = setup(config, manager)
        scorer = ctx.component("scorers", "sglang", config.teacher.options, "teacher.scorer")
        batch = _batch(ctx, n=4)
        before = counter.seen["/generate"]
        first = scorer(ctx, batch)
        middle = counter.seen["/generate"]
        second = scorer(ctx, batch)
        assert middle > before and counter.seen["/generate"] == middle  # the repeat never reached the server
    assert torch.equal(first.token_logprobs_B_L, second.token_logprobs_B_L)
    assert torch.equal(first.topk_logprobs_B_L_K, second.topk_logprobs_B_L_K)
    m = scorer.metrics()
    assert m["sglang/cache_hits"] == 4 and m["sglang/cache_misses"] == 4 and m["sglang/cache_bytes"] > 0
    assert len(list((tmp_path / "cache").glob("*/*.safetensors"))) == 4


def test_a_shifted_answer_is_caught_and_retried(opd_run, teacher_server):
    with FaultProxy(teacher_server.url) as proxy:
        config, manager = opd_run(teacher=_sglang(proxy.url, retry_budget_s=5.0))
        ctx = setup(config, manager)
        scorer = ctx.component("scorers", "sglang", config.teacher.options, "teacher.scorer")
        batch = _batch(ctx, n=2)
        clean = scorer(ctx, batch)
        proxy.inject("malformed")
        again = scorer(ctx, batch)
        assert proxy.served_faults["malformed"] == 1
        assert torch.equal(clean.token_logprobs_B_L, again.token_logprobs_B_L)


def test_a_different_vocabulary_is_refused_at_start(opd_run, teacher_server, tmp_path, tiny_models):
    from opdplug_local import tiny
    from opdplug_local.tasks import SumChain

    tok = tiny.build_tokenizer(["apple"] + list(SumChain().words()))  # the task's words, ids shifted
    other = tmp_path / "other_student"
    tiny.save_pretrained_pair(tiny.build_model("tiny", tok, seed=0), tok, other)
    config, manager = opd_run(student={"path": str(other)}, teacher=_sglang(teacher_server.url))
    with pytest.raises(PreflightError, match="serve a model with the student's tokenizer"):
        setup(config, manager)


def test_opd_with_the_served_teacher_follows_the_local_teachers_loss_curve(opd_run, teacher_server, tmp_path):
    local_cfg, m1 = opd_run(run={"output_dir": str(tmp_path / "local"), "steps": 4}, teacher={"top_k": 4})
    served_cfg, m2 = opd_run(run={"output_dir": str(tmp_path / "served"), "steps": 4}, teacher=_sglang(teacher_server.url))
    local = [h["loss"] for h in train(local_cfg, m1).history]
    served = [h["loss"] for h in train(served_cfg, m2).history]
    assert served == pytest.approx(local, rel=1e-4, abs=1e-5)
    lines = [json.loads(x) for x in (tmp_path / "served" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["sglang/teacher_tokens"] > 0


def test_a_dead_server_stops_the_run_after_a_checkpoint_and_the_rerun_resumes(opd_run, teacher_server, tmp_path):
    proxy = FaultProxy(teacher_server.url).start()
    out = tmp_path / "faulty"
    sections = dict(run={"output_dir": str(out), "steps": 4, "step_retries": 1},
                    teacher=_sglang(proxy.url, retry_budget_s=0.5, timeout_s=2.0))
    config, manager = opd_run(**sections)
    calls = {"n": 0}

    class KillAfterTwoSteps:  # a plugin that takes the server away once step 1 is done
        from opdplug.hookspecs import hookimpl

        @hookimpl
        def opd_step_end(self, ctx, step, metrics):
            calls["n"] += 1
            if step == 1:
                proxy.set_down(True)

    manager.register(KillAfterTwoSteps(), name="killer")
    with pytest.raises(RemoteError) as info:
        train(config, manager)
    message = str(info.value)
    assert proxy.url in message and "checkpoint written at step 2" in message and "\n" not in message
    assert (out / "checkpoints" / "step-000002" / "model.safetensors").is_file()

    proxy.set_down(False)
    try:
        config, manager = opd_run(**sections)
        resumed = train(config, manager)
    finally:
        proxy.stop()
    reference = opd_run(run={"output_dir": str(tmp_path / "straight"), "steps": 4}, teacher=_sglang(teacher_server.url))
    straight = train(*reference)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history[2:]], rel=1e-6)


def test_requests_are_spread_over_several_servers(opd_run, teacher_server, tiny_models):
    with FaultProxy(teacher_server.url) as a, FaultProxy(teacher_server.url) as b:
        config, manager = opd_run(teacher=_sglang(a.url) | {"options": {"urls": [a.url, b.url], "batch_size": 1,
                                                                           "timeout_s": 2.0}})
        ctx = setup(config, manager)
        scorer = ctx.component("scorers", "sglang", config.teacher.options, "teacher.scorer")
        batch = _batch(ctx, n=6)
        before = (a.seen["/generate"], b.seen["/generate"])
        got = scorer(ctx, batch)
        sent = (a.seen["/generate"] - before[0], b.seen["/generate"] - before[1])
        b.set_down(True)  # one server gone: the other answers everything
        again = scorer(ctx, batch)
    assert sent == (3, 3)  # six one-sequence requests, alternately to each server
    assert torch.equal(got.token_logprobs_B_L, again.token_logprobs_B_L)


def test_the_check_command_reports_each_server(teacher_server, tiny_models, capsys):
    from opdplug.cli import main

    assert main(["sglang", "check", teacher_server.url, "--tokenizer", str(tiny_models.teacher_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report[teacher_server.url]["vocabulary"] == "matches"
