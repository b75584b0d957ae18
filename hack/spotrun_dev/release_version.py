"""Release arguments and the one version source (docs/release.md).

REGISTRY and VERSION are validated here; ``[project] version`` of pyproject.toml is the
version, in Python's spelling, and :data:`VERSION_FIELDS` are its checked copies
(:func:`version_problems`), rewritten together by :func:`set_version`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from spotrun_dev import paths

NAMESPACE = "spotrun"  # <REGISTRY>/spotrun/<image>, <REGISTRY>/spotrun/charts/spotrun


class ReleaseError(ValueError):
    """A release argument or the repository's state is wrong; the message says which."""


# Semver 2.0 restricted to what a Python version (PEP 440), a Helm chart version and an OCI
# tag can all spell the same: X.Y.Z with an optional -alpha.N, -beta.N or -rc.N.
_SEMVER = re.compile(
    r"(?P<release>(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\.(?:0|[1-9]\d*))"
    r"(?:-(?P<pre>alpha|beta|rc)\.(?P<n>0|[1-9]\d*))?"
)
_PEP440 = re.compile(
    r"(?P<release>(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\.(?:0|[1-9]\d*))"
    r"(?:(?P<pre>a|b|rc)(?P<n>0|[1-9]\d*))?"
)
_PRE_TO_PYTHON = {"alpha": "a", "beta": "b", "rc": "rc"}
_PRE_TO_SEMVER = {v: k for k, v in _PRE_TO_PYTHON.items()}

_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# host[:port][/namespace...]; the host is localhost, has a dot, or has a port (else Docker
# reads the first component as a Docker Hub namespace).
_REGISTRY = re.compile(
    rf"(?P<host>localhost(?::\d{{1,5}})?|{_HOST_LABEL}(?:\.{_HOST_LABEL})+(?::\d{{1,5}})?"
    rf"|{_HOST_LABEL}:\d{{1,5}})(?:/{_PATH_PART})*"
)


def validate_version(version: str) -> str:
    """VERSION as given, or a ReleaseError naming VERSION and the accepted forms."""
    if _SEMVER.fullmatch(version):
        return version
    hint = ""
    if version.startswith("v") and _SEMVER.fullmatch(version[1:]):
        hint = f" (drop the leading v: VERSION={version[1:]})"
    elif "+" in version:
        hint = " (no +build metadata: an image tag cannot hold '+')"
    raise ReleaseError(
        f"VERSION must be X.Y.Z or X.Y.Z-alpha.N, -beta.N or -rc.N "
        f"(semver a Python version can spell), got {version!r}{hint}"
    )


def validate_registry(registry: str) -> str:
    """REGISTRY without a trailing slash, or a ReleaseError naming REGISTRY."""
    value = registry.strip().rstrip("/")
    if not value:
        raise ReleaseError(
            "REGISTRY is required: host[:port][/namespace], e.g. ghcr.io/acme or localhost:5000"
        )
    if "://" in value:
        raise ReleaseError(
            f"REGISTRY is host[:port][/namespace] without a scheme, got {registry!r} "
            f"(for a plain-HTTP registry pass INSECURE=1 / --insecure)"
        )
    if not _REGISTRY.fullmatch(value):
        raise ReleaseError(
            f"REGISTRY must be host[:port][/namespace] with a lowercase namespace, e.g. "
            f"ghcr.io/acme or localhost:5000 (the host needs a dot, a port or to be "
            f"localhost), got {registry!r}"
        )
    return value


def python_version(semver: str) -> str:
    """The Python (PEP 440) spelling of a release version: 1.2.3-rc.1 -> 1.2.3rc1."""
    match = _SEMVER.fullmatch(validate_version(semver))
    assert match is not None
    if not match["pre"]:
        return match["release"]
    return f"{match['release']}{_PRE_TO_PYTHON[match['pre']]}{match['n']}"


def semver_of(pyversion: str, where: str = "pyproject.toml [project] version") -> str:
    """The semver spelling of a Python version: 1.2.3rc1 -> 1.2.3-rc.1."""
    match = _PEP440.fullmatch(pyversion)
    if match is None:
        raise ReleaseError(
            f"{where} {pyversion!r} is not X.Y.Z, X.Y.ZaN, X.Y.ZbN or X.Y.ZrcN "
            f"(what a chart version and an image tag can spell too)"
        )
    if not match["pre"]:
        return match["release"]
    return f"{match['release']}-{_PRE_TO_SEMVER[match['pre']]}.{match['n']}"


def registry_host(registry: str) -> str:
    return registry.split("/", 1)[0]


def image_ref(registry: str, name: str, version: str) -> str:
    return f"{registry}/{NAMESPACE}/{name}:{version}"


def chart_repository(registry: str) -> str:
    """Where ``helm push`` puts the chart; users install ``<this>/spotrun``."""
    return f"oci://{registry}/{NAMESPACE}/charts"


@dataclass(frozen=True)
class VersionField:
    path: str  # relative to the repository root
    pattern: str  # a regex whose group 1 is the version
    form: Literal["python", "semver"]


# The first is the source; the others are copies that must agree with it.
VERSION_FIELDS = (
    VersionField("pyproject.toml", r'(?m)^version = "([^"\n]*)"$', "python"),
    VersionField("charts/spotrun/Chart.yaml", r"(?m)^version: ([^\s#]+)$", "semver"),
    VersionField("charts/spotrun/Chart.yaml", r'(?m)^appVersion: "([^"\n]*)"$', "semver"),
    VersionField(
        "operator/spotrun_operator/__init__.py", r'(?m)^__version__ = "([^"\n]*)"$', "python"
    ),
    VersionField("cli/spotrun_cli/__init__.py", r'(?m)^__version__ = "([^"\n]*)"$', "python"),
)


def source_version(root: Path = paths.REPO_ROOT) -> str:
    """The repository's version in semver form, from pyproject.toml's ``[project] version``."""
    with (root / "pyproject.toml").open("rb") as f:
        return semver_of(str(tomllib.load(f)["project"]["version"]))


def version_problems(root: Path = paths.REPO_ROOT) -> list[str]:
    """Every copy of the version that disagrees with pyproject.toml (empty when all agree)."""
    semver = source_version(root)
    expected = {"python": python_version(semver), "semver": semver}
    problems = []
    for field in VERSION_FIELDS:
        found = re.findall(field.pattern, (root / field.path).read_text())
        if len(found) != 1:
            problems.append(f"{field.path}: {len(found)} matches of {field.pattern!r}, not 1")
        elif found[0] != expected[field.form]:
            problems.append(
                f"{field.path}: {found[0]!r}, but pyproject.toml says {expected[field.form]!r}"
            )
    return problems


def set_version(version: str, root: Path = paths.REPO_ROOT) -> list[Path]:
    """Writes ``version`` (semver) into the source and every copy; returns the files changed."""
    semver = validate_version(version)
    value = {"python": python_version(semver), "semver": semver}
    changed: dict[Path, str] = {}
    for field in VERSION_FIELDS:
        path = root / field.path
        text = changed.get(path, path.read_text())

        def put(match: re.Match[str], new: str = value[field.form]) -> str:
            whole = match[0]
            start, end = match.start(1) - match.start(0), match.end(1) - match.start(0)
            return whole[:start] + new + whole[end:]

        text, count = re.subn(field.pattern, put, text)
        if count != 1:
            raise ReleaseError(f"{field.path}: {count} matches of {field.pattern!r}, not 1")
        changed[path] = text
    written = []
    for path, text in changed.items():
        if path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written
