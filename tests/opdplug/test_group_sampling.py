"""Group sampling (``rollout.samples_per_prompt``) on the toy plugin: the rows of a group share
the prompt and sit together, each row samples from its own seed, and the run is a function of the
global batch however it is split over micro-batches and processes."""
from __future__ import annotations

import types

import pytest
import torch

import toy_backend
import toy_plugin
from opdplug.context import RunContext
from opdplug.errors import ConfigError
from opdplug.hookspecs import hookimpl
from opdplug.loop import step_prompts, train


def fake_ctx(config, manager, process_index=0, num_processes=1):
    """A context with the toy task and ``num_processes`` processes (no models)."""
    ctx = RunContext(config=config, manager=manager)
    ctx.task = toy_plugin.CountTask(options=toy_plugin.CountOptions(prompt_len=8))
    ctx.accelerator = types.SimpleNamespace(process_index=process_index, num_processes=num_processes,
                                            device=torch.device("cpu"))
    return ctx


def test_rows_of_a_group_share_the_prompt_and_sit_together(toy_run):
    config, manager = toy_run(run={"batch_size": 8, "grad_accum": 2}, rollout={"samples_per_prompt": 4})
    micro = step_prompts(fake_ctx(config, manager), step=0)
    rows = [p for mb in micro for p in mb]
    assert [len(mb) for mb in micro] == [8, 8]
    assert [p.row for p in rows] == list(range(16))
    assert [p.group for p in rows] == [r // 4 for r in range(16)]
    for g in range(4):
        members = rows[4 * g: 4 * g + 4]
        assert len({m.prompt_ids for m in members}) == 1  # one prompt per group
        assert {m.meta["length"] for m in members} == {8}
    assert len({rows[4 * g].prompt_ids for g in range(4)}) == 4  # four distinct prompts
    # a group never straddles a micro-batch
    assert all(len({p.group for p in mb}) == 2 for mb in micro)


def test_each_row_of_a_group_has_its_own_seed(toy_run):
    config, manager = toy_run(run={"batch_size": 8}, rollout={"samples_per_prompt": 8})
    ctx = fake_ctx(config, manager)
    (prompts,) = step_prompts(ctx, step=0)
    seeds = ctx.row_seeds(prompts, "toy", 0)
    assert len(set(seeds)) == 8
    assert ctx.row_seeds(prompts, "toy", 1) != seeds  # and new ones each step


def test_two_processes_get_what_one_gets(toy_run):
    config1, manager = toy_run(run={"batch_size": 8, "grad_accum": 2}, rollout={"samples_per_prompt": 4})
    config2, _ = toy_run(run={"batch_size": 4, "grad_accum": 2}, rollout={"samples_per_prompt": 4})
    one = step_prompts(fake_ctx(config1, manager), step=3)
    p0 = step_prompts(fake_ctx(config2, manager, 0, 2), step=3)
    p1 = step_prompts(fake_ctx(config2, manager, 1, 2), step=3)
    for m in range(2):
        split = p0[m] + p1[m]
        assert [(p.prompt_ids, p.row, p.group) for p in split] == [(p.prompt_ids, p.row, p.group) for p in one[m]]
        # each process holds whole groups
        assert not {p.group for p in p0[m]} & {p.group for p in p1[m]}


class Recorder:
    """A plugin that keeps every rollout batch the run produced."""

    def __init__(self):
        self.batches = []

    @hookimpl(wrapper=True)
    def opd_rollout(self, ctx, prompts, step):
        batch = yield
        self.batches.append(batch)
        return batch


def test_group_samples_are_independent_and_the_run_is_a_function_of_the_global_batch(toy_run, toy_manager, tmp_path):
    """A group of 4 samples of one prompt draws 4 different completions (own seeds); cutting the
    global batch of 8 as 8 x 1 or 4 x 2 micro-batches gives the same samples and weights."""
    runs = []
    for batch_size, accum in ((8, 1), (4, 2)):
        recorder = Recorder()
        config, manager = toy_run(
            toy_manager(recorder),
            run={"output_dir": str(tmp_path / f"mb{batch_size}"), "batch_size": batch_size, "grad_accum": accum,
                 "steps": 2, "lr": 1e-2},
            rollout={"sampler": "sample", "samples_per_prompt": 4, "temperature": 2.0},
            credit={"verifier": "exact"},
        )
        result = train(config, manager)
        rows = [(p.group, p.prompt_ids, tuple(ids[p_len:].tolist()))
                for b in recorder.batches[-2 * accum:]  # the training steps (a preflight may roll out first)
                for p, ids, p_len in zip(b.prompts, b.input_ids_B_L, b.prompt_lens_B.tolist())]
        runs.append((toy_backend.load_weights(result.final_model_dir), rows, result.history))
    (w0, rows0, h0), (w1, rows1, h1) = runs
    assert len(rows0) == 16
    groups = {}
    for group, prompt, completion in rows0:
        groups.setdefault((group, prompt), []).append(completion)
    assert len(groups) == 4 and all(len(c) == 4 for c in groups.values())
    assert all(len(set(c)) > 1 for c in groups.values())  # independent samples, not copies
    assert rows1 == rows0
    assert [m["loss"] for m in h1] == pytest.approx([m["loss"] for m in h0], rel=1e-5)
    for name in w0:
        torch.testing.assert_close(w1[name], w0[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("batch_size, spp, message", [
    (6, 4, "run.batch_size (6) must be a multiple of rollout.samples_per_prompt (4)"),
    (4, 0, "rollout.samples_per_prompt must be at least 1"),
])
def test_bad_group_sizes_are_one_line_errors(toy_run, batch_size, spp, message, tmp_path):
    config, manager = toy_run(run={"batch_size": batch_size}, rollout={"samples_per_prompt": spp})
    with pytest.raises(ConfigError) as info:
        train(config, manager)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()
