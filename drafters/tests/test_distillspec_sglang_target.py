"""DistillSpec against a target served by SGLang: the scores the drafter trains against are what
SGLang computes.

Runs against the in-process stand-in server (default suite) and a real SGLang server serving the
built-in target (the ``sglang`` lane, ``make test-sglang``). The vocabulary of the built-in target
is small, so the server's top-k with k = V is its whole distribution: the scores can be compared
with the local target's full softmax at every position, and a DistillSpec run trained through
SGLang must follow the local-target run's loss curve.
"""
import pytest
import torch

pytest.importorskip("opdplug_sglang")

from opdplug_local import models as local  # noqa: E402
from opdplug.config import parse_config  # noqa: E402
from opdplug_local.models import model_rollout, score_with_model  # noqa: E402
from opdplug.loop import setup, train  # noqa: E402
from opdplug.manager import make_plugin_manager  # noqa: E402
from opdplug.types import PRODUCER_STUDENT  # noqa: E402
from opdplug_drafters.target import QUICK  # noqa: E402
from opdplug_sglang.testing.servers import SERVER_KINDS, serve  # noqa: E402


@pytest.fixture(scope="module")
def target_dir(quick_target):
    return quick_target / "target"


@pytest.fixture(scope="module", params=SERVER_KINDS)
def target_server(request, target_dir):
    server = serve(request.param, target_dir)
    yield server
    server.stop()


def _vocab(target_dir) -> int:
    return int(local.load_model(str(target_dir), "target").get_output_embeddings().weight.shape[0])


def _run(tmp_path, target_dir, teacher: dict, name: str):
    """A short on-policy DistillSpec (TVD) run: a fresh tiny drafter, the built-in target."""
    manager = make_plugin_manager()
    V = _vocab(target_dir)
    data = {
        "run": {"output_dir": str(tmp_path / name), "steps": 3, "batch_size": 4, "lr": 3e-3, "seed": 0,
                "threads": 1, "resume": False, "progress": False},
        "student": {"tiny": "student", "init_seed": 2},
        "teacher": {"path": str(target_dir), "top_k": V, **teacher},
        "task": {"name": "sumchain", "options": QUICK.task_options()},
        "rollout": {"sampler": "on_policy", "temperature": 1.0, "max_new_tokens": 8},
        "loss": {"support": "teacher_topk", "divergence": "tvd", "top_k": V},
        "drafter": {"kind": "standalone", "draft_tokens": 4, "eval_every": 0},
    }
    return parse_config(data, manager.plugin_tables()), manager


def test_sglang_scores_of_drafter_samples_equal_the_local_target(tmp_path, target_dir, target_server):
    config, manager = _run(tmp_path, target_dir, {"scorer": "sglang", "options": {"urls": [target_server.url],
                                                                                   "batch_size": 2}}, "scores")
    ctx = setup(config, manager)
    prompts = ctx.task.prompts(6, seed=5, split="train")
    batch = model_rollout(ctx.student_module(), prompts, producer=PRODUCER_STUDENT, max_new_tokens=8,
                          temperature=1.0, top_p=1.0, tokenizer=ctx.tokenizer,
                          generator=torch.Generator().manual_seed(0), on_policy=True)
    scorer = ctx.component("scorers", "sglang", config.teacher.options, "teacher.scorer")
    got = scorer(ctx, batch)
    target = local.load_model(str(target_dir), "target")
    V = _vocab(target_dir)
    want = score_with_model(target, batch, temperature=1.0, top_k=V)
    mask = batch.loss_mask_B_L.bool()
    assert int(mask.sum()) > 10
    torch.testing.assert_close(got.token_logprobs_B_L[mask], want.token_logprobs_B_L[mask], atol=1e-4, rtol=0)
    # The whole distribution at every drafter position (top-k with k = V), compared id by id.
    dense_got = torch.full((int(mask.sum()), V), float("-inf")).scatter(-1, got.topk_ids_B_L_K[mask], got.topk_logprobs_B_L_K[mask])
    dense_want = torch.full((int(mask.sum()), V), float("-inf")).scatter(-1, want.topk_ids_B_L_K[mask], want.topk_logprobs_B_L_K[mask])
    torch.testing.assert_close(dense_got.exp(), dense_want.exp(), atol=1e-4, rtol=0)


def test_distillspec_through_sglang_follows_the_local_target_run(tmp_path, target_dir, target_server):
    local_run = train(*_run(tmp_path, target_dir, {"scorer": "local"}, "local"))
    served = train(*_run(tmp_path, target_dir, {"scorer": "sglang", "options": {"urls": [target_server.url]}}, "served"))
    want = [m["loss"] for m in local_run.history]
    got = [m["loss"] for m in served.history]
    assert len(got) == len(want) == 3
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-6)
