"""``opdplug_local.modelcache``: self-trained models cached per recipe, moved into place atomically."""
from dataclasses import dataclass
from pathlib import Path

import pytest

from opdplug_local import modelcache


@dataclass(frozen=True)
class Recipe:
    steps: int = 3
    threads: int = 1


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPDPLUG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _builder(calls: list):
    def build(work: Path) -> Path:
        calls.append(work)
        final = work / "run" / "final"
        final.mkdir(parents=True)
        (final / "config.json").write_text("{}")
        return final
    return build


def test_key_ignores_excluded_fields_and_follows_the_version():
    assert modelcache.recipe_key(Recipe(threads=1), 1, ("threads",)) == modelcache.recipe_key(Recipe(threads=4), 1, ("threads",))
    assert modelcache.recipe_key(Recipe(steps=3), 1) != modelcache.recipe_key(Recipe(steps=4), 1)
    assert modelcache.recipe_key(Recipe(), 1) != modelcache.recipe_key(Recipe(), 2)
    assert len(modelcache.recipe_key(Recipe(), 1)) == 12


def test_built_once_then_reused_and_the_work_dir_is_removed(cache):
    calls = []
    path, built = modelcache.cached_model("thing-abc", _builder(calls))
    assert built and path == cache / "thing-abc" and (path / "config.json").is_file()
    again, built_again = modelcache.cached_model("thing-abc", _builder(calls))
    assert again == path and not built_again and len(calls) == 1
    assert [p.name for p in cache.iterdir()] == ["thing-abc"]  # no .build-* left behind


def test_a_failed_build_leaves_nothing(cache):
    def broken(work: Path) -> Path:
        (work / "half").mkdir(parents=True)
        (work / "half" / "config.json").write_text("{}")
        raise KeyboardInterrupt  # killed mid-build

    with pytest.raises(KeyboardInterrupt):
        modelcache.cached_model("thing-abc", broken)
    assert not modelcache.is_cached(cache / "thing-abc")
    assert not any(cache.iterdir()) if cache.exists() else True
    path, built = modelcache.cached_model("thing-abc", _builder([]))
    assert built and modelcache.is_cached(path)
