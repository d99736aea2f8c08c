"""The built-in teacher recipe: trained by opdplug (BC then DAgger), cached by a hash of the
recipe, built atomically, measured; tiny QUICK recipes keep it to seconds."""
from __future__ import annotations

import dataclasses
import json

import pytest

from opdplug_agents import recipe as recipes
from opdplug_agents.recipe import (
    QUICK,
    RECIPES,
    TeacherRecipe,
    teacher_path,
    train_teacher,
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPDPLUG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_key_hashes_the_training_fields_only():
    r = RECIPES["gridnav"]
    assert len(r.key()) == 12 and r.key() == dataclasses.replace(r).key()
    assert r.key() != dataclasses.replace(r, bc_steps=r.bc_steps + 1).key()
    assert r.key() != r.with_horizons(1, 3).key()
    assert r.key() != dataclasses.replace(r, env_options={"wall_density": 0.1}).key()
    # evaluation and thread count do not change the weights: same cache entry
    assert r.key() == dataclasses.replace(r, eval_n=7, eval_horizons=(3,), eval_phase1=False, threads=2).key()
    assert {n: q.size for n, q in QUICK.items()} == {n: "tiny" for n in RECIPES}
    assert RECIPES["gridnav"].task_options()["env"] == "gridnav"



def test_key_changes_with_the_installed_environments_vocabulary(monkeypatch):
    """A teacher built while another set of environment plugins was installed has other token ids."""
    from opdplug_agents.task import AgentTask

    r = RECIPES["gridnav"]
    before = r.key()
    monkeypatch.setattr(AgentTask, "words", staticmethod(lambda: ["only", "these"]))
    assert r.key() != before


def test_quick_teacher_is_built_once_and_cached(cache, monkeypatch, capsys):
    recipe = QUICK["calc_lookup"]
    path = train_teacher(recipe, progress=False)
    assert path == teacher_path(recipe) and path.parent == cache
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    measured = json.loads((path / "teacher_eval.json").read_text())
    assert set(measured["success"]) == {"1", "2"} and measured["key"] == recipe.key()
    assert set(measured["phase1_success"]) == {"1", "2"}  # the model after BC, before DAgger
    assert measured["phase2_sampler"] == "agent_dagger" and measured["dagger_fallback"] is False
    assert not [p for p in cache.iterdir() if p.name.startswith(".build-")]  # work dir removed
    assert "held-out success" in capsys.readouterr().out

    def no_training(*args, **kwargs):
        raise AssertionError("a cached teacher must not be retrained")

    monkeypatch.setattr("opdplug.loop.train", no_training)
    assert train_teacher(recipe, progress=False) == path
    assert "cached at" in capsys.readouterr().out


def test_without_agent_dagger_phase_two_is_more_expert_bc(cache, monkeypatch):
    monkeypatch.setattr(recipes, "has_sampler", lambda name: False)
    recipe = dataclasses.replace(QUICK["gridnav"], dagger_steps=1, bc_steps=1, eval_horizons=(1,), eval_n=1)
    measured = recipes.load_measured(train_teacher(recipe, progress=False, verbose=False))
    assert measured["phase2_sampler"] == "agent_expert" and measured["dagger_fallback"] is True


def test_recipe_is_a_frozen_dataclass():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RECIPES["gridnav"].bc_steps = 1  # type: ignore[misc]
    assert isinstance(RECIPES["calc_lookup"], TeacherRecipe)
