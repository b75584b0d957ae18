"""A spotrun release: the images and the chart pushed to an OCI registry, the Python
distributions built (docs/release.md).

``make release REGISTRY=<host[:port][/namespace]> VERSION=<semver>`` runs ``python -m
spotrun_dev.release run``: it validates both arguments, checks that VERSION is the
repository's version and that every distribution ships the project packages its code
imports, computes the plan (:func:`plan`: a list of commands, pure) and runs it in order:

1. the chart's generated files are current (``hack/sync-chart-crds.sh --check``);
2. the Python distributions (``packaging/<dist>/``) are staged and built with ``uv build``
   into ``build/release/dist/``;
3. the chart is staged with its default operator image in REGISTRY, linted and packaged
   (``helm package --version V --app-version V``);
4. the operator and trainer images are built by :mod:`spotrun_dev.images` and tagged
   ``<REGISTRY>/spotrun/<image>:<VERSION>`` (no example has an image of its own yet);
5. with ``REGISTRY_USERNAME`` set, ``buildah login`` and ``helm registry login`` (the
   password is read from ``REGISTRY_PASSWORD`` on stdin), then ``buildah push`` of both
   images and ``helm push`` of the chart to ``oci://<REGISTRY>/spotrun/charts``.

Nothing is pushed before everything is built. ``--dry-run`` prints the plan and runs nothing.

The one version source is ``[project] version`` of pyproject.toml (Python's spelling,
``0.2.0rc1``); VERSION is its semver spelling (``0.2.0-rc.1``), which the chart's
``version``/``appVersion`` and the image tags use. The copies in Chart.yaml and the
packages' ``__version__`` are checked by :func:`version_problems` (a unit test, and every
release) and rewritten together by ``python -m spotrun_dev.release set-version X.Y.Z``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from spotrun_dev import images, paths

# Images a release pushes, as <REGISTRY>/spotrun/<name>:<VERSION>.
RELEASE_IMAGES = ("operator", "trainer")
NAMESPACE = "spotrun"
CHART_DIR = Path("charts/spotrun")
PACKAGING_DIR = Path("packaging")
# Python distributions, in build order (each after the spotrun distributions it requires).
DISTRIBUTIONS = ("spotrun-api", "spotrun-trainer", "spotrun-cli", "spotrun-operator")
VERSION_PLACEHOLDER = "@VERSION@"
DEFAULT_OUT = Path("build/release")
# Registry credentials for the login steps; the password only ever goes to stdin.
USERNAME_ENV = "REGISTRY_USERNAME"
PASSWORD_ENV = "REGISTRY_PASSWORD"


class ReleaseError(ValueError):
    """A release argument or the repository's state is wrong; the message says which."""


# ---------------------------------------------------------------------------------------
# Arguments

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


# ---------------------------------------------------------------------------------------
# The version: one source, checked copies


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


# ---------------------------------------------------------------------------------------
# Python distributions


@dataclass(frozen=True)
class Distribution:
    name: str
    folder: Path  # packaging/<name>, relative to the root
    sources: tuple[str, ...]  # source folders staged into src/, e.g. "api/spotrun_api"
    requires: tuple[str, ...]  # the spotrun distributions it depends on

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(Path(s).name for s in self.sources)


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def distributions(root: Path = paths.REPO_ROOT) -> dict[str, Distribution]:
    """The distributions of packaging/, read from their pyproject.toml templates."""
    out = {}
    for name in DISTRIBUTIONS:
        folder = PACKAGING_DIR / name
        with (root / folder / "pyproject.toml").open("rb") as f:
            data = tomllib.load(f)
        deps = [_requirement_name(d) for d in data["project"]["dependencies"]]
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
    template = (root / dist.folder / "pyproject.toml").read_text()
    if VERSION_PLACEHOLDER not in template:
        raise ReleaseError(f"{dist.folder}/pyproject.toml has no {VERSION_PLACEHOLDER}")
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


# ---------------------------------------------------------------------------------------
# Chart


def stage_chart(registry: str, out: Path, root: Path = paths.REPO_ROOT) -> Path:
    """``out/spotrun/``: the chart with ``image.repository`` defaulting to the operator image
    in ``registry`` (its tag stays empty: the chart's appVersion, the release's VERSION)."""
    target = out / CHART_DIR.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(root / CHART_DIR, target)
    values = target / "values.yaml"
    repository = f"{registry}/{NAMESPACE}/operator"
    text, count = re.subn(
        r"(?m)^(image:\n(?:(?:  .*)?\n)*?  repository: )\S+$",
        lambda m: m[1] + repository,
        values.read_text(),
        count=1,
    )
    loaded = yaml.safe_load(text) if count else None
    image = loaded.get("image") if isinstance(loaded, dict) else None
    if not isinstance(image, dict) or image.get("repository") != repository:
        raise ReleaseError(f"{CHART_DIR}/values.yaml: no image.repository line to set")
    values.write_text(text)
    return target


# ---------------------------------------------------------------------------------------
# Images


def tag_images(registry: str, version: str) -> dict[str, str]:
    """Builds the release images through :func:`spotrun_dev.images.ensure_images` and tags
    each built image id as ``<registry>/spotrun/<name>:<version>`` in containers-storage."""
    built = images.ensure_images(RELEASE_IMAGES)
    refs = {}
    for name in RELEASE_IMAGES:
        ref = image_ref(registry, name, version)
        subprocess.run(["buildah", "tag", built[name].image_id, ref], check=True)
        print(
            f"{name}: {built[name].ref} (id {built[name].image_id[:12]}) tagged {ref}", flush=True
        )
        refs[name] = ref
    return refs


# ---------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Tools:
    python: str
    uv: str
    helm: str
    buildah: str = "buildah"
    bash: str = "bash"


def default_tools() -> Tools:
    """This venv's python and uv (``make venv``), helm from ``.cache/bin`` (``make tools``)."""
    return Tools(
        python=sys.executable,
        uv=str(Path(sys.executable).with_name("uv")),
        helm=str(paths.binary("helm")),
    )


@dataclass(frozen=True)
class Step:
    argv: tuple[str, ...]
    stdin_env: str | None = None  # the command reads this environment variable on stdin

    def __str__(self) -> str:
        cmd = shlex.join(self.argv)
        return f'{cmd} <<< "${self.stdin_env}"' if self.stdin_env else cmd


def uv_build(tools: Tools, project: Path, out: Path, *, isolated: bool = True) -> Step:
    """An sdist, then a wheel built from that sdist (so the sdist is proven complete)."""
    argv = [tools.uv, "build", "--python", tools.python, "--out-dir", str(out)]
    if not isolated:
        argv.append("--no-build-isolation")
    return Step((*argv, str(project)))


def plan(
    registry: str,
    version: str,
    *,
    insecure: bool = False,
    username: str | None = None,
    out: Path = DEFAULT_OUT,
    tools: Tools | None = None,
) -> list[Step]:
    """The release's commands, in order, run from the repository root. Pure: it reads no
    file and runs nothing; ``registry`` and ``version`` must be validated already."""
    t = tools or default_tools()
    me = (t.python, "-m", "spotrun_dev.release")
    steps = [Step((t.bash, "hack/sync-chart-crds.sh", "--check"))]
    # Python distributions.
    steps.append(Step((*me, "stage-dists", "--version", version, "--out", str(out))))
    steps += [uv_build(t, out / "src" / name, out / "dist") for name in DISTRIBUTIONS]
    # Chart.
    chart = out / "chart" / CHART_DIR.name
    steps.append(Step((*me, "stage-chart", "--registry", registry, "--out", str(out / "chart"))))
    steps.append(Step((t.helm, "lint", "--strict", str(chart))))
    steps.append(
        Step(
            (
                t.helm,
                "package",
                str(chart),
                "--version",
                version,
                "--app-version",
                version,
                "--destination",
                str(out),
            )
        )
    )
    # Images.
    steps.append(Step((*me, "tag-images", "--registry", registry, "--version", version)))
    # Publish.
    host = registry_host(registry)
    tls = ("--tls-verify=false",) if insecure else ()
    plain = ("--plain-http",) if insecure else ()
    if username:
        login = ("login", "--username", username, "--password-stdin")
        steps.append(Step((t.buildah, *login, *tls, host), PASSWORD_ENV))
        steps.append(Step((t.helm, "registry", *login, *plain, host), PASSWORD_ENV))
    for name in RELEASE_IMAGES:
        ref = image_ref(registry, name, version)
        digest = out / f"{name}.digest"
        steps.append(
            Step((t.buildah, "push", *tls, "--digestfile", str(digest), ref, f"docker://{ref}"))
        )
    package = out / f"{CHART_DIR.name}-{version}.tgz"
    steps.append(Step((t.helm, "push", *plain, str(package), chart_repository(registry))))
    return steps


def summary(registry: str, version: str, out: Path) -> list[str]:
    """What a release published, for the log (digests where the push wrote them)."""
    lines = []
    for name in RELEASE_IMAGES:
        digest = out / f"{name}.digest"
        pinned = f"@{digest.read_text().strip()}" if digest.is_file() else ""
        lines.append(f"image   {image_ref(registry, name, version)}{pinned}")
    lines.append(f"chart   {chart_repository(registry)}/{CHART_DIR.name} --version {version}")
    dists = sorted(p.name for p in (out / "dist").glob("*") if p.suffix in (".whl", ".gz"))
    lines += [f"python  {out / 'dist' / d}" for d in dists]
    return lines


# ---------------------------------------------------------------------------------------
# Command line


def _check_repository(version: str | None, root: Path) -> str:
    """VERSION (default: the repository's), after checking the repository agrees with it."""
    source = source_version(root)
    version = validate_version(version) if version else source
    problems = version_problems(root) + closure_problems(root)
    if version != source:
        problems.insert(
            0,
            f"VERSION={version} is not this repository's version {source} "
            f"(pyproject.toml [project] version); `python -m spotrun_dev.release "
            f"set-version {version}` changes it and every copy",
        )
    if problems:
        raise ReleaseError("the repository is not ready to release:\n  " + "\n  ".join(problems))
    return version


def _missing_tools(tools: Tools, steps: Iterable[Step]) -> list[str]:
    used = {s.argv[0] for s in steps}
    hints = {tools.helm: "make tools", tools.uv: "make venv", tools.buildah: "make node-packages"}
    return [
        f"{tool} not found (run {hints.get(tool, 'make venv')})"
        for tool in sorted(used)
        if not (Path(tool).is_file() if os.sep in tool else shutil.which(tool))
    ]


def run(
    registry: str,
    version: str | None,
    *,
    insecure: bool,
    username: str | None,
    out: Path,
    dry_run: bool,
    root: Path = paths.REPO_ROOT,
) -> int:
    registry = validate_registry(registry)
    version = _check_repository(version, root)
    if username and not dry_run and not os.environ.get(PASSWORD_ENV):
        raise ReleaseError(f"{USERNAME_ENV} is set but {PASSWORD_ENV} is not")
    tools = default_tools()
    steps = plan(registry, version, insecure=insecure, username=username, out=out, tools=tools)
    if dry_run:
        print(f"# release {version} to {registry} (dry run: nothing is run)")
        for step in steps:
            print(step)
        return 0
    missing = _missing_tools(tools, steps)
    if missing:
        raise ReleaseError("missing tools:\n  " + "\n  ".join(missing))
    for number, step in enumerate(steps, 1):
        print(f"==> [{number}/{len(steps)}] {step}", flush=True)
        stdin = os.environ[step.stdin_env] if step.stdin_env else None
        proc = subprocess.run(step.argv, cwd=root, input=stdin, text=True)
        if proc.returncode:
            print(
                f"release: step {number} failed (exit {proc.returncode}): {step}", file=sys.stderr
            )
            return proc.returncode
    print(f"==> released {version}")
    for line in summary(registry, version, root / out):
        print(f"    {line}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m spotrun_dev.release", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="build and publish a release (make release)")
    r.add_argument("--registry", default="", help="REGISTRY: host[:port][/namespace]")
    r.add_argument("--version", default="", help="VERSION: semver; default the repository's")
    r.add_argument(
        "--insecure",
        action="store_true",
        help="the registry speaks plain HTTP (buildah --tls-verify=false, helm --plain-http)",
    )
    r.add_argument(
        "--username",
        default=os.environ.get(USERNAME_ENV, ""),
        help=f"log in as this user, password from ${PASSWORD_ENV} (default ${USERNAME_ENV})",
    )
    r.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (build/release)")
    r.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    s = sub.add_parser("set-version", help="write VERSION into pyproject.toml and every copy")
    s.add_argument("version")
    d = sub.add_parser("stage-dists", help="(a release step) stage packaging/* under OUT/src")
    d.add_argument("--version", required=True)
    d.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("stage-chart", help="(a release step) the chart for REGISTRY under OUT")
    c.add_argument("--registry", required=True)
    c.add_argument("--out", type=Path, required=True)
    i = sub.add_parser("tag-images", help="(a release step) build and tag the images")
    i.add_argument("--registry", required=True)
    i.add_argument("--version", required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return run(
                args.registry,
                args.version or None,
                insecure=args.insecure,
                username=args.username or None,
                out=args.out,
                dry_run=args.dry_run,
            )
        if args.command == "set-version":
            for path in set_version(args.version):
                print(f"wrote {path.relative_to(paths.REPO_ROOT)}")
        elif args.command == "stage-dists":
            for path in stage_distributions(validate_version(args.version), args.out):
                print(f"staged {path}")
        elif args.command == "stage-chart":
            print(f"staged {stage_chart(validate_registry(args.registry), args.out)}")
        elif args.command == "tag-images":
            tag_images(validate_registry(args.registry), validate_version(args.version))
    except ReleaseError as err:
        print(f"release: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
