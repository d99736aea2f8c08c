"""Checkpoints: safetensors, atomic, resumable state (optimizer, scheduler, RNG)."""
import json
import random

import pytest
import torch

from opdplug import checkpoint as ckpt


def _optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def test_round_trip(tmp_path):
    model, opt, sched = _optimizer()
    random.seed(5)
    torch.manual_seed(6)
    path = ckpt.save_checkpoint(
        tmp_path, 3, model_state=dict(model.named_parameters()), optimizer_state=opt.state_dict(),
        scheduler_state=sched.state_dict(), config_toml="[run]\nsteps = 3\n", versions={"opdplug": "opdplug==0.1.0"},
    )
    expected_torch, expected_py = torch.rand(1), random.random()
    assert ckpt.latest_checkpoint(tmp_path) == path
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 3
    for name, p in model.named_parameters():
        assert torch.equal(state["model"][name], p.detach())
    new_model, new_opt, _ = _optimizer()
    new_opt.load_state_dict(state["optimizer"])
    for a, b in zip(opt.state_dict()["state"].values(), new_opt.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["step"], b["step"])
    ckpt.set_rng_state(state["rng_tensors"], state["rng"])
    assert torch.equal(torch.rand(1), expected_torch) and random.random() == expected_py
    # nothing pickled: every file is safetensors, JSON or TOML
    assert sorted(p.name for p in path.iterdir()) == ["config.toml", "model.safetensors", "optimizer.safetensors", "state.json"]
    json.loads((path / "state.json").read_text())


def test_keeps_only_the_newest(tmp_path):
    model, opt, sched = _optimizer()
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, model_state=dict(model.named_parameters()), optimizer_state=opt.state_dict(),
                             scheduler_state=sched.state_dict(), config_toml="", versions={}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert names == ["step-000002", "step-000003"]


def test_failed_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, sched = _optimizer()
    first = ckpt.save_checkpoint(tmp_path, 1, model_state=dict(model.named_parameters()), optimizer_state=opt.state_dict(),
                                 scheduler_state=sched.state_dict(), config_toml="", versions={})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_text", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, 2, model_state=dict(model.named_parameters()), optimizer_state=opt.state_dict(),
                             scheduler_state=sched.state_dict(), config_toml="", versions={})
    assert ckpt.latest_checkpoint(tmp_path) == first
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".step")]
    assert leftovers == []
