"""``base_model``: the LoRA student's own base weights (adapter off) as the teacher, one copy."""
import gc
import math

import pytest
import torch

pytest.importorskip("peft")

from opdplug.errors import ConfigError  # noqa: E402
from opdplug_local.models import load_model, reference_rollout, score_with_model  # noqa: E402
from opdplug.loop import setup, train  # noqa: E402
from opdplug.manager import make_plugin_manager  # noqa: E402


def lora_config(tiny_models, output_dir, **sections):
    """A LoRA student on the tiny student's weights, sections merged in."""
    data = {
        "run": {"output_dir": str(output_dir), "steps": 2, "batch_size": 4, "lr": 1e-2, "progress": False, "resume": False},
        "student": {"path": str(tiny_models.student_dir), "lora_r": 4},
        "teacher": {"scorer": "base_model"},
        "task": {"options": {"max_len": 3}},
    }
    for name, table in sections.items():
        data.setdefault(name, {}).update(table)
    return data


def parameters_alive() -> list:
    """Every ``nn.Parameter`` the interpreter holds (exact type: an isinstance check would go
    through Parameter's metaclass and trip deprecation warnings on unrelated objects)."""
    return [o for o in gc.get_objects() if type(o) is torch.nn.Parameter]


@pytest.fixture(scope="module")
def sft_adapter(tiny_models, tmp_path_factory):
    """A LoRA adapter trained a few steps (supervised on reference answers): its B is non-zero."""
    from opdplug.config import parse_config

    out = tmp_path_factory.mktemp("sft_lora")
    manager = make_plugin_manager()
    data = lora_config(tiny_models, out, run={"steps": 5, "batch_size": 8},
                       teacher={"scorer": "none"}, rollout={"sampler": "reference"}, loss={"support": "sampled", "estimator": "nll"})
    train(parse_config(data, manager.plugin_tables()), manager)
    return out


def test_scores_are_the_base_model_without_a_second_copy(tiny_models, sft_adapter, opd_config, tmp_path):
    manager = make_plugin_manager()
    config = opd_config(lora_config(tiny_models, tmp_path / "run", student={"adapter": str(sft_adapter)}), manager)
    before = {id(o) for o in parameters_alive()}
    ctx = setup(config, manager)
    student = ctx.student_module()
    lora_B = [p for n, p in student.named_parameters() if "lora_B" in n]
    assert lora_B and max(float(p.detach().abs().max()) for p in lora_B) > 1e-3  # the trained adapter was loaded

    batch = reference_rollout(ctx.task.prompts(6, seed=3, split="train"), ctx.tokenizer.pad_token_id)
    scorer = ctx.component("scorers", "base_model", {}, "teacher.scorer")
    scores = scorer(ctx, batch)
    mask = batch.loss_mask_B_L.bool()
    base = load_model(str(tiny_models.student_dir), "base")  # the plain weights, no adapter
    want = score_with_model(base, batch, temperature=1.0, top_k=0)
    torch.testing.assert_close(scores.token_logprobs_B_L[mask], want.token_logprobs_B_L[mask], rtol=0, atol=1e-6)
    torch.testing.assert_close(scores.hidden_B_L_H[mask], want.hidden_B_L_H[mask], rtol=0, atol=1e-6)
    # The adapter is back on afterwards, and it does change the scores (so the test means something).
    adapted = score_with_model(student, batch, temperature=1.0, top_k=0).token_logprobs_B_L[mask]
    assert (adapted - scores.token_logprobs_B_L[mask]).abs().max() > 1e-3
    assert torch.is_grad_enabled() and any(p.requires_grad for p in lora_B)

    # One copy of the weights: no teacher, the head the loss reads is the student's own tensor,
    # and setting up and scoring created no parameters beyond the student's.
    assert ctx.teacher is None
    assert scores.lm_head_V_H.data_ptr() == student.get_output_embeddings().weight.data_ptr()
    mine = {id(p) for p in student.parameters()}
    del base
    gc.collect()
    extra = [o for o in parameters_alive() if id(o) not in before and id(o) not in mine]
    assert not extra, [tuple(o.shape) for o in extra][:5]
    manager.hook.opd_unconfigure(ctx=ctx)


def test_needs_a_lora_student(tiny_models, opd_config, tmp_path):
    manager = make_plugin_manager()
    config = opd_config(lora_config(tiny_models, tmp_path / "run", student={"lora_r": 0}), manager)
    with pytest.raises(ConfigError, match="'base_model' needs a LoRA student"):
        setup(config, manager)
    assert not (tmp_path / "run").exists()
    config = opd_config(lora_config(tiny_models, tmp_path / "run", student={"lora_r": 0, "adapter": "x"}), manager)
    with pytest.raises(ConfigError, match="student.adapter needs student.lora_r > 0"):
        setup(config, manager)


def test_adapter_that_does_not_fit_is_one_line(tiny_models, sft_adapter, opd_config, tmp_path):
    manager = make_plugin_manager()
    config = opd_config(lora_config(tiny_models, tmp_path / "run", student={"adapter": str(sft_adapter), "lora_r": 2}), manager)
    with pytest.raises(ConfigError, match="does not fit the student's LoRA"):
        setup(config, manager)


def test_self_distill_from_a_fresh_adapter_starts_at_zero(short_run):
    """A fresh adapter (B = 0) makes the student its own base: loss 0 at step 0, then finite."""
    result = short_run(student={"lora_r": 4}, teacher={"path": "", "scorer": "base_model"}, run={"steps": 3, "lr": 1e-2})
    losses = [m["loss"] for m in result.history]
    assert abs(losses[0]) < 1e-6 and all(math.isfinite(x) for x in losses)


def test_continual_learning_recipe_pulls_the_adapter_back_to_the_base(tiny_models, sft_adapter, opd_config, tmp_path):
    """configs/self_distill_lora.toml in miniature: start from the SFT adapter, distill on-policy
    from the original weights; the divergence from them starts above 0 and falls."""
    manager = make_plugin_manager()
    config = opd_config(lora_config(tiny_models, tmp_path / "run", student={"adapter": str(sft_adapter)},
                                    run={"steps": 8, "batch_size": 8, "lr": 1e-2}), manager)
    losses = [m["loss"] for m in train(config, manager).history]
    assert losses[0] > 1e-3 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < losses[0] / 2, losses
