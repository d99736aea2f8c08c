"""``tools/imports.py``: the repository passes it, and it does find what it looks for."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "imports.py"


@pytest.fixture(scope="module")
def imports():
    spec = importlib.util.spec_from_file_location("opdplug_tools_imports", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_the_repository_keeps_its_boundaries():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.stdout.startswith("kernel opdplug/: ")


def test_json_output_lists_distributions_and_edges():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json"], capture_output=True, text=True, timeout=120)
    report = json.loads(proc.stdout)
    names = [d["name"] for d in report["distributions"]]
    assert names[0] == "opdplug" and {"opdplug-local", "opdplug-token"} <= set(names)
    assert report["kernel_lines"] == report["distributions"][0]["package_lines"] > 0
    edges = {(e["from"], e["to"]) for e in report["edges"]}
    assert ("opdplug-token", "opdplug") in edges
    assert not any(src == "opdplug" for src, _ in edges)  # the kernel imports no plugin


def write(root: Path, files: dict[str, str]) -> Path:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def pyproject(name: str, package: str, deps: list[str]) -> str:
    return (f'[project]\nname = "{name}"\ndependencies = {json.dumps(deps)}\n'
            f'[tool.setuptools.packages.find]\ninclude = ["{package}*"]\n')


def tree(tmp_path, **extra):
    """A kernel ``core`` (named like the real one: opdplug) and a plugin ``plug`` that depends on it."""
    return write(tmp_path, {
        "pyproject.toml": pyproject("opdplug", "opdplug", ["torch"]),
        "opdplug/__init__.py": "",
        "opdplug/a.py": "import os\nfrom . import b\n",
        "opdplug/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n",
        "plug/pyproject.toml": pyproject("opdplug-plug", "opdplug_plug", ["opdplug>=0.1"]),
        "plug/opdplug_plug/__init__.py": "from opdplug import a\n",
        "plug/tests/test_plug.py": "import opdplug_plug\n",
        **extra,
    })


def test_a_clean_tree_passes(imports, tmp_path):
    report = imports.check(tree(tmp_path), allowed_long={})
    assert report.problems == []  # the TYPE_CHECKING import makes no cycle
    assert [(d.name, d.root) for d in report.distributions] == [("opdplug", "."), ("opdplug-plug", "plug")]
    assert set(report.edges) == {("opdplug-plug", "opdplug")}


def test_a_cycle_through_a_function_local_import_is_found(imports, tmp_path):
    root = tree(tmp_path, **{"opdplug/b.py": "def f():\n    from .c import y\n", "opdplug/c.py": "import opdplug.a\n"})
    problems = imports.check(root, allowed_long={}).problems
    assert problems == ["import cycle: opdplug.a -> opdplug.b -> opdplug.c -> opdplug.a "
                        "(at opdplug/a.py:2, opdplug/b.py:2, opdplug/c.py:1)"]
    assert imports.main(["--root", str(root)]) == 1


def test_an_undeclared_distribution_is_found(imports, tmp_path):
    root = tree(tmp_path, **{
        "other/pyproject.toml": pyproject("opdplug-other", "opdplug_other", ["opdplug"]),
        "other/opdplug_other/__init__.py": "",
        "other/opdplug_other/uses.py": "def f():\n    from opdplug_plug import thing\n",
    })
    problems = imports.check(root, allowed_long={}).problems
    assert problems == ["other/opdplug_other/uses.py:2: opdplug-other imports opdplug-plug (opdplug_plug), but "
                        "other/pyproject.toml does not list opdplug-plug in dependencies"]


def test_the_kernel_and_its_tests_import_no_plugin(imports, tmp_path):
    root = tree(tmp_path, **{"opdplug/c.py": "import opdplug_plug\n",
                             "tests/opdplug/test_c.py": "from opdplug_plug import x\n",
                             "tests/test_end_to_end.py": "import opdplug_plug\n"})  # repo-wide: may
    problems = imports.check(root, allowed_long={}).problems
    assert len(problems) == 1 and problems[0].startswith("opdplug/c.py:1: the kernel imports plugin distribution "
                                                         "opdplug-plug (opdplug_plug) and 1 more;")
    root = tree(tmp_path, **{"opdplug/c.py": ""})
    problems = imports.check(root, allowed_long={}).problems
    assert len(problems) == 1 and problems[0].startswith("tests/opdplug/test_c.py:1: the kernel's tests import")


def test_missing_module_and_long_module(imports, tmp_path):
    root = tree(tmp_path, **{"plug/opdplug_plug/big.py": "x = 1\n" * 401, "plug/opdplug_plug/m.py": "from opdplug.nope import z\n"})
    problems = imports.check(root, allowed_long={}).problems
    assert problems == [
        "plug/opdplug_plug/m.py:1: imports opdplug.nope, which is no module of its distribution (opdplug)",
        "plug/opdplug_plug/big.py: 401 lines, over 400: split it (or allow it in ALLOWED_LONG, tools/imports.py, with the reason)",
    ]
    allowed = {"plug/opdplug_plug/big.py": "explained", "plug/opdplug_plug/m.py": "stale"}
    assert imports.check(root, allowed_long=allowed).problems[1:] == [
        "plug/opdplug_plug/m.py: in ALLOWED_LONG but 1 lines; remove the entry"]
