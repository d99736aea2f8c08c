"""The ``sglang`` rollout sampler: exact ids, the server's sampling log-probs, weight sync.

Runs against the stand-in server (default suite) and a real SGLang server (``sglang`` lane),
both serving a copy of the tiny student.
"""
import pytest
import torch

from opdplug.hookspecs import hookimpl
from opdplug_local.models import load_model, score_with_model
from opdplug.loop import setup, train

from opdplug_sglang.testing.servers import SERVER_KINDS, serve


@pytest.fixture(scope="module", params=SERVER_KINDS)
def student_server(request, tiny_models):
    server = serve(request.param, tiny_models.student_dir)
    server.kind = request.param
    yield server
    server.stop()


def _rollout(url, **options):
    return {"sampler": "sglang", "max_new_tokens": 8, "options": {"urls": [url], "batch_size": 3, **options}}


class OnPolicyProbe:
    """Records, per step, how far the sampling log-probs are from the trained student's own."""

    def __init__(self):
        self.gaps, self.on_policy = [], []

    @hookimpl(wrapper=True)
    def opd_score(self, ctx, batch):
        mask = batch.loss_mask_B_L.bool()
        mine = score_with_model(ctx.student_module(), batch, temperature=1.0, top_k=0).token_logprobs_B_L
        self.gaps.append(float((mine[mask] - batch.sampling_logprobs_B_L[mask]).abs().max()))
        self.on_policy.append(bool(batch.on_policy_B.all()))
        return (yield)


def test_rollouts_keep_exact_ids_and_the_servers_log_probs(opd_run, student_server):
    config, manager = opd_run(rollout=_rollout(student_server.url))
    ctx = setup(config, manager)
    prompts = ctx.task.prompts(7, seed=3, split="train")
    sampler = ctx.component("samplers", "sglang", config.rollout.options, "rollout.sampler")
    batch = sampler(ctx, prompts, 0)
    eos = ctx.tokenizer.eos_token_id
    for i, p in enumerate(prompts):
        n = int(batch.attention_mask_B_L[i].sum())
        assert batch.input_ids_B_L[i, : len(p.prompt_ids)].tolist() == list(p.prompt_ids)
        completion = batch.input_ids_B_L[i, len(p.prompt_ids): n].tolist()
        assert 1 <= len(completion) <= 8
        assert bool(batch.truncated_B[i]) == (completion[-1] != eos)
        assert eos not in completion[:-1]
    # the sampling log-probs are the student's at temperature 1 (the weights were pushed first)
    mask = batch.loss_mask_B_L.bool()
    mine = score_with_model(ctx.student_module(), batch, temperature=1.0, top_k=0).token_logprobs_B_L
    assert torch.allclose(mine[mask], batch.sampling_logprobs_B_L[mask], atol=1e-4)
    assert batch.on_policy_B.all()


def test_weights_are_pushed_every_step_so_rollouts_stay_on_policy(opd_run, student_server, tmp_path):
    config, manager = opd_run(run={"steps": 3, "lr": 1e-2}, rollout=_rollout(student_server.url))
    probe = OnPolicyProbe()
    manager.register(probe, name="probe")
    result = train(config, manager)
    assert max(probe.gaps) < 1e-4 and all(probe.on_policy)
    assert [h["sglang/staleness"] for h in result.history] == [0, 0, 0]
    assert [h["sglang/weight_pushes"] for h in result.history] == [1, 2, 3]
    pushed = tmp_path / "run" / "sglang-weights"
    assert [p.name for p in pushed.iterdir() if not p.name.startswith(".")] == ["step-000002"]


def test_staleness_is_bounded_by_config(opd_run, student_server):
    config, manager = opd_run(run={"steps": 5, "lr": 1e-2}, rollout=_rollout(student_server.url, max_staleness=2))
    probe = OnPolicyProbe()
    manager.register(probe, name="probe")
    result = train(config, manager)
    assert [h["sglang/staleness"] for h in result.history] == [0, 1, 2, 0, 1]
    assert [h["sglang/weight_pushes"] for h in result.history] == [1, 1, 1, 2, 2]
    assert probe.on_policy == [True, False, False, True, False]
    assert probe.gaps[0] < 1e-4 and probe.gaps[3] < 1e-4 and probe.gaps[1] > 1e-4  # stale rows really are off-policy


def test_a_server_that_lost_the_pushed_weights_gets_them_again(opd_run, student_server, tiny_models, tmp_path):
    from opdplug_sglang.client import SGLangClient

    config, manager = opd_run(run={"steps": 3, "lr": 1e-2}, rollout=_rollout(student_server.url, max_staleness=5))
    probe = OnPolicyProbe()
    manager.register(probe, name="probe")

    class ReloadOriginal:  # after step 0, the server goes back to its original weights (as after a restart)
        @hookimpl
        def opd_step_end(self, ctx, step, metrics):
            if step == 0:
                SGLangClient([student_server.url]).post("/update_weights_from_disk", {"model_path": str(tiny_models.student_dir)})

    manager.register(ReloadOriginal(), name="reload")
    result = train(config, manager)
    assert [h["sglang/weight_pushes"] for h in result.history] == [1, 2, 2]
    assert probe.on_policy == [True, True, False] and probe.gaps[1] < 1e-4
