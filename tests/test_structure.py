"""The package's shape: no import cycle between its modules, no oversized class, pure maths modules, a placement that
never reads the trainer, and experiments that import only the package."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "resrl_trl"
PURE_MODULES = ("residual", "advantages", "analysis", "metrics", "masks", "capture")
FRAMEWORKS = ("trl", "transformers", "accelerate", "peft", "deepspeed", "vllm")
MAX_CLASS_LINES = 250
REPO = PACKAGE.parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved against its package)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_no_import_cycle_between_modules() -> None:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in imports_of(path) if m in files and m != name} for name, path in files.items()}
    # A package's __init__ re-exports its modules; an edge into an __init__ from its own modules is not a cycle.
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(trail + [node, nxt])}"
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_no_class_over_the_size_limit() -> None:
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1
                assert lines <= MAX_CLASS_LINES, f"{path.name}: class {node.name} is {lines} lines"


def test_maths_modules_import_no_framework() -> None:
    for name in PURE_MODULES:
        imported = imports_of(PACKAGE / f"{name}.py")
        frameworks = sorted(m for m in imported if m.split(".")[0] in FRAMEWORKS)
        assert not frameworks, f"resrl_trl/{name}.py imports {frameworks}"


def test_only_the_trainer_reads_a_trainers_private_state() -> None:
    """``trainer._anything`` appears nowhere but in trainer.py, and the placement is never handed a trainer at all."""
    for path in PACKAGE.rglob("*.py"):
        if path.name == "trainer.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "trainer":
                assert not node.attr.startswith("_"), f"{path.name}:{node.lineno} reads trainer.{node.attr}"
    placement = ast.parse((PACKAGE / "placement.py").read_text())
    names = {node.id for node in ast.walk(placement) if isinstance(node, ast.Name)}
    names |= {node.arg for node in ast.walk(placement) if isinstance(node, ast.arg)}
    assert "trainer" not in names


def test_experiments_import_only_the_package() -> None:
    """The scripts that write docs/ depend on resrl_trl and third-party packages, not on benchmark or test helpers."""
    local = {p.stem for folder in ("benchmarks", "experiments", "tests") for p in (REPO / folder).glob("*.py")}
    for path in sorted((REPO / "experiments").glob("*.py")):
        helpers = {name.split(".")[0] for name in imports_of_script(path)} & (local | {"benchmarks", "tests"})
        assert not helpers, f"experiments/{path.name} imports {sorted(helpers)}"


def imports_of_script(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module or "")
    return found
