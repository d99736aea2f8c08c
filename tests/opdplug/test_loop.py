"""The training loop on the toy plugin: global normalization, exact resume, failures that write
nothing, retried steps, the run directory."""
import json
import types

import pytest
import torch

import toy_backend
from opdplug.errors import ConfigError, RemoteError, TrainingError
from opdplug.hookspecs import hookimpl
from opdplug.loop import train
from opdplug.types import LossOutput


def plugin(name: str, **hooks):
    module = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(module, hook, hookimpl(fn))
    return module


@pytest.mark.parametrize("sampler", ["reference", "sample"])
def test_a_run_is_a_function_of_the_global_batch(toy_run, tmp_path, sampler):
    """However a global batch of 8 is cut (8 x 1, 4 x 2, 2 x 4 micro-batches), the prompts, the
    samples (one seed per global row) and the update are the same: the loss is normalized by
    the step's global token count."""
    runs = []
    for batch_size, accum in ((8, 1), (4, 2), (2, 4)):
        config, manager = toy_run(run={"output_dir": str(tmp_path / f"mb{batch_size}"), "batch_size": batch_size,
                                       "grad_accum": accum, "steps": 3, "lr": 1e-2}, rollout={"sampler": sampler})
        result = train(config, manager)
        runs.append((toy_backend.load_weights(result.final_model_dir), result.history))
    (w0, h0), rest = runs[0], runs[1:]
    start = toy_backend.Bigram(hidden=8, seed=0).state_dict()
    assert max(float((w0[n] - w).abs().max()) for n, w in start.items()) > 1e-3  # far above the tolerance
    for w, h in rest:
        for key in ("tokens", "rollout/sequence_tokens_total", "rollout/truncated"):
            assert [m[key] for m in h] == [m[key] for m in h0], key  # the same sequences
        assert [m["loss"] for m in h] == pytest.approx([m["loss"] for m in h0], rel=1e-5)
        for name in w0:
            torch.testing.assert_close(w[name], w0[name], rtol=0, atol=1e-6)


def test_killed_run_resumes_to_the_same_weights(toy_run, tmp_path):
    common = {"steps": 6, "checkpoint_every": 2, "lr": 1e-2}
    config, manager = toy_run(run={**common, "output_dir": str(tmp_path / "straight")})
    straight = train(config, manager)

    config, manager = toy_run(run={**common, "output_dir": str(tmp_path / "killed"), "stop_after": 3})
    killed = train(config, manager)
    assert killed.final_model_dir is None and killed.steps_done == 3  # step 3 was lost: last checkpoint is 2
    assert not (tmp_path / "killed" / "final").exists()
    config, manager = toy_run(run={**common, "output_dir": str(tmp_path / "killed")})
    resumed = train(config, manager)
    assert [m["step"] for m in resumed.history] == [2, 3, 4, 5]
    a, b = toy_backend.load_weights(straight.final_model_dir), toy_backend.load_weights(resumed.final_model_dir)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [m["loss"] for m in straight.history[2:]] == [m["loss"] for m in resumed.history]
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("step-*")) == ["step-000004", "step-000006"]


def test_resuming_with_fewer_steps_than_done_is_one_line_and_writes_nothing(toy_run, tmp_path):
    """A run directory at step 6 asked for 4 steps: not a 4-step model (it used to export the
    6-step weights as final and label a checkpoint step 4)."""
    out = tmp_path / "run"
    config, manager = toy_run(run={"steps": 6, "checkpoint_every": 2, "lr": 1e-2, "output_dir": str(out)})
    done = train(config, manager)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    config, manager = toy_run(run={"steps": 4, "checkpoint_every": 2, "lr": 1e-2, "output_dir": str(out)})
    with pytest.raises(ConfigError) as err:
        train(config, manager)
    assert "holds a checkpoint at step 6, past run.steps = 4" in str(err.value) and "\n" not in str(err.value)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    config, manager = toy_run(run={"steps": 6, "checkpoint_every": 2, "lr": 1e-2, "output_dir": str(out)})
    assert train(config, manager).steps_done == done.steps_done == 6  # the same length is still a no-op resume


def test_nan_loss_stops_without_checkpoint(toy_run, toy_manager, tmp_path):
    nan = plugin("nan_plugin", opd_loss=lambda ctx, batch, scores, credit, student: LossOutput(
        loss_sum=student.hidden_B_L_H.sum() * float("nan"), num_tokens=1))
    config, manager = toy_run(toy_manager(nan), run={"checkpoint_every": 1, "output_dir": str(tmp_path / "nan")})
    with pytest.raises(TrainingError, match="the loss is not finite at step 0"):
        train(config, manager)
    assert not (tmp_path / "nan" / "checkpoints").exists()


def test_a_run_without_a_backend_is_one_line_naming_opd_load_models(toy_run, toy_manager, tmp_path):
    config, manager = toy_run(toy_manager(backend=False))
    with pytest.raises(ConfigError) as err:
        train(config, manager)
    msg = str(err.value)
    assert "no loaded plugin loads models (hook opd_load_models)" in msg and "\n" not in msg
    assert not (tmp_path / "run").exists()


def test_a_stage_nobody_runs_is_named(toy_run, toy_manager):
    backend = plugin("forwardless_backend", opd_load_models=toy_backend.opd_load_models,
                     opd_save_model=toy_backend.opd_save_model)  # no opd_student_forward
    config, manager = toy_run(toy_manager(backend, backend=False))
    with pytest.raises(TrainingError, match=r"^no plugin ran the student's forward pass \(opd_student_forward returned None\)$"):
        train(config, manager)


def test_a_step_a_server_fails_is_redone_whole_then_checkpointed(toy_run, toy_manager, tmp_path):
    failures = {"left": 1}

    def flaky(ctx, prompts, step):
        if failures["left"]:
            failures["left"] -= 1
            raise RemoteError("teacher unreachable", url="http://127.0.0.1:1")

    config, manager = toy_run(toy_manager(plugin("flaky", opd_rollout=flaky)), run={"output_dir": str(tmp_path / "a")})
    assert train(config, manager).steps_done == 2  # the first step failed once and was redone

    failures["left"] = 100
    config, manager = toy_run(toy_manager(plugin("flaky", opd_rollout=flaky)),
                              run={"output_dir": str(tmp_path / "b"), "step_retries": 1})
    with pytest.raises(RemoteError, match=r"teacher unreachable \(checkpoint written at step 0; rerun the same command to resume\)"):
        train(config, manager)
    assert (tmp_path / "b" / "checkpoints" / "step-000000").is_dir()


def test_run_directory_metrics_and_tensorboard(toy_run, tmp_path):
    pytest.importorskip("tensorboard")
    config, manager = toy_run(run={"output_dir": str(tmp_path / "tb"), "tensorboard": True},
                              rollout={"sampler": "reference"}, credit={"verifier": "exact"})
    train(config, manager)
    lines = [json.loads(line) for line in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 1]
    for key in ("loss", "reverse_kl", "tokens", "processes", "lr", "grad_norm", "rollout/completion_tokens",
                "rollout/truncated", "rollout/on_policy", "rollout/sequence_tokens_total", "time/step_s"):
        assert key in lines[0], key
    assert lines[0]["rollout/reward"] == 1.0 and lines[0]["rollout/on_policy"] == 0.0  # the references are right
    assert lines[0]["loss"] == pytest.approx(lines[0]["reverse_kl"])
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    recorded = (tmp_path / "tb" / "config.toml").read_text()
    assert 'sampler = "reference"' in recorded and 'scorer = "bigram"' in recorded  # defaults resolved
    assert json.loads((tmp_path / "tb" / "plugins.json").read_text())["toy_plugin"].startswith("toy_plugin==")
