"""Import floors between the packages: ``spotrun_api`` (the contract) at the bottom; the
trainer library, the operator and the CLI each on it and never on one another (each ships
in its own image or wheel); the built-in language-model trainer (``spotrun_lm``) on the
trainer library, which never imports it (the ``spotrun-trainer`` distribution ships the
library alone); the dev tooling (``hack/``) and the benches (``bench/``) on top. Every
import counts, also one inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Package -> the project packages it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "spotrun_api": set(),
    "spotrun_trainer": {"spotrun_api"},
    "spotrun_lm": {"spotrun_api", "spotrun_trainer"},
    "spotrun_operator": {"spotrun_api"},
    "spotrun_cli": {"spotrun_api"},
    "spotrun_dev": {
        "spotrun_api",
        "spotrun_trainer",
        "spotrun_lm",
        "spotrun_operator",
        "spotrun_cli",
    },
    "bench": {
        "spotrun_api",
        "spotrun_trainer",
        "spotrun_lm",
        "spotrun_operator",
        "spotrun_cli",
        "spotrun_dev",
    },
}
FOLDERS = {
    "spotrun_api": ROOT / "api/spotrun_api",
    "spotrun_trainer": ROOT / "trainer/spotrun_trainer",
    "spotrun_lm": ROOT / "trainer/spotrun_lm",
    "spotrun_operator": ROOT / "operator/spotrun_operator",
    "spotrun_cli": ROOT / "cli/spotrun_cli",
    "spotrun_dev": ROOT / "hack/spotrun_dev",
    "bench": ROOT / "bench",
}
PROJECT = {p for p in ALLOWED if p != "bench"}
# The trainer's re-export of the contract: whoever needs the contract imports spotrun_api.
TRAINER_SHIM = "spotrun_trainer.contract"


def imported_modules(path: Path) -> set[str]:
    """Every absolute module ``path`` imports (``from a import b`` counts as a and a.b)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def sources(package: str) -> list[Path]:
    return sorted(FOLDERS[package].rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_the_packages_below_it(package: str) -> None:
    assert sources(package), package
    wrong = sorted(
        f"{path.relative_to(ROOT)}: {module}"
        for path in sources(package)
        for module in imported_modules(path)
        if (top := module.split(".")[0]) in PROJECT
        and top != package
        and top not in ALLOWED[package]
    )
    assert not wrong, wrong


@pytest.mark.parametrize("package", sorted(set(ALLOWED) - {"spotrun_trainer"}))
def test_only_the_trainer_imports_its_contract_reexport(package: str) -> None:
    wrong = sorted(
        f"{path.relative_to(ROOT)}: {module}"
        for path in sources(package)
        for module in imported_modules(path)
        if module == TRAINER_SHIM
    )
    assert not wrong, wrong


DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes of a module and of its classes and functions."""
    owners = [tree, *(n for n in ast.walk(tree) if isinstance(n, DEFINITIONS))]
    return {
        id(body[0].value)
        for body in (o.body for o in owners)
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    }


def test_the_trainer_library_never_names_the_built_in_trainer_to_run_it() -> None:
    """Launcher mode re-runs the module its program names (``launch(..., module=)``): the
    library holds no ``spotrun_lm`` in its code, docstrings aside."""
    wrong = []
    for path in sources("spotrun_trainer"):
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        wrong += [
            f"{path.relative_to(ROOT)}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "spotrun_lm" in node.value
            and id(node) not in skip
        ]
    assert not wrong, wrong
