"""Import floors: the decision and observation modules are pure (no API client, no kopf,
no metrics library, no trainer), spotrun_api depends on none of the operator, and every
module imports as docs/operator.md's floors table says (lower floors, or earlier on its
own), never another module's underscore names."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

PURE = (
    "spotrun_operator.decisions.reconcile",
    "spotrun_operator.watching.observe",
    "spotrun_operator.decisions.finish",
)
FORBIDDEN = (
    "kopf",
    "kubernetes",
    "prometheus_client",
    "boto3",
    "torch",
    "spotrun_trainer",
    "spotrun_lm",
    "spotrun_operator.kubeio.calls",
    "spotrun_operator.kubeio.kube",
    "spotrun_operator.runner",
)


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_load_no_io_library(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the floors table of docs/operator.md against the imports --------------------------

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = {
    "spotrun_api": ROOT / "api/spotrun_api",
    "spotrun_operator": ROOT / "operator/spotrun_operator",
}


def documented_floors() -> dict[str, tuple[int, int]]:
    """Module -> (floor, position on its floor), as docs/operator.md's table lists them: a
    row per floor, naming its package (an operator subpackage, ``spotrun_api``, or
    ``spotrun_operator`` itself for the top) and its modules in import order."""
    found: dict[str, tuple[int, int]] = {}
    for line in (ROOT / "docs/operator.md").read_text().splitlines():
        row = re.match(r"\| (\d) \| `(\w+)`[^|]*\| (.*?) \|", line)
        if not row:
            continue
        floor, package, cell = int(row.group(1)), row.group(2), row.group(3)
        if package not in PACKAGES:
            package = f"spotrun_operator.{package}"
        for pos, name in enumerate(re.findall(r"`(\w+)`", cell)):
            found[f"{package}.{name}"] = (floor, pos)
    return found


def project_modules() -> dict[str, Path]:
    """Every module of spotrun_api and the operator, by dotted name (``__init__`` aside:
    they hold docstrings and the version, and import nothing of the project)."""
    return {
        ".".join((package, *path.relative_to(folder).with_suffix("").parts)): path
        for package, folder in PACKAGES.items()
        for path in sorted(folder.rglob("*.py"))
        if path.stem != "__init__"
    }


def test_package_inits_import_nothing_of_the_project() -> None:
    inits = [p for folder in PACKAGES.values() for p in sorted(folder.rglob("__init__.py"))]
    operator_inits = [p for p in inits if "spotrun_operator" in p.parts]
    assert len(operator_inits) > 1
    for path in operator_inits:
        assert not imports_of(path, project_modules()), path


def imports_of(path: Path, modules: Iterable[str]) -> set[tuple[str, str | None]]:
    """(project module, name imported from it or None) for every import in ``path``."""
    known = set(modules)
    out: set[tuple[str, str | None]] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {(a.name, None) for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                if f"{node.module}.{a.name}" in known:
                    out.add((f"{node.module}.{a.name}", None))
                elif node.module in known:
                    out.add((node.module, a.name))
    return out


def test_every_module_is_on_one_documented_floor() -> None:
    assert set(documented_floors()) == set(project_modules())


def test_modules_import_only_from_lower_floors_or_earlier_on_their_own() -> None:
    floors, modules = documented_floors(), project_modules()
    upward = [
        f"{name} {floors[name]} imports {target} {floors[target]}"
        for name, path in modules.items()
        for target, _ in imports_of(path, modules)
        if floors[target] >= floors[name]
    ]
    assert not upward, upward


def test_no_module_reaches_into_another_modules_underscore_names() -> None:
    modules = project_modules()
    reached = [
        f"{name}: {target}.{imported}"
        for name, path in modules.items()
        for target, imported in imports_of(path, modules)
        if imported and imported.startswith("_")
    ]
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            own = isinstance(node, ast.Attribute) and (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            )
            if isinstance(node, ast.Attribute) and not own and re.match(r"_[^_]", node.attr):
                reached.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not reached, reached
