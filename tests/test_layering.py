"""The package's shape, held by an `ast` walk (README "Layout" says why each layer is where).

- Pure modules (rules, decisions, what mail says) import no module that does I/O and read
  neither the clock nor the environment: they can be tested without disk, network or time.
- Every module imports only from its own layer or below, so every arrow points down.
- `triage.decide` takes at most four parameters and no callables: facts, not callbacks.
- No class is over 400 lines, no function over 80 (the reply parser excepted).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mailflow

PACKAGE = Path(mailflow.__file__).resolve().parent

# Lowest first. A module may import from its own layer and the ones before it.
LAYERS: tuple[tuple[str, ...], ...] = (
    # no domain knowledge
    ("errors", "clock", "addresses", "tokens", "mime", "htmltext", "classify", "hints", "wording"),
    ("config", "models"),  # settings and the domain's data
    (
        "people",
        "partnerships",
        "schedule",
        "commands",
        "suggest",
        "export",
        "parse",
        "program",
    ),  # rules
    ("letters", "triage"),  # what mail says; what inbound mail means
    ("actions", "selfservice", "samples"),  # what a message asks; sample mail
    ("disk", "store", "spool", "outbox", "inbox", "compose", "audit", "webauth"),  # disk, network
    ("mailroom", "intake", "jobs", "status", "admin", "quarantine"),  # use cases
    ("webadmin", "webadmin_numbers", "webadmin_templates", "webadmin_quarantine", "web"),  # site
    ("app",),  # wiring
    ("cli", "demo", "__main__"),  # edges
)
PURE = set(LAYERS[0] + LAYERS[1] + LAYERS[2] + LAYERS[3] + LAYERS[4]) - {"clock", "config"}
IO = {"disk", "store", "spool", "inbox", "outbox", "mailroom", "app", "intake", "jobs", "status"}
IO |= {"admin", "quarantine", "audit", "webauth", "webadmin", "webadmin_numbers"}
IO |= {"webadmin_templates", "webadmin_quarantine", "web"}
CLOCK_OR_ENV = {
    ("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today"),
    ("time", "time"), ("time", "time_ns"), ("os", "environ"), ("os", "getenv"),
}  # fmt: skip


def layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if name in layer:
            return index
    raise AssertionError(f"mailflow/{name}.py is in no layer: add it to LAYERS (and the README)")


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.glob("*.py") if p.name != "__init__.py")


def imports_of(tree: ast.AST) -> set[str]:
    """The mailflow modules a module imports (at any depth of the file)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "mailflow":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("mailflow."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mailflow.")}
    return found


def test_every_module_has_a_layer() -> None:
    for path in modules():
        layer_of(path.stem)


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.stem)
def test_imports_point_down(path: Path) -> None:
    own = layer_of(path.stem)
    upward = sorted(m for m in imports_of(ast.parse(path.read_text())) if layer_of(m) > own)
    assert upward == [], f"{path.name} imports from a higher layer"


@pytest.mark.parametrize("name", sorted(PURE))
def test_pure_modules_do_no_io_and_read_no_clock_or_environment(name: str) -> None:
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    assert sorted(imports_of(tree) & IO) == []
    reads = [
        f"{node.value.id}.{node.attr}:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and (node.value.id, node.attr) in CLOCK_OR_ENV
    ]
    assert reads == []


def test_decide_takes_facts_not_callbacks() -> None:
    tree = ast.parse((PACKAGE / "triage.py").read_text())
    [decide] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "decide"]
    args = decide.args.posonlyargs + decide.args.args + decide.args.kwonlyargs
    assert len(args) <= 4
    assert decide.args.vararg is None and decide.args.kwarg is None
    annotations = [ast.unparse(a.annotation) for a in args if a.annotation is not None]
    assert len(annotations) == len(args)
    assert not any("Callable" in text for text in annotations)


def test_no_god_class_and_no_long_function() -> None:
    too_long = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            lines = (
                (node.end_lineno or node.lineno) - node.lineno + 1 if hasattr(node, "lineno") else 0
            )
            if isinstance(node, ast.ClassDef) and lines > 400:
                too_long.append(f"class {path.stem}.{node.name}: {lines} lines")
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_function and lines > 80 and path.stem not in ("parse", "classify"):
                too_long.append(f"{path.stem}.{node.name}: {lines} lines")
    assert too_long == []
