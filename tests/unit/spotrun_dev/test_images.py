from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from spotrun_dev import images, paths

PYPROJECT = tomllib.loads((paths.REPO_ROOT / "pyproject.toml").read_text())


def test_requirements_are_the_pins_of_one_extra_sorted_and_deduplicated() -> None:
    pyproject = {
        "project": {
            "dependencies": ["pyyaml==6.0.3"],
            "optional-dependencies": {
                "trainer": ["torch==2.15.0", "boto3==1.44.5"],
                "operator": ["kopf==1.45.2", "boto3==1.44.5"],
                "dev": ["pytest==9.2.0"],
            },
        }
    }
    assert images.requirements(pyproject, "operator") == [
        "boto3==1.44.5",
        "kopf==1.45.2",
        "pyyaml==6.0.3",
    ]
    trainer = images.requirements(PYPROJECT, "trainer")
    assert any(pin.startswith("torch==") for pin in trainer)
    assert not any(pin.startswith(("pytest", "kopf")) for pin in trainer)
    assert not any(pin.startswith("torch") for pin in images.requirements(PYPROJECT, "operator"))


@pytest.mark.parametrize("name", ["operator", "trainer"])
def test_dockerfile_requirements_stage_agrees(name: str, tmp_path: Path) -> None:
    # The Dockerfile extracts the pins itself (plain `docker build` has no spotrun_dev);
    # run its script on this pyproject.toml and compare.
    dockerfile = (paths.REPO_ROOT / name / "Dockerfile").read_text().replace("\\\n", "")
    match = re.search(r"^RUN python3 -c '(.*)'$", dockerfile, re.MULTILINE)
    assert match, "requirements stage not found"
    script = match[1].replace('"/requirements.txt"', '"requirements.txt"')
    script = script.replace('"/build-requirements.txt"', '"build-requirements.txt"')
    shutil.copy(paths.REPO_ROOT / "pyproject.toml", tmp_path)
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True)
    got = (tmp_path / "requirements.txt").read_text().splitlines()
    assert got == images.requirements(PYPROJECT, name)
    build = (tmp_path / "build-requirements.txt").read_text().splitlines()
    assert build == sorted(PYPROJECT["build-system"]["requires"])


def test_base_ref_is_keyed_by_the_recipe() -> None:
    ref = images.base_ref()
    assert re.fullmatch(r"localhost/spotrun/base:bookworm-[0-9a-f]{12}", ref)
    assert images.base_ref() == ref
    assert images.base_ref(packages=(*images.BASE_PACKAGES, "curl")) != ref
    assert images.base_ref(packages=tuple(reversed(images.BASE_PACKAGES))) == ref


def test_parse_pip_config_environment_wins() -> None:
    text = (
        "global.cert='/etc/ssl/certs/ca-certificates.crt'\n"
        "global.index-url='https://index.example/simple'\n"
        ":env:.cert='/tmp/other.pem'\n"
        ':env:.default-timeout="180"\n'
        "not a setting\n"
    )
    assert images.parse_pip_config(text) == {
        "cert": "/tmp/other.pem",
        "index-url": "https://index.example/simple",
        "default-timeout": "180",
    }


def test_pip_build_options_mount_files_and_pass_values(tmp_path: Path) -> None:
    cert = tmp_path / "ca.pem"
    cert.write_text("pem")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    config = {
        "index-url": "https://index.example/simple",
        "cert": str(cert),
        "find-links": str(wheels),
        "disable-pip-version-check": "1",
    }
    opts = images.pip_build_options(config)
    assert opts == [
        "--build-arg",
        "PIP_INDEX_URL=https://index.example/simple",
        "-v",
        f"{cert}:{images.CERT_MOUNT}:ro",
        "--build-arg",
        f"PIP_CERT={images.CERT_MOUNT}",
    ]  # an empty wheel folder is left out
    (wheels / "x-1.0-py3-none-any.whl").write_text("")
    assert f"{wheels}:{images.WHEELS_MOUNT}:ro" in images.pip_build_options(config)
    assert images.pip_build_options({"cert": str(tmp_path / "missing.pem")}) == []


def test_archives_are_keyed_by_image_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOTRUN_IMAGE_CACHE", str(tmp_path))
    assert images.cache_dir() == tmp_path
    first = images.archive_path("trainer", "sha256:" + "a" * 64, tmp_path)
    assert first == tmp_path / f"trainer-{'a' * 16}.tar"
    assert images.archive_path("trainer", "b" * 64, tmp_path) != first
    monkeypatch.delenv("SPOTRUN_IMAGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert images.cache_dir() == tmp_path / "xdg" / "spotrun" / "images"


def test_host_pip_config_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pip(*args: object, **kwargs: object) -> str:
        raise subprocess.CalledProcessError(1, "pip")

    monkeypatch.setattr(images, "run_logged", no_pip)
    monkeypatch.setenv("PIP_INDEX_URL", "https://index.example/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    config = images.host_pip_config()
    assert config["index-url"] == "https://index.example/simple"
    assert "no-cache-dir" not in config


@pytest.mark.parametrize("name", sorted(images.IMAGE_ENTRY))
def test_each_image_holds_exactly_the_packages_its_code_imports(name: str) -> None:
    """The operator image: the operator and what it imports (spotrun_api once it exists);
    the trainer image likewise; neither ever the dev tools (spotrun_dev)."""
    dockerfile = (paths.REPO_ROOT / name / "Dockerfile").read_text()
    needed = images.package_closure(images.IMAGE_ENTRY[name], paths.REPO_ROOT)
    assert "spotrun_dev" not in needed
    assert images.copied_packages(dockerfile) == needed, (
        f"{name}/Dockerfile must COPY exactly {sorted(needed)} into its wheel build"
    )
    assert "COPY hack" not in dockerfile and "COPY . " not in dockerfile


def _dist(name: str) -> str:
    return re.split(r"[<>=!~\[; ]", name, maxsplit=1)[0].lower().replace("_", "-")


def _module_file(dotted: str) -> Path | None:
    parts = dotted.split(".")
    for root in images.SOURCE_ROOTS:
        base = paths.REPO_ROOT / root / Path(*parts)
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return path
    return None


def _imports(path: Path) -> set[str]:
    """Dotted names ``path`` imports (``from a.b import c`` gives a.b and a.b.c)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
    return out


def _runtime_imports(entry: str) -> set[str]:
    """Top-level modules imported by every module of ``entry`` and, transitively, by the
    project modules those import (module by module, not whole packages)."""
    root = next(
        paths.REPO_ROOT / r / entry
        for r in images.SOURCE_ROOTS
        if (paths.REPO_ROOT / r / entry).is_dir()
    )
    todo, seen, out = sorted(root.rglob("*.py")), set(), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            out.add(name.split(".")[0])
            found = _module_file(name) if name.startswith("spotrun_") else None
            if found is not None:
                todo.append(found)
    return out


@pytest.mark.parametrize("name", sorted(images.IMAGE_ENTRY))
def test_each_image_installs_the_third_party_packages_its_code_imports(name: str) -> None:
    """Every third-party module the image's code imports comes from a pin of its extra
    (or a requirement of one: botocore with boto3), so the image never lacks one. The code
    is every module of each package the image holds, not only what its entry point reaches:
    the trainer image runs the built-in trainer (spotrun_lm) but holds the whole trainer
    library, its integrations included."""
    pins = {_dist(p) for p in images.requirements(PYPROJECT, name)}
    provided = set(pins)
    for dist in pins:
        provided |= {_dist(r) for r in importlib.metadata.requires(dist) or () if "extra" not in r}
    owners = importlib.metadata.packages_distributions()
    held = images.package_closure(images.IMAGE_ENTRY[name], paths.REPO_ROOT)
    for module in set().union(*(_runtime_imports(package) for package in held)):
        if module in sys.stdlib_module_names or module.startswith("spotrun_"):
            continue
        dists = {_dist(d) for d in owners.get(module, [module])}
        assert dists & provided, f"the {name} image imports {module}, not in its extra"


@pytest.mark.parametrize("name", sorted(images.IMAGE_ENTRY))
def test_each_image_keeps_only_its_own_console_script(name: str) -> None:
    dockerfile = (paths.REPO_ROOT / name / "Dockerfile").read_text().replace("\\\n", "")
    own = f"spotrun-{name}"
    for script in PYPROJECT["project"]["scripts"]:
        removed = f"/opt/spotrun/bin/{script}" in dockerfile
        assert removed == (script != own), script


def _module_level_imports(package: Path) -> set[str]:
    """Top-level names imported at module level (not inside functions) in ``package``."""
    names: set[str] = set()
    for path in sorted(package.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_spotrun_dev_is_the_dev_extra() -> None:
    """``pip install spotrun[dev]`` is enough to import every spotrun-dev module (torch,
    imported inside the one function that reads a real checkpoint, excepted)."""
    project = PYPROJECT["project"]
    pins = {_dist(p) for p in [*project["dependencies"], *project["optional-dependencies"]["dev"]]}
    owners = importlib.metadata.packages_distributions()
    for module in _module_level_imports(paths.REPO_ROOT / "hack" / "spotrun_dev"):
        if module in sys.stdlib_module_names or module.startswith("spotrun_"):
            continue
        dists = {_dist(d) for d in owners.get(module, [module])}
        assert dists & pins, f"spotrun_dev imports {module}, not in the dev extra"


def test_archive_space_check_names_what_and_the_figures(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    images.require_free_space(tmp_path, free // 2, what="the trainer image's archive")
    with pytest.raises(RuntimeError, match=r"the trainer image's archive needs about .* GB free"):
        images.require_free_space(tmp_path, free, what="the trainer image's archive")
