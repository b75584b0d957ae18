"""The Python distributions of a release: ``packaging/<dist>/`` templates, staged into
self-contained projects with the version in, then built with ``uv build``
(docs/release.md)."""

from __future__ import annotations

import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from spotrun_dev import images, paths
from spotrun_dev.release_version import ReleaseError, python_version

PACKAGING_DIR = Path("packaging")
# Python distributions, in build order (each after the spotrun distributions it requires).
DISTRIBUTIONS = ("spotrun-api", "spotrun-trainer", "spotrun-cli", "spotrun-operator")
VERSION_PLACEHOLDER = "@VERSION@"


@dataclass(frozen=True)
class Distribution:
    name: str
    folder: Path  # packaging/<name>, relative to the root
    sources: tuple[str, ...]  # source folders staged into src/, e.g. "api/spotrun_api"
    requires: tuple[str, ...]  # the spotrun distributions it depends on

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(Path(s).name for s in self.sources)


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def distributions(root: Path = paths.REPO_ROOT) -> dict[str, Distribution]:
    """The distributions of packaging/, read from their pyproject.toml.in templates."""
    out = {}
    for name in DISTRIBUTIONS:
        folder = PACKAGING_DIR / name
        with (root / folder / "pyproject.toml.in").open("rb") as f:
            data = tomllib.load(f)
        deps = [requirement_name(d) for d in data["project"]["dependencies"]]
        out[name] = Distribution(
            name=name,
            folder=folder,
            sources=tuple(data["tool"]["spotrun-release"]["packages"]),
            requires=tuple(d for d in deps if d in DISTRIBUTIONS),
        )
    return out


def closure_problems(root: Path = paths.REPO_ROOT) -> list[str]:
    """Project packages a distribution's code imports that neither it nor the spotrun
    distributions it requires ship (the wheel would fail at import)."""
    dists = distributions(root)
    folders = {Path(s).name: root / s for d in dists.values() for s in d.sources}

    def shipped(name: str) -> set[str]:
        dist = dists[name]
        return set(dist.packages).union(*(shipped(r) for r in dist.requires))

    problems = []
    for dist in dists.values():
        allowed = shipped(dist.name)
        for package in dist.packages:
            found, todo = set(), [package]
            while todo:
                name = todo.pop()
                if name in found:
                    continue
                found.add(name)
                if name in folders:
                    todo += [
                        m
                        for m in images.imported_modules(folders[name])
                        if m.startswith("spotrun_")
                    ]
            for missing in sorted(found - allowed):
                requires = ", ".join(dist.requires) or "none"
                problems.append(
                    f"{dist.name}: {package} imports {missing}, which neither {dist.name} nor "
                    f"the spotrun distributions it requires ({requires}) ship"
                )
    return problems


def _ignore_built(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))}


def stage_distribution(
    dist: Distribution, version: str, out: Path, root: Path = paths.REPO_ROOT
) -> Path:
    """``out/<name>/``: the template with the version in, its README and its packages
    (with a PEP 561 ``py.typed`` marker) under ``src/``: a self-contained project."""
    template = (root / dist.folder / "pyproject.toml.in").read_text()
    if VERSION_PLACEHOLDER not in template:
        raise ReleaseError(f"{dist.folder}/pyproject.toml.in has no {VERSION_PLACEHOLDER}")
    target = out / dist.name
    shutil.rmtree(target, ignore_errors=True)
    (target / "src").mkdir(parents=True)
    (target / "pyproject.toml").write_text(
        template.replace(VERSION_PLACEHOLDER, python_version(version))
    )
    shutil.copy2(root / dist.folder / "README.md", target / "README.md")
    for source in dist.sources:
        package = target / "src" / Path(source).name
        shutil.copytree(root / source, package, ignore=_ignore_built)
        (package / "py.typed").touch()
    return target


def stage_distributions(version: str, out: Path, root: Path = paths.REPO_ROOT) -> list[Path]:
    """Every distribution staged under ``out/src/``; ``out/dist/`` emptied for the builds."""
    shutil.rmtree(out / "src", ignore_errors=True)
    shutil.rmtree(out / "dist", ignore_errors=True)
    (out / "dist").mkdir(parents=True)
    return [stage_distribution(d, version, out / "src", root) for d in distributions(root).values()]
