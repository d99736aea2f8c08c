"""The repository's import boundaries, checked from the source alone (nothing is imported).

Run ``python tools/imports.py`` from anywhere. It parses every ``.py`` file of each distribution
(every ``pyproject.toml`` in the tree) with ``ast``, builds the module import graph (function-
local imports included; imports under ``if TYPE_CHECKING:`` left out, they never run), prints the
lines of Python per distribution (the kernel ``opdplug/`` first) and the imports that cross from
one distribution into another, and exits 1 with one line per problem:

* an import cycle among modules (function-local imports count: a cycle a deferred import hides
  is still one module needing the other both ways);
* a distribution importing another that its ``pyproject.toml`` does not list in ``dependencies``;
* the kernel (``opdplug/`` and its tests under ``tests/opdplug/``) importing any plugin
  distribution;
* an import of a first-party module that does not exist;
* a module over ``MAX_LINES`` lines, unless ``ALLOWED_LONG`` names it with the reason (a stale
  entry in ``ALLOWED_LONG`` is a problem too).

``--json`` prints the same as one JSON document; ``--root DIR`` checks another tree.
"""
from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import re
import sys
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KERNEL = "opdplug"
"""The kernel's distribution: it may import no other first-party distribution."""
KERNEL_TESTS = ("tests/opdplug",)
"""Test directories of the root distribution held to the kernel's rule (the kernel's own tests)."""
MAX_LINES = 400
ALLOWED_LONG: dict[str, str] = {
    # "path/relative/to/the/repo.py": "why it stays one module (where the README explains it)",
}
"""Modules allowed over ``MAX_LINES``, each with its reason."""
SKIP_DIRS = {".git", "__pycache__", "build", "dist", "runs", "node_modules", ".pytest_cache", ".cache"}
"""Directory names never searched (besides hidden ones and ``*.egg-info``)."""


# ----------------------------------------------------------------------------- the tree
@dataclass
class Distribution:
    name: str  # normalized: opdplug-token
    root: str  # the directory of its pyproject.toml, relative to the repo ("." at the top)
    packages: list[str]  # its top-level import packages
    dependencies: set[str]  # normalized names of what its ``dependencies`` lists
    package_lines: int = 0
    other_lines: int = 0  # its tests and scripts: files under its root outside its packages


@dataclass
class Module:
    key: str  # the dotted name of a package module; the path of a loose file (tests, scripts)
    path: str  # relative to the repo
    owner: str  # its distribution ("" for repository-wide files: end-to-end tests, benchmarks)
    in_package: bool
    lines: int


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalize(re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0])


def walk(root: Path):
    """Every directory under ``root`` (relative paths), hidden, build and egg-info ones pruned."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info"))
        yield Path(dirpath), filenames


def find_distributions(root: Path) -> list[Distribution]:
    dists = []
    for dirpath, filenames in walk(root):
        if "pyproject.toml" not in filenames:
            continue
        data = tomllib.loads((dirpath / "pyproject.toml").read_text())
        project = data.get("project") or {}
        if "name" not in project:
            continue
        find = ((data.get("tool") or {}).get("setuptools") or {}).get("packages") or {}
        include = (find.get("find", {}) if isinstance(find, dict) else {}).get("include") or ["*"]
        packages = sorted(  # namespace packages too (setuptools finds them from pyproject.toml)
            d.name for d in dirpath.iterdir() if d.is_dir() and d.name not in ("tests", "test")
            and any(fnmatch.fnmatch(d.name, pat) for pat in include) and any(d.rglob("*.py"))
        )
        rel = dirpath.relative_to(root).as_posix()
        deps = {requirement_name(r) for r in project.get("dependencies") or []}
        dists.append(Distribution(normalize(project["name"]), rel, packages, deps))
    return sorted(dists, key=lambda d: (d.name != KERNEL, d.name))


def inside(path: str, directory: str) -> bool:
    return directory == "." or path == directory or path.startswith(directory + "/")


def owner_of(path: str, dists: list[Distribution]) -> Distribution | None:
    """The distribution whose root holds ``path`` most closely."""
    holders = [d for d in dists if inside(path, d.root)]
    return max(holders, key=lambda d: 0 if d.root == "." else len(d.root), default=None)


def collect(root: Path, dists: list[Distribution]) -> list[Module]:
    modules = []
    for dirpath, filenames in walk(root):
        for filename in sorted(filenames):
            if not filename.endswith(".py"):
                continue
            path = (dirpath / filename).relative_to(root).as_posix()
            dist = owner_of(path, dists)
            in_package, key, owner = False, path, dist.name if dist else ""
            if dist is not None:
                rel = path if dist.root == "." else path[len(dist.root) + 1:]
                parts = rel[:-3].split("/")
                if parts[0] in dist.packages:
                    in_package = True
                    key = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                elif dist.root == "." and not any(inside(path, t) for t in KERNEL_TESTS):
                    owner = ""  # the root distribution's tests and benchmarks use every distribution
            lines = len((dirpath / filename).read_text(encoding="utf-8", errors="replace").splitlines())
            modules.append(Module(key, path, owner, in_package, lines))
    return modules


# ----------------------------------------------------------------------------- imports
def runtime_imports(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


class Resolver:
    def __init__(self, modules: list[Module], dists: list[Distribution]):
        self.by_key = {m.key: m for m in modules}
        self.namespaces = {k.rsplit(".", n)[0] for k in self.by_key if "/" not in k for n in range(1, k.count(".") + 1)}
        """Every package of a package module (namespace packages have no module of their own)."""
        self.top = {p: d.name for d in dists for p in d.packages}
        """Top-level package -> distribution."""
        self.loose_dirs: dict[str, dict[str, str]] = defaultdict(dict)
        """Directory -> {importable name -> module key} for the files beside a loose file."""
        for m in modules:
            if not m.in_package:
                directory, name = os.path.split(m.path)
                self.loose_dirs[directory][name[:-3]] = m.key

    def first_party(self, dotted: str) -> bool:
        return dotted.split(".")[0] in self.top

    def longest(self, dotted: str) -> str | None:
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in self.by_key:
                return ".".join(parts[:n])
        return None

    def resolve(self, module: Module, node) -> tuple[list[str], list[str]]:
        """(first-party module keys the import statement loads, first-party names not found)."""
        found, missing = [], []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                if not module.in_package:
                    return [], []
                package = module.key.split(".")
                if not module.path.endswith("__init__.py"):
                    package = package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            targets = []
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                sibling = not module.in_package and self._sibling(module, sub)
                targets.append(sub if sub in self.by_key or sub in self.namespaces or sibling else base)
        for dotted in targets:
            sibling = None if module.in_package else self._sibling(module, dotted)
            if sibling is not None:
                found.append(sibling)
            elif self.first_party(dotted):
                key = self.longest(dotted)
                if key != dotted and dotted not in self.namespaces:
                    missing.append(dotted)
                if key is not None:
                    found.append(key)
        return list(dict.fromkeys(found)), missing

    def _sibling(self, module: Module, dotted: str) -> str | None:
        """A loose file's import of a file beside it (what ``sys.path[0]`` gives scripts and tests)."""
        siblings = self.loose_dirs.get(os.path.dirname(module.path), {})
        return siblings.get(dotted.split(".")[0])


# ----------------------------------------------------------------------------- checks
def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component that has one (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = set(stack[stack.index(node):])
            del stack[stack.index(node):]
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:  # breadth-first from its first module back to itself
        first = min(component)
        parents: dict[str, str] = {}
        frontier = [first]
        while frontier and first not in parents:
            reached = []
            for node in frontier:
                for child in sorted(graph[node] & component - parents.keys()):
                    parents[child] = node
                    reached.append(child)
            frontier = reached
        path = [first]
        while len(path) == 1 or path[-1] != first:
            path.append(parents[path[-1]])
        cycles.append(path[::-1])
    return sorted(cycles)


@dataclass
class Report:
    distributions: list[Distribution]
    modules: list[Module]
    edges: dict[tuple[str, str], list[tuple[str, str, int]]]
    """(importer distribution, imported distribution) -> [(file, imported module, line)]."""
    problems: list[str]

    @property
    def kernel_lines(self) -> int:
        return sum(m.lines for m in self.modules if m.in_package and m.owner == KERNEL)


def check(root: Path = REPO, allowed_long: dict[str, str] | None = None, max_lines: int = MAX_LINES) -> Report:
    root = Path(root)
    allowed_long = ALLOWED_LONG if allowed_long is None else allowed_long
    dists = find_distributions(root)
    by_name = {d.name: d for d in dists}
    modules = collect(root, dists)
    resolver = Resolver(modules, dists)
    problems: list[str] = []
    graph: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], str] = {}
    edges: dict[tuple[str, str], list[tuple[str, str, int]]] = defaultdict(list)

    for m in modules:
        d = by_name.get(m.owner)
        if d is not None:
            if m.in_package:
                d.package_lines += m.lines
            else:
                d.other_lines += m.lines
        source = (root / m.path).read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source, filename=m.path)
        except SyntaxError as exc:
            problems.append(f"{m.path}:{exc.lineno}: syntax error: {exc.msg}")
            continue
        for node in runtime_imports(tree):
            found, missing = resolver.resolve(m, node)
            for name in missing:
                problems.append(f"{m.path}:{node.lineno}: imports {name}, which is no module of its distribution "
                                f"({resolver.top[name.split('.')[0]]})")
            for key in found:
                graph[m.key].add(key)
                where.setdefault((m.key, key), f"{m.path}:{node.lineno}")
                target = resolver.by_key[key]
                if target.owner and target.owner != m.owner:
                    edges[(m.owner, target.owner)].append((m.path, key, node.lineno))

    for cycle in find_cycles(graph):
        hops = ", ".join(where[(a, b)] for a, b in zip(cycle, cycle[1:]))
        problems.append(f"import cycle: {' -> '.join(cycle)} (at {hops})")

    for (src, dst), uses in sorted(edges.items()):
        if not src or src == dst:
            continue
        path, key, line = uses[0]
        more = f" and {len(uses) - 1} more" if len(uses) > 1 else ""
        if src == KERNEL:
            who = "the kernel's tests import" if any(inside(path, t) for t in KERNEL_TESTS) else "the kernel imports"
            problems.append(f"{path}:{line}: {who} plugin distribution {dst} ({key}){more}; the kernel must work "
                            f"without any plugin")
        elif dst not in by_name[src].dependencies:
            problems.append(f"{path}:{line}: {src} imports {dst} ({key}){more}, but {by_name[src].root}/pyproject.toml "
                            f"does not list {dst} in dependencies")

    for m in modules:
        if m.lines > max_lines and m.path not in allowed_long:
            problems.append(f"{m.path}: {m.lines} lines, over {max_lines}: split it (or allow it in ALLOWED_LONG, "
                            f"tools/imports.py, with the reason)")
    lines = {m.path: m.lines for m in modules}
    for path in sorted(allowed_long):
        if lines.get(path, 0) <= max_lines:
            problems.append(f"{path}: in ALLOWED_LONG but {'missing' if path not in lines else f'{lines[path]} lines'}; "
                            f"remove the entry")
    return Report(dists, modules, dict(edges), problems)


# ----------------------------------------------------------------------------- output
def as_json(report: Report) -> dict:
    return {
        "kernel_lines": report.kernel_lines,
        "distributions": [
            {"name": d.name, "root": d.root, "packages": d.packages, "dependencies": sorted(d.dependencies),
             "package_lines": d.package_lines, "other_lines": d.other_lines}
            for d in report.distributions
        ],
        "repo_wide_lines": sum(m.lines for m in report.modules if not m.owner),
        "edges": [
            {"from": src or "(repo-wide)", "to": dst, "imports": len(uses),
             "uses": [{"file": f, "module": k, "line": n} for f, k, n in uses]}
            for (src, dst), uses in sorted(report.edges.items())
        ],
        "problems": report.problems,
    }


def print_text(report: Report) -> None:
    kernel = next((d for d in report.distributions if d.name == KERNEL), None)
    print(f"kernel {', '.join(p + '/' for p in kernel.packages) if kernel else '(none)'}: {report.kernel_lines} lines")
    w1 = max([len("(repo-wide tests, bench)")] + [len(d.name) for d in report.distributions])
    w2 = max(len(d.root) + 1 for d in report.distributions) if report.distributions else 4
    print(f"\n{'distribution':<{w1}} {'root':<{w2}} {'package':>8} {'tests+scripts':>14}")
    for d in report.distributions:
        print(f"{d.name:<{w1}} {d.root + '/':<{w2}} {d.package_lines:>8} {d.other_lines:>14}")
    repo_wide = sum(m.lines for m in report.modules if not m.owner)
    print(f"{'(repo-wide tests, bench)':<{w1}} {'':<{w2}} {'':>8} {repo_wide:>14}")
    print("\ncross-distribution imports (import statements; * = from tests or scripts only):")
    in_package = {m.path: m.in_package for m in report.modules}
    for src in sorted({s for s, _ in report.edges}):
        targets = []
        for (s, dst), uses in sorted(report.edges.items()):
            if s != src:
                continue
            tests_only = not any(in_package[f] for f, _, _ in uses)
            targets.append(f"{dst} ({len(uses)}{'*' if tests_only else ''})")
        print(f"  {src or '(repo-wide)'} -> {', '.join(targets)}")
    print(f"\n{len(report.problems)} problem(s):" if report.problems else "\nno problems")
    for problem in report.problems:
        print(problem)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--root", default=str(REPO), help="the tree to check (default: this repository)")
    args = parser.parse_args(argv)
    report = check(Path(args.root))
    if args.json:
        print(json.dumps(as_json(report), indent=1))
    else:
        print_text(report)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
