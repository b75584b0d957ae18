"""The Python distributions users install (packaging/): built from this repository by the
release's own staging and ``uv build``, installed alone with ``--no-deps`` and imported in
a Python that sees no other spotrun package (``-S``: no site, so no editable install).

The builds use this venv's setuptools (``--no-build-isolation``: no network) and take a few
seconds; each wheel is built from its sdist, as in a release."""

from __future__ import annotations

import configparser
import importlib.metadata
import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

from spotrun_dev import images, paths, release_dists, release_plan

ROOT = paths.REPO_ROOT
VERSION = "1.2.3-rc.4"  # not the repository's: the version must flow from the argument
PYVERSION = "1.2.3rc4"
DISTS = release_dists.distributions(ROOT)
pytestmark = pytest.mark.timeout(300)

with (ROOT / "pyproject.toml").open("rb") as f:
    ROOT_PROJECT = tomllib.load(f)["project"]


def _dist_name(requirement: str) -> str:
    return release_dists.requirement_name(requirement)


def _template(name: str) -> dict[str, object]:
    with (ROOT / "packaging" / name / "pyproject.toml.in").open("rb") as f:
        return tomllib.load(f)


def _requirements(name: str) -> list[str]:
    project = _template(name)["project"]
    assert isinstance(project, dict)
    extras = project.get("optional-dependencies", {})
    return [*project["dependencies"], *(r for reqs in extras.values() for r in reqs)]


# ------------------------------------------------------------------------ the templates
def test_the_distributions_cover_every_shipped_package() -> None:
    assert set(DISTS) == set(release_dists.DISTRIBUTIONS)
    shipped = [p for d in DISTS.values() for p in d.packages]
    assert sorted(shipped) == ["spotrun_api", "spotrun_cli", "spotrun_operator", "spotrun_trainer"]
    assert "spotrun_dev" not in shipped  # the dev harness is never published
    # The built-in trainer is the trainer image's program, not part of the library.
    assert "spotrun_lm" not in shipped


@pytest.mark.parametrize("name", release_dists.DISTRIBUTIONS)
def test_pins_are_the_root_pyproject_s(name: str) -> None:
    """Third-party requirements are pins of the root pyproject.toml at their tested version:
    ``>=`` for the libraries, ``==`` for the operator; spotrun ones ``==@VERSION@``."""
    pinned = {}
    for req in [
        *ROOT_PROJECT["dependencies"],
        *(r for rs in ROOT_PROJECT["optional-dependencies"].values() for r in rs),
    ]:
        dist, _, version = req.partition("==")
        pinned[_dist_name(dist)] = version
    op = "==" if name == "spotrun-operator" else ">="
    for req in _requirements(name):
        dist = _dist_name(req)
        if dist in release_dists.DISTRIBUTIONS:
            assert req == f"{dist}=={release_dists.VERSION_PLACEHOLDER}", req
        else:
            assert dist in pinned, f"{name} requires {dist}, which pyproject.toml does not pin"
            assert req == f"{dist}{op}{pinned[dist]}", f"{name}: {req}, the pin is {pinned[dist]}"


@pytest.mark.parametrize("name", release_dists.DISTRIBUTIONS)
def test_each_distribution_requires_the_third_party_packages_its_code_imports(name: str) -> None:
    """Every third-party module imported anywhere in its packages (lazily too) comes from a
    requirement, of an extra or of the spotrun distributions it requires (or from one of
    their own requirements: urllib3 with kubernetes)."""

    def requirements(dist: str) -> set[str]:
        own = {_dist_name(r) for r in _requirements(dist)}
        return own.union(*(requirements(d) for d in own if d in release_dists.DISTRIBUTIONS))

    provided = requirements(name)
    for third_party in list(provided - set(release_dists.DISTRIBUTIONS)):
        provided |= {
            _dist_name(r)
            for r in importlib.metadata.requires(third_party) or ()
            if "extra" not in r
        }
    owners = importlib.metadata.packages_distributions()
    dist = DISTS[name]
    for source in dist.sources:
        for module in sorted(images.imported_modules(ROOT / source)):
            if module in sys.stdlib_module_names or module.startswith("spotrun_"):
                continue
            assert {_dist_name(d) for d in owners.get(module, [module])} & provided, (
                f"{name}: {source} imports {module}, which no requirement provides"
            )


@pytest.mark.parametrize("name", list(release_dists.DISTRIBUTIONS))
def test_each_distribution_ships_the_project_packages_its_code_imports(name: str) -> None:
    problems = [p for p in release_dists.closure_problems(ROOT) if p.startswith(f"{name}:")]
    assert problems == []


# --------------------------------------------------------------------------- the builds
@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every distribution at VERSION, built as a release builds it: staged, then ``uv
    build`` (an sdist, then the wheel from it) into one folder."""
    out = tmp_path_factory.mktemp("release")
    tools = release_plan.default_tools()
    for project in release_dists.stage_distributions(VERSION, out):
        step = release_plan.uv_build(tools, project, out / "dist", isolated=False)
        proc = subprocess.run(step.argv, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    yield out / "dist"


def _wheel(dist: Path, name: str) -> Path:
    return dist / f"{name.replace('-', '_')}-{PYVERSION}-py3-none-any.whl"


def _top_level(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return {
            n.split("/")[0] for n in zf.namelist() if not n.split("/")[0].endswith(".dist-info")
        }


def _metadata(wheel: Path, member: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        info = next(n for n in zf.namelist() if n.endswith(f".dist-info/{member}"))
        return zf.read(info).decode()


def _install(wheels: list[Path], target: Path) -> None:
    argv = [
        release_plan.default_tools().uv,
        "pip",
        "install",
        "--python",
        sys.executable,
        "--offline",
        "--no-deps",
        "--quiet",
        "--target",
        str(target),
        *map(str, wheels),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _python_alone(target: Path, code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in this venv's Python with site off: the installed target first, then the
    venv's third-party packages, and none of the repository's (its editable finder is a
    .pth file, which only ``site`` reads)."""
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{sysconfig.get_paths()['purelib']}"}
    return subprocess.run(
        [sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True
    )


def test_every_distribution_has_an_sdist_and_a_wheel(built: Path) -> None:
    names = sorted(p.name for p in built.iterdir() if not p.name.startswith("."))
    expected = [
        f"{d.replace('-', '_')}-{PYVERSION}{ext}"
        for d in release_dists.DISTRIBUTIONS
        for ext in ("-py3-none-any.whl", ".tar.gz")
    ]
    assert names == sorted(expected)


def test_each_wheel_holds_its_own_packages_only_and_is_typed(built: Path) -> None:
    for name, dist in DISTS.items():
        wheel = _wheel(built, name)
        assert _top_level(wheel) == set(dist.packages), name
        with zipfile.ZipFile(wheel) as zf:
            for package in dist.packages:
                assert f"{package}/py.typed" in zf.namelist()


def test_trainer_and_api_wheels_install_and_import_alone(built: Path, tmp_path: Path) -> None:
    trainer, api = _wheel(built, "spotrun-trainer"), _wheel(built, "spotrun-api")
    assert _top_level(trainer) == {"spotrun_trainer"} and _top_level(api) == {"spotrun_api"}
    _install([api, trainer], tmp_path)
    code = f"""
import importlib.util, pathlib
import spotrun_api, spotrun_api.spec, spotrun_trainer
from spotrun_trainer.integrations.loop import SpotrunLoop
from spotrun_trainer.checkpoint import CheckpointManager
for module in (spotrun_api, spotrun_trainer):
    assert pathlib.Path(module.__file__).is_relative_to({str(tmp_path)!r}), module.__file__
for absent in ("spotrun_operator", "spotrun_cli", "spotrun_dev", "spotrun_lm"):
    assert importlib.util.find_spec(absent) is None, absent
print("ok")
"""
    proc = _python_alone(tmp_path, code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_trainer_requires_the_api_of_its_own_version_and_torch(built: Path) -> None:
    meta = Parser().parsestr(_metadata(_wheel(built, "spotrun-trainer"), "METADATA"))
    assert meta["Version"] == PYVERSION
    requires = meta.get_all("Requires-Dist") or []
    assert f"spotrun-api=={PYVERSION}" in requires
    assert any(r.startswith("torch>=") for r in requires)
    assert set(meta.get_all("Provides-Extra") or []) == {"hf", "sentence-transformers"}


def test_cli_wheel_declares_the_kubectl_plugin_and_the_torchx_scheduler(built: Path) -> None:
    wheel = _wheel(built, "spotrun-cli")
    assert _top_level(wheel) == {"spotrun_cli"}
    eps = configparser.ConfigParser()
    eps.optionxform = str  # type: ignore[assignment,method-assign]
    eps.read_string(_metadata(wheel, "entry_points.txt"))
    assert dict(eps["console_scripts"]) == {"kubectl-spotrun": "spotrun_cli.kubectl_plugin:main"}
    # TorchX's own default scheduler stays registered first (see the root pyproject.toml).
    assert list(eps["torchx.schedulers"].items()) == [
        ("local_docker", "torchx.schedulers.docker_scheduler:create_scheduler"),
        ("spotrun", "spotrun_cli.torchx_scheduler:create_scheduler"),
    ]
    requires = Parser().parsestr(_metadata(wheel, "METADATA")).get_all("Requires-Dist") or []
    assert f"spotrun-api=={PYVERSION}" in requires
    assert not [r for r in requires if _dist_name(r) in ("torch", "kopf", "spotrun-trainer")]


def test_cli_wheel_runs_without_the_trainer(built: Path, tmp_path: Path) -> None:
    _install([_wheel(built, "spotrun-api"), _wheel(built, "spotrun-cli")], tmp_path)
    proc = _python_alone(
        tmp_path,
        "import spotrun_cli.kubectl_plugin, spotrun_cli.torchx_scheduler; print('ok')",
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_operator_wheel_holds_the_operator_and_its_script(built: Path) -> None:
    wheel = _wheel(built, "spotrun-operator")
    assert _top_level(wheel) == {"spotrun_operator"}
    eps = configparser.ConfigParser()
    eps.read_string(_metadata(wheel, "entry_points.txt"))
    assert dict(eps["console_scripts"]) == {"spotrun-operator": "spotrun_operator.main:main"}
    requires = Parser().parsestr(_metadata(wheel, "METADATA")).get_all("Requires-Dist") or []
    assert f"spotrun-api=={PYVERSION}" in requires
