"""The rule of arrows in docs/architecture.md, checked on the source: every import of a
scratchcnn module (at the top of a file or inside a function) points down the list of
packages, no two modules import each other through any path, and the third-party packages
that belong to one place stay there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "scratchcnn"

#: The packages from the bottom up: each may import only those before it (and the base).
ORDER = ["nn", "engine", "checkpoint", "data", "parallel", "training", "viz", "onnx", "cli"]
BASE = {"errors", "_json", "_version", "_cache", "_blas"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported scratchcnn module, line) for every import in the file, lazy ones too."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            # "from . import engine" imports the module scratchcnn.engine, not the package
            submodules = [f"{target}.{a.name}" for a in node.names]
            candidates = [c for c in submodules if c in MODULES] or [target]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for c in candidates:
            if c in MODULES and c != name:
                found.append((c, node.lineno))
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_imports_point_down_the_list():
    wrong = []
    for name, path in MODULES.items():
        own = _package(name)
        if own not in ORDER:  # scratchcnn/__init__.py, __main__.py, errors.py, _json.py
            if own in BASE:
                bad = [t for t, _ in _imports(name, path) if _package(t) not in BASE]
                wrong += [f"{name} imports {t}" for t in bad]
            continue
        allowed = set(ORDER[: ORDER.index(own) + 1]) | BASE
        for target, line in _imports(name, path):
            if _package(target) not in allowed:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name} -> {target}")
    assert not wrong, "imports that point up:\n" + "\n".join(wrong)


def test_nn_imports_nothing_of_scratchcnn_but_errors():
    for name, path in MODULES.items():
        if _package(name) == "nn":
            others = {_package(t) for t, _ in _imports(name, path)} - {"nn", "errors"}
            assert not others, f"{name} imports {others}"


def test_no_module_imports_itself_through_others():
    graph = {name: {t for t, _ in _imports(name, path)} for name, path in MODULES.items()}
    # A package imports its own modules in its __init__ (that is how it exports them); a
    # cycle through a package's __init__ from inside that package is allowed.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            cycle = [*stack[stack.index(node) :], node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*stack, node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])


@pytest.mark.parametrize(
    "third_party, where",
    [
        ("matplotlib", {"viz"}),
        ("argparse", {"cli"}),
        ("numba", {"engine"}),
        ("llvmlite", {"engine"}),
        ("mpi4py", {"parallel"}),
        ("onnx", {"onnx"}),
        ("tensorboardX", {"training"}),
    ],
)
def test_a_dependency_is_imported_in_its_one_place(third_party, where):
    users = set()
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            if any(n == third_party or n.startswith(third_party + ".") for n in names):
                users.add(_package(name))
    assert users <= where, f"{third_party} is imported in {users - where}"


def test_import_scratchcnn_changes_no_process_setting():
    """No allocator tuning, no BLAS thread limit, no environment variable set on import."""
    import os
    import subprocess
    import sys

    code = (
        "import os, json, numpy\n"
        "from threadpoolctl import threadpool_info\n"  # it sets an environment variable itself
        "before, t0 = dict(os.environ), threadpool_info()\n"
        "import scratchcnn, scratchcnn.parallel.allocator as a\n"
        "print(json.dumps([a._tuned, dict(os.environ) == before, threadpool_info() == t0]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[null, true, true]"
