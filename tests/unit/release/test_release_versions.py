"""One version: pyproject.toml's ``[project] version``; the chart's version and appVersion,
the operator's and the CLI's ``__version__`` and the default operator image tag follow it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from spotrun_dev import paths, release, release_version

ROOT = paths.REPO_ROOT


def _copy_version_files(tmp: Path) -> Path:
    for field in release_version.VERSION_FIELDS:
        (tmp / field.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / field.path, tmp / field.path)
    return tmp


def test_the_repository_versions_agree() -> None:
    assert release_version.version_problems(ROOT) == []


def test_the_chart_follows_the_version() -> None:
    chart = yaml.safe_load((ROOT / "charts/spotrun/Chart.yaml").read_text())
    version = release_version.source_version(ROOT)
    assert chart["version"] == chart["appVersion"] == version


def test_the_default_operator_image_tag_is_the_app_version() -> None:
    """image.tag empty in values.yaml and the helper defaulting it to .Chart.AppVersion:
    installing chart X runs operator image X."""
    values = yaml.safe_load((ROOT / "charts/spotrun/values.yaml").read_text())
    assert values["image"]["tag"] == ""
    assert values["image"]["digest"] == ""
    helpers = (ROOT / "charts/spotrun/templates/_helpers.tpl").read_text()
    assert "(default .Chart.AppVersion .Values.image.tag)" in helpers
    deployment = (ROOT / "charts/spotrun/templates/deployment.yaml").read_text()
    assert 'image: {{ include "spotrun.image" . | quote }}' in deployment


def test_a_disagreeing_copy_is_named(tmp_path: Path) -> None:
    root = _copy_version_files(tmp_path)
    chart = root / "charts/spotrun/Chart.yaml"
    chart.write_text(chart.read_text().replace('appVersion: "', 'appVersion: "9', 1))
    problems = release_version.version_problems(root)
    assert len(problems) == 1 and problems[0].startswith("charts/spotrun/Chart.yaml: '9")


def test_set_version_rewrites_the_source_and_every_copy(tmp_path: Path) -> None:
    root = _copy_version_files(tmp_path)
    before = {f.path: (root / f.path).read_text() for f in release_version.VERSION_FIELDS}
    written = release_version.set_version("1.2.0-rc.3", root)
    assert {p.relative_to(root).as_posix() for p in written} == set(before)
    assert release_version.source_version(root) == "1.2.0-rc.3"
    assert release_version.version_problems(root) == []
    chart = yaml.safe_load((root / "charts/spotrun/Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == "1.2.0-rc.3"
    assert '__version__ = "1.2.0rc3"' in (root / "cli/spotrun_cli/__init__.py").read_text()
    for path, text in before.items():  # only the version lines changed
        after = (root / path).read_text().splitlines()
        changed = [a for a, b in zip(after, text.splitlines(), strict=True) if a != b]
        assert changed and all("1.2.0" in line for line in changed), path


@pytest.mark.parametrize(
    ("semver", "python"),
    [
        ("0.1.0", "0.1.0"),
        ("1.2.3-alpha.0", "1.2.3a0"),
        ("1.2.3-beta.2", "1.2.3b2"),
        ("10.20.30-rc.11", "10.20.30rc11"),
    ],
)
def test_python_and_semver_spellings(semver: str, python: str) -> None:
    assert release_version.python_version(semver) == python
    assert release_version.semver_of(python) == semver


@pytest.mark.parametrize(
    ("version", "hint"),
    [
        ("v1.2.3", "drop the leading v"),
        ("1.2", ""),
        ("1.2.3+build.1", "no +build"),
        ("1.2.3-rc1", ""),
        ("1.2.3-dev.1", ""),
        ("01.2.3", ""),
        ("", ""),
        ("latest", ""),
    ],
)
def test_a_bad_version_is_refused_naming_version(version: str, hint: str) -> None:
    with pytest.raises(release_version.ReleaseError, match=r"^VERSION must be") as err:
        release_version.validate_version(version)
    assert hint in str(err.value)


def test_a_source_version_semver_cannot_spell_is_refused() -> None:
    with pytest.raises(release_version.ReleaseError, match=r"pyproject\.toml"):
        release_version.semver_of("0.1.0.dev1")


def test_release_refuses_a_version_other_than_the_repository_s(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["run", "--registry", "registry.example", "--version", "97.0.0", "--dry-run"]
    assert release.main(argv) == 2
    err = capsys.readouterr().err
    assert "VERSION=97.0.0 is not this repository's version" in err
    assert "set-version 97.0.0" in err
