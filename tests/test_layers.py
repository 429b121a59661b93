"""The package's import graph is a DAG that follows its layers (issue 25, ../shared/DESIGN.md "Layout").

Every ``import`` of every module counts, the ones inside functions too (a lazy import is still a
dependency); only ``if TYPE_CHECKING:`` blocks are left out. A module may import its own layer
and the layers below it, never one above; ``formats`` names its backends and writers as strings
and imports neither; only ``cli`` imports click; and no chain of imports comes back to where it
started. An import of a module's own parent package is not an edge (Python runs the parent's
``__init__`` first anyway).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "unet_deploy"

# Lowest first. A name stands for that module and everything under it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("errors", "cpu", "fileio", "meta", "metrics", "preprocess", "postprocess", "tiling")),
    ("formats", ("formats",)),  # the registry: names backends and writers, imports neither
    ("model", ("model", "checkpoint")),  # the torch network and its checkpoint file
    ("data", ("data",)),  # labelme conversion, datasets, synthetic images, mask files
    ("runtime", ("runtime", "stream_source", "stream", "predict")),  # never training or export
    ("gate", ("accuracy",)),  # measuring a candidate's masks against a reference
    ("build", ("export", "parity", "precision_gate", "train")),  # export (with its gate) and training
    ("apps", ("bench", "serve", "eval", "selection", "labelling_loop", "demo")),  # built on the runtime
    ("cli", ("cli",)),  # the only place that knows click
    ("entry", ("__init__", "__main__", "train.__main__")),  # `python -m ...` and the package's front door
]


def module_names() -> dict[str, Path]:
    """``"runtime.base"`` -> its file, for every module of the package (``"__init__"`` is the package)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING":
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The package modules ``name`` imports -> the line of the first such import; external top-level names too,
    as ``"<ext>click"``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    is_package = path.name == "__init__.py"
    here = [] if name == "__init__" else name.split(".")
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif node.level == 0:
            targets = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            base = here if is_package else here[:-1]
            base = base[: len(base) - (node.level - 1)]
            stem = ".".join(["unet_deploy", *base] + ([node.module] if node.module else []))
            targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
        for target in targets:
            if not target.startswith("unet_deploy"):
                found.setdefault("<ext>" + target.split(".")[0], node.lineno)
                continue
            parts = target.split(".")[1:]
            while parts and ".".join(parts) not in modules:  # `from . import x`: x may be a name, not a module
                parts.pop()
            dep = ".".join(parts) or "__init__"
            ancestor = dep == "__init__" or name.startswith(dep + ".")
            if dep != name and not ancestor:
                found.setdefault(dep, node.lineno)
    return found


def layer_of(name: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    if best is None:
        raise AssertionError(f"unet_deploy.{name} is in no layer: add it to LAYERS in tests/test_layers.py")
    return best[0]


def graph() -> dict[str, dict[str, int]]:
    modules = module_names()
    return {name: imports(name, path, modules) for name, path in modules.items()}


def upward_imports(edges: dict[str, dict[str, int]]) -> list[str]:
    """One line per import against the layers (and per click import outside cli)."""
    bad = []
    for name, deps in sorted(edges.items()):
        for dep, line in deps.items():
            where = f"unet_deploy/{name.replace('.', '/')}.py:{line}"
            if dep.startswith("<ext>"):
                if dep == "<ext>click" and layer_of(name) != layer_of("cli"):
                    bad.append(f"{where}: {name} imports click; only cli/ may")
                continue
            if layer_of(dep) > layer_of(name):
                bad.append(f"{where}: {name} ({LAYERS[layer_of(name)][0]}) imports {dep} "
                           f"({LAYERS[layer_of(dep)][0]}), a higher layer")  # fmt: skip
            elif name.startswith("formats") and not dep.startswith("formats") and layer_of(dep) > layer_of("errors"):
                bad.append(f"{where}: formats imports {dep}; it may import only the core")
    return bad


def find_cycle(edges: dict[str, dict[str, int]]) -> list[str]:
    """A list of modules whose imports run in a circle (first == last), or [] for a DAG."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(v: str) -> list[str]:
        state[v] = 1
        path.append(v)
        for w in edges.get(v, {}):
            if w.startswith("<ext>"):
                continue
            if state.get(w) == 1:
                return path[path.index(w) :] + [w]
            if w not in state and (cycle := visit(w)):
                return cycle
        path.pop()
        state[v] = 2
        return []

    for v in sorted(edges):
        if v not in state and (cycle := visit(v)):
            return cycle
    return []


def test_every_module_has_a_layer():
    for name in module_names():
        layer_of(name)


def test_no_import_runs_against_the_layers():
    bad = upward_imports(graph())
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(graph())
    assert not cycle, "the imports run in a circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("source, expected", [
    ("from .errors import UnetDeployError\ndef f():\n    from .export import export_model\n", ["export"]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .export import export_model\n", []),
])  # fmt: skip
def test_the_parser_sees_function_level_imports_and_skips_type_checking(tmp_path, source, expected):
    path = tmp_path / "meta.py"
    path.write_text(source)
    found = imports("meta", path, module_names())
    upward = [d for d in found if not d.startswith("<ext>") and layer_of(d) > layer_of("meta")]
    assert upward == expected
