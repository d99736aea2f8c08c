"""The EAGLE-3 head trains in the core loop (``opdplug.loop``) through the kind's stages: it
reproduces the loop it had of its own, writes checkpoints and metrics, and resumes exactly."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opdplug import hookimpl
from opdplug.config import dump_toml
from opdplug.errors import ConfigError
from opdplug.manager import make_plugin_manager
from opdplug_local import models as local
from opdplug_local.tasks import SumChain
from opdplug_drafters.eagle3 import Eagle3Drafter, Eagle3Options, eagle3_config, plot_metrics, read_metrics, train_eagle3
from opdplug_drafters.eagle3.config import default_aux_layers, draft_config
from opdplug_drafters.eagle3.model import Eagle3Head
from opdplug_drafters.eagle3.stages import choose_vocab
from opdplug_drafters.eagle3.toy import toy_target

from eagle3_train_reference import reference_train


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("eagle3_loop") / "target"
    model, _ = toy_target(num_layers=4, directory=path)
    return path


class FixedPrompts:
    """SumChain's first prompts whatever the seed: both loops draw their batches from their own
    seeds, so the comparison gives them the same batch every step."""

    def __init__(self, tokenizer, options=None):
        self.base = SumChain(tokenizer, max_len=4)

    def prompts(self, n, *, seed, split="train", length=None):
        return self.base.prompts(n, seed=0, split=split)

    def max_new_tokens(self, length):
        return self.base.max_new_tokens(length)

    def verify(self, prompt, completion_ids):
        return self.base.verify(prompt, completion_ids)


class FixedPromptsPlugin:
    @hookimpl
    def opd_register_tasks(self, register):
        register("fixed_prompts", FixedPrompts)


def test_the_core_loop_reproduces_the_loop_the_head_had(target_dir, tmp_path):
    """Same head, same batches (greedy target completions of fixed prompts), same options: the
    core loop's loss curve is the old loop's (``eagle3_train_reference``, which reproduces the
    old ``train_eagle3`` bit for bit) up to the fused AdamW kernel's float order."""
    steps, lr, warmup, ttt = 6, 3e-3, 2, 3
    options = Eagle3Options(ttt_steps=ttt, draft_vocab_size=20, max_new_tokens=10, vocab_prompts=16, temperature=0.0,
                            eval_every=0)
    manager = make_plugin_manager([FixedPromptsPlugin()])
    config = eagle3_config(target_dir, tmp_path / "run", options=options, task={"name": "fixed_prompts"}, manager=manager,
                           run={"steps": steps, "batch_size": 6, "lr": lr, "warmup_steps": warmup, "progress": False})
    new = train_eagle3(config, manager)

    target = local.load_model(str(target_dir), "t").eval().requires_grad_(False)
    tok = local.load_tokenizer(str(target_dir))
    task = FixedPrompts(tok)
    d2t, t2d = choose_vocab(target, task, tok, options, seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = Eagle3Head(draft_config(target.config, draft_vocab_size=20, aux_layers=default_aux_layers(4)))
    head.set_vocab(d2t, t2d)
    head.init_from_target(target)
    start = {k: v.clone() for k, v in head.state_dict().items()}
    prompts = [task.prompts(6, seed=s) for s in range(steps)]
    assert min(len(p.prompt_ids) for p in prompts[0]) > ttt  # every TTT step predicts every completion token
    old = reference_train(head, target, prompts, options, lr=lr, warmup_steps=warmup, ttt_steps=ttt, step_decay=0.8,
                          eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)

    assert [m["tokens"] for m in new.history] == [m["tokens"] for m in old]
    assert [m["loss"] for m in new.history] == pytest.approx([m["loss"] for m in old], rel=1e-5)
    assert [m["ttt/accept_len"] for m in new.history] == pytest.approx([m["accept_len"] for m in old], rel=1e-6)
    assert [m["lr"] for m in new.history] == pytest.approx([lr * min(1, (s + 1) / warmup) for s in range(1, steps + 1)])
    trained = load_file(str(new.head_dir / "model.safetensors"))
    moved = max(float((head.state_dict()[k] - start[k]).abs().max()) for k in trained if start[k].is_floating_point())
    assert moved > 1e-2  # the updates are far above the tolerance below
    for name, value in trained.items():
        torch.testing.assert_close(value, head.state_dict()[name], rtol=0, atol=2e-6)


def small_run(target_dir, out, **run):
    return eagle3_config(
        target_dir, out,
        run={"steps": 4, "batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "progress": False, **run},
        options=Eagle3Options(ttt_steps=3, draft_vocab_size=20, max_new_tokens=8, vocab_prompts=16, eval_prompts=6,
                              eval_every=2),
        task={"name": "sumchain", "options": {"max_len": 4}},
    )


def test_a_run_writes_checkpoints_metrics_and_a_loadable_head(target_dir, tmp_path):
    result = train_eagle3(small_run(target_dir, tmp_path / "run", checkpoint_every=2))
    out = tmp_path / "run"
    assert result.steps_done == 4 and result.aux_layers == (1, 2, 3) and result.draft_vocab_size == 20
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000002", "step-000004"]
    assert set(load_file(str(out / "checkpoints" / "step-000002" / "model.safetensors"))) == {
        f"head.{n}" for n, p in Eagle3Head(draft_config(local.load_model(str(target_dir), "t").config, draft_vocab_size=20,
                                                           aux_layers=(1, 2, 3))).named_parameters() if p.requires_grad}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all({"loss", "lr", "grad_norm", "ttt/accept_len", "ttt/top1_2", "ttt/ce_0"} <= set(r) for r in rows)
    assert [r["step"] for r in read_metrics(out, "eval")] == [2, 4] and [r["step"] for r in read_metrics(out, "train")] == [1, 2, 3, 4]
    assert len(read_metrics(out, "eval")[-1]["top1"]) == 3 and result.evals == read_metrics(out, "eval")
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["sglang_eagle_aux_hidden_state_layer_ids"] == [0, 1, 2] and summary["kind"] == "eagle3"
    assert plot_metrics(out, tmp_path / "acc.png").stat().st_size > 1000
    target = local.load_model(str(target_dir), "t").eval()
    drafter = Eagle3Drafter.from_pretrained(out, target)
    assert drafter.feature_layers == (1, 2, 3)
    assert torch.equal(drafter.head.fc.weight, load_file(str(out / "final" / "model.safetensors"))["fc.weight"])


def test_stop_and_resume_gives_the_straight_run_bit_for_bit(target_dir, tmp_path):
    straight = train_eagle3(small_run(target_dir, tmp_path / "straight"))
    stopped = train_eagle3(small_run(target_dir, tmp_path / "resumed", checkpoint_every=1, stop_after=2))
    assert stopped.head_dir is None and stopped.steps_done == 2
    resumed = train_eagle3(small_run(target_dir, tmp_path / "resumed", checkpoint_every=1))
    assert [m["step"] for m in resumed.history] == [2, 3]
    assert [m["loss"] for m in resumed.history] == [m["loss"] for m in straight.history[2:]]
    a = load_file(str(straight.head_dir / "model.safetensors"))
    b = load_file(str(resumed.head_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kill_9_then_resume_gives_bit_identical_weights(target_dir, tmp_path):
    """``opdplug train`` on an eagle3 config, SIGKILLed after its third checkpoint, then rerun:
    the head is bit-identical to an uninterrupted run's, and every step is logged once."""
    steps = 10

    def write(name: str) -> Path:
        config = {
            "run": {"output_dir": str(tmp_path / name), "steps": steps, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2,
                    "checkpoint_every": 1, "progress": False, "threads": 1},
            "teacher": {"path": str(target_dir)},
            "task": {"name": "sumchain", "options": {"max_len": 4}},
            "drafter": {"kind": "eagle3", "eagle3": {"ttt_steps": 3, "draft_vocab_size": 20, "max_new_tokens": 8,
                                                     "vocab_prompts": 16, "eval_prompts": 4, "eval_every": 3}},
        }
        path = tmp_path / f"{name}.toml"
        path.write_text(dump_toml(config))
        return path

    env_run = lambda path: subprocess.run([sys.executable, "-m", "opdplug.cli", "train", str(path)],  # noqa: E731
                                          capture_output=True, text=True, timeout=600)
    done = env_run(write("straight"))
    assert done.returncode == 0, done.stderr[-3000:]
    killed = write("killed")
    proc = subprocess.Popen([sys.executable, "-m", "opdplug.cli", "train", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= "step-000003":
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "final").exists(), "the run finished before it could be killed"
    again = env_run(killed)
    assert again.returncode == 0, again.stderr[-3000:]
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logged = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(steps))


def test_options_of_the_old_loop_point_to_run(target_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"drafter.eagle3.steps is now \[run\] steps"):
        from opdplug.prepare import validate

        manager = make_plugin_manager()
        config = eagle3_config(target_dir, tmp_path / "x", options={"steps": 10}, manager=manager)
        validate(config, manager)
    with pytest.raises(ConfigError):
        Eagle3Options(ttt_steps=0)
    with pytest.raises(ConfigError):
        Eagle3Options(temperature=-1.0)


def test_data_from_the_rollout_sampler_trains_on_the_tasks_answers(target_dir, tmp_path):
    """``data = "rollout"``: the configured sampler writes the sequences (here ``reference``: the
    task's own answers, as a conversation file's assistant turns would be)."""
    from opdplug.prepare import validate

    manager = make_plugin_manager()

    def config(name: str, sampler: str):
        c = small_run(target_dir, tmp_path / name)
        return c.replace(rollout={"sampler": sampler},
                         plugins={**c.plugins, "drafter": c.plugins["drafter"].__class__(
                             kind="eagle3", eagle3={"ttt_steps": 3, "draft_vocab_size": 20, "vocab_prompts": 16,
                                                    "eval_every": 0, "data": "rollout"})})

    result = train_eagle3(validate(config("ref", "reference"), manager).config, manager)
    tok = local.load_tokenizer(str(target_dir))
    task = SumChain(tok, max_len=4)
    assert result.history[0]["rollout/on_policy"] == 0.0
    # Each row's completion is the task's reference answer: the loss tokens are exactly those
    # (the loop draws step s's prompts from derive_seed(run.seed, "prompts", s)).
    from opdplug.context import derive_seed

    expected = [sum(len(p.reference_ids) for p in task.prompts(4, seed=derive_seed(0, "prompts", s))) for s in range(4)]
    assert [m["tokens"] for m in result.history] == expected
    assert all(m["loss"] > 0 for m in result.history)
    # The draft vocabulary is counted on the same data: every id of the task's answers is in it.
    seen = {t for p in task.prompts(16, seed=0 * 1_000_003 + 999_983) for t in p.reference_ids}
    t2d = load_file(str(result.head_dir / "model.safetensors"))["t2d"]
    assert len(seen) <= 20 and all(bool(t2d[t]) for t in seen)
    with pytest.raises(ConfigError, match="cannot sample"):
        train_eagle3(config("student", "on_policy"), manager)


def test_check_reports_the_head(target_dir, tmp_path, capsys):
    from opdplug.cli import main

    path = tmp_path / "check.toml"
    path.write_text(dump_toml({"run": {"output_dir": str(tmp_path / "never")}, "teacher": {"path": str(target_dir)},
                               "drafter": {"kind": "eagle3", "eagle3": {"ttt_steps": 2, "max_new_tokens": 6}}}))
    assert main(["check", str(path)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["eagle3"]["sglang_layer_ids"] == [0, 1, 2] and report["eagle3"]["initial_loss"] > 0
    assert not (tmp_path / "never").exists()
